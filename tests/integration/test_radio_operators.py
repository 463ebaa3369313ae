"""What an operator sees of radio-aware gating, from the CLI and the API over a real
database: the plan's outlook per group, the devices waiting for signal or power and the
cells' load, and a per-cell cap that must be a positive count."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

import aiohttp
from aiohttp import web

from conftest import run_cli
from orchestrator.api.app import ApiState, build_app
from orchestrator.api.status_page import render
from orchestrator.config import Settings
from orchestrator.domain import radio
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.payloads import StatusReport
from orchestrator.metrics import Metrics
from orchestrator.store.devices import upsert_status
from orchestrator.usecases.campaigns import create
from orchestrator.usecases.status import page_data


def night_profile() -> list[int]:
    """Weak (signal 5) from 06:00 to 22:00, strong (25) at night: a week of reports."""
    p = radio.empty()
    for _ in range(7):
        for slot in range(radio.SLOTS):
            p = radio.update(p, slot, 5 if 6 <= slot < 22 else 25, 80)
    return p


async def seed(pool: Any) -> None:
    async with pool.acquire() as conn:
        await upsert_status(conn, [StatusReport(i, "China Mobile", "M5310", "1.2", None, 20, 80,
                                                cell=f"cell-{i % 2}", ce_level=i % 3)
                                   for i in range(1, 11)])
        await conn.execute("UPDATE ota.devices SET radio = $1 WHERE dev_id <= 6",
                           night_profile())


async def test_the_plan_shows_each_groups_hours(pool: Any, database: str) -> None:
    await seed(pool)
    env = {**os.environ, "ORCH_DATABASE_URL": database}
    out = await asyncio.to_thread(
        run_cli, "campaign", "create", "--name", "night", "--type", "fota", "--target", "1.3",
        "--all", "--dry-run", "--assume-signal", "10", "--assume-power", "20", env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "gate outlook" in x)
    bars = line.split("|")[1]
    assert len(bars) == 24
    # six devices of ten weak from 06:00 to 22:00: the bars drop by day, full at night
    assert bars[0] == bars[23] == "█" and bars[12] != "█", line
    assert "4 without history" in line and "0 never likely" in line
    plan = json.loads((await asyncio.to_thread(
        run_cli, "campaign", "create", "--name", "night", "--type", "fota", "--target", "1.3",
        "--all", "--dry-run", "--assume-signal", "10", "--assume-power", "20", "--json",
        env=env)).stdout)
    o = plan["groups"][0]["gate_outlook"]
    assert o["sampled"] == 10 and len(o["likely_by_hour"]) == 24
    assert o["likely_by_hour"][12] < 0.5 < o["likely_by_hour"][0]


async def test_show_and_the_api_say_who_waits_for_radio(pool: Any, database: str,
                                                        settings: Settings) -> None:
    await seed(pool)
    async with pool.acquire() as conn:
        cid = await create(conn, CampaignSpec("night", "fota", "1.3", all_devices=True,
                                              max_per_cell=3), start=True)
        await conn.execute(
            "UPDATE ota.campaign_devices SET state = 'gated', best_slot = 23,"
            " pass_probability = 0.97, next_attempt_at = now() + interval '9 hours',"
            " last_error = 'held: low_signal (signal 5, the task needs > 10) would not pass;"
            " checked at 23:00 (97% likely)' WHERE campaign_id = $1 AND dev_id <= 6", cid)
        # in flight, in the cell they were claimed in
        await conn.execute("UPDATE ota.campaign_devices cd SET state = 'downloading',"
                           " cell = d.cell, ce_level = d.ce_level FROM ota.devices d"
                           " WHERE d.dev_id = cd.dev_id AND campaign_id = $1"
                           " AND cd.dev_id IN (7, 9)", cid)
    env = {**os.environ, "ORCH_DATABASE_URL": database}
    shown = await asyncio.to_thread(run_cli, "campaign", "show", str(cid), env=env)
    assert "waiting for radio    6 device(s) for signal or power; best hours 23:00 (6)" \
        in shown.stdout, shown.stdout
    assert "max_per_cell         3" in shown.stdout
    assert "busiest cells        cell-1 2 (CE 1) in flight" in shown.stdout
    async with pool.acquire() as conn:
        page = render(await page_data(conn))
    assert "waiting for radio: 6 device(s) for signal or power; best hours 23:00 (6)" in page

    s = dataclasses.replace(settings, api_token="t")
    runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {"mqtt": True})))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/campaigns/{cid}/gate-outlook") as r:
                assert r.status == 401
            auth = {"Authorization": "Bearer t"}
            async with http.get(f"{url}/campaigns/{cid}/gate-outlook", headers=auth) as r:
                assert r.status == 200
                o = await r.json()
            async with http.get(f"{url}/campaigns/999/gate-outlook", headers=auth) as r:
                assert r.status == 404
            async with http.patch(f"{url}/campaigns/{cid}", headers=auth,
                                  json={"max_per_cell": 0}) as r:
                assert r.status == 400 and "max_per_cell" in (await r.text())
            async with http.patch(f"{url}/campaigns/{cid}", headers=auth,
                                  json={"max_per_cell": 2, "gating": "interval"}) as r:
                assert r.status == 200, await r.text()
                changed = await r.json()
    finally:
        await runner.cleanup()
    assert o["waiting"] == 6
    assert o["by_best_hour"] == [{"best_hour": 23, "devices": 6, "pass_probability": 0.97,
                                  "next_check": o["by_best_hour"][0]["next_check"]}]
    # devices 7 and 9 are odd: both in cell-1, downloading
    assert o["cells"] == [{"cell": "cell-1", "ce_level": 1, "in_flight": 2}], o["cells"]
    assert (changed["max_per_cell"], changed["gating"]) == (2, "interval")


def test_a_per_cell_cap_must_be_a_positive_count(database: str) -> None:
    env = {**os.environ, "ORCH_DATABASE_URL": database}
    out = run_cli("campaign", "create", "--name", "x", "--type", "fota", "--target", "1.3",
                  "--all", "--max-per-cell", "0", env=env)
    assert out.returncode == 2 and "max_per_cell" in out.stderr.replace("-", "_"), out.stderr
    out = run_cli("campaign", "create", "--name", "x", "--type", "fota", "--target", "1.3",
                  "--all", "--gating", "sometimes", env=env)
    assert out.returncode == 2 and "--gating" in out.stderr
