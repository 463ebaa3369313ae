"""Issue 12 against a real PostgreSQL: the canary as enrolled by SQL equals the domain's
order, the plan (CLI and API) writes nothing and counts what it says, and the new settings
through the real command and HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import orchestrator_env, run_cli
from orchestrator.api.app import ApiState, build_app
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.domain.rollout import assign_waves
from orchestrator.domain.windows import Schedule
from orchestrator.metrics import Metrics
from orchestrator.store.campaigns import running
from orchestrator.usecases import campaigns
from orchestrator.usecases.campaigns import create as create_campaign

# (manufacturer, model, from-version, devices): one big group and rare ones
GROUPS = [("China Mobile", "M5310", "1.2", 2000), ("China Mobile", "M5311", "1.2", 40),
          ("China Mobile", "M5310", "1.1", 7), ("China Mobile", "M5310-A", "1.0", 2),
          ("Quectel Wireless Solutions Co., Ltd.", "BC95-G", "1.2", 1)]


async def seed_groups(conn: Any) -> list[tuple[int, tuple[str, str, str]]]:
    fleet: list[tuple[int, tuple[str, str, str]]] = []
    dev = 1
    for manuf, model, version, n in GROUPS:
        fleet += [(d, (manuf, model, version)) for d in range(dev, dev + n)]
        dev += n
    await conn.executemany(
        "INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,"
        " status_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, now(), now())",
        [(d, *g, 10 + d % 20, 50 + d % 50) for d, g in fleet])
    return fleet


async def test_the_enrolled_canary_is_the_domains_and_covers_every_group(pool: Any) -> None:
    async with pool.acquire() as conn:
        fleet = await seed_groups(conn)
        cid = await create_campaign(conn, CampaignSpec(
            "canary", "fota", "1.3", all_devices=True, waves=(1, 10, 100), canary=3))
        rows = await conn.fetch("SELECT dev_id, wave, hashint8(dev_id) AS h"
                                " FROM ota.campaign_devices WHERE campaign_id = $1", cid)
    enrolled = {r["dev_id"]: r["wave"] for r in rows}
    hashes = {r["dev_id"]: r["h"] for r in rows}
    assert enrolled == assign_waves(fleet, [1, 10, 100], 3, order=hashes.__getitem__)
    sizes = {(m, mo, v): n for m, mo, v, n in GROUPS}
    first = [d for d, w in enrolled.items() if w == 0]
    assert len(first) == 21                      # 1% of 2,050, the canary ranked first
    for group, size in sizes.items():
        in_first = sum(1 for d, g in fleet if g == group and enrolled[d] == 0)
        assert in_first >= min(3, size), (group, in_first)


async def test_the_plan_counts_gates_canary_and_eta_and_writes_nothing(
        pool: Any, settings: Settings) -> None:
    async with pool.acquire() as conn:
        await seed_groups(conn)
        expected_pass = await conn.fetchval(
            "SELECT count(*) FROM ota.devices WHERE signal > 20 AND power > 60")
    env = orchestrator_env(settings)
    before = dt.datetime.now(dt.UTC).timestamp()
    out = run_cli("campaign", "create", "--name", "plan", "--type", "fota", "--target", "1.3",
                  "--all-devices", "--waves", "1,50,100", "--canary", "2",
                  "--max-per-minute", "600", "--assume-signal", "20", "--assume-power", "60",
                  "--window", "daily 01:00-05:00", "--timezone", "Asia/Shanghai",
                  "--dry-run", "--json", env=env)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["selected"] == 2050 and plan["would_pass_gate"] == expected_pass
    assert plan["canary"] == {"per_group": 2, "groups": 5, "devices": 2 + 2 + 2 + 2 + 1}
    assert plan["pace"]["per_minute"] == 600 and plan["pace"]["check_rate_per_min"] is None
    etas = [dt.datetime.fromisoformat(w["eta"]) for w in plan["waves"]]
    assert etas == sorted(etas) and [w["devices"] for w in plan["waves"]] == [21, 1004, 1025]
    night = Schedule.parse(["daily 01:00-05:00"], "Asia/Shanghai")
    # work happens only at night in Shanghai: every wave ends inside the window
    assert all(night.is_open(e.timestamp() - 1e-3) for e in etas)
    # 2,050 devices at 600/min: 205 s of open time in all, counted from the plan's "now",
    # which lies between before and after (run inside the window, the window is open now)
    after = dt.datetime.now(dt.UTC).timestamp()
    earliest, latest = night.next_open(before), night.next_open(after)
    assert earliest is not None and latest is not None
    assert etas[-1].timestamp() >= earliest + 205
    # unless the window closes within those 205 s (then the rest is tomorrow night)
    if night.is_open(latest + 300):
        assert etas[-1].timestamp() - latest < 3600
    else:
        assert etas[-1].timestamp() - latest < 86_400 + 3600
    text = run_cli("campaign", "create", "--name", "plan", "--type", "fota", "--target",
                   "1.3", "--all-devices", "--canary", "2", "--assume-signal", "20",
                   "--assume-power", "60", "--dry-run", env=env)
    assert f"today: {expected_pass}" in text.stdout and "canary: 2 per group" in text.stdout
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ota.campaigns") == 0
        assert await conn.fetchval("SELECT count(*) FROM ota.campaign_devices") == 0
    out = run_cli("campaign", "create", "--name", "p", "--type", "fota", "--target", "1.3",
                  "--all-devices", "--assume-signal", "3", env=env)
    assert out.returncode == 2 and "only with --dry-run" in out.stderr
    out = run_cli("campaign", "create", "--name", "p", "--type", "fota", "--target", "1.3",
                  "--all-devices", "--window", "Mon 9-5", env=env)
    assert out.returncode == 2 and "window" in out.stderr


async def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    headers = {} if method == "GET" else {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.request(
            method, url, data=None if body is None else json.dumps(body),
            headers=headers) as r:
        return r.status, json.loads(await r.text())


async def test_the_api_plans_creates_and_updates_with_the_new_settings(
        pool: Any, settings: Settings) -> None:
    async with pool.acquire() as conn:
        await seed_groups(conn)
    s = dataclasses.replace(settings, api_listen="127.0.0.1:0", max_in_flight=500)
    runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {})))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/campaigns"
    body = {"name": "api", "type": "fota", "target": "1.3", "all_devices": True,
            "canary": 1, "max_in_flight": 50, "unreachable_after": 600,
            "windows": ["Mon-Fri 01:00-05:00"], "timezone": "Asia/Shanghai"}
    try:
        status, plan = await call("POST", f"{url}?dry_run=true&assume_signal=20"
                                          "&assume_power=60", body)
        assert status == 200 and plan["canary"]["devices"] == 5, plan
        assert plan["pace"]["max_in_flight"] == 50 and plan["would_pass_gate"] > 0
        status, err = await call("POST", f"{url}?dry_run=true&assume_signal=x", body)
        assert status == 400 and "assume_signal" in err["error"]
        status, err = await call("POST", f"{url}?assume_power=1", body)
        assert status == 400 and "only with dry_run" in err["error"]
        for bad, field in ((["Mon 25:00-26:00"], "window"), ("Mon 01:00-02:00", "windows")):
            status, err = await call("POST", url, {**body, "windows": bad})
            assert status == 400 and field in err["error"], err
        status, err = await call("POST", url, {**body, "timezone": "Nowhere/Land"})
        assert status == 400 and "timezone" in err["error"]
        status, c = await call("POST", url, body)
        assert status == 201, c
        assert (c["canary"], c["max_in_flight"], c["unreachable_after"], c["windows"],
                c["timezone"]) == (1, 50, 600, ["Mon-Fri 01:00-05:00"], "Asia/Shanghai")
        assert c["unreachable"] == 0 and c["remaining"] == 2050
        status, c = await call("PATCH", f"{url}/{c['campaign_id']}",
                               {"windows": [], "max_in_flight": None,
                                "unreachable_after": 120})
        assert status == 200, c
        assert (c["windows"], c["max_in_flight"], c["unreachable_after"]) == ([], None, 120)
        status, err = await call("PATCH", f"{url}/{c['campaign_id']}",
                                 {"timezone": "Mars/Base"})
        assert status == 400 and "timezone" in err["error"]
    finally:
        await runner.cleanup()


def test_selector_is_still_required(settings: Settings) -> None:
    spec = CampaignSpec("x", "fota", "1.3", Selector(), canary=2)
    try:
        spec.validate()
    except ValueError as exc:
        assert "all_devices" in str(exc)
    else:
        raise AssertionError("a canary does not make a selector")


async def test_unreadable_stored_windows_mean_no_dispatch_not_a_crash(pool: Any) -> None:
    async with pool.acquire() as conn:
        await seed_groups(conn)
        cid = await create_campaign(conn, CampaignSpec(
            "tz", "fota", "1.3", all_devices=True, windows=("daily 00:00-24:00",),
            timezone="Asia/Shanghai"), start=True)
        await conn.execute("UPDATE ota.campaigns SET timezone = 'Gone/Zone' WHERE "
                           "campaign_id = $1", cid)
        [c] = await running(conn)
    assert c.campaign_id == cid and c.schedule.next_open(0.0) is None


async def test_bad_rollout_flags_and_fields_are_clear_errors(pool: Any,
                                                             settings: Settings) -> None:
    async with pool.acquire() as conn:
        await seed_groups(conn)
    env = orchestrator_env(settings)
    base = ["campaign", "create", "--name", "p", "--type", "fota", "--target", "1.3",
            "--all-devices"]
    for flags, field in ((["--canary", "0"], "canary"), (["--canary", "x"], "--canary"),
                         (["--max-in-flight", "0"], "max_in_flight"),
                         (["--unreachable-after", "0"], "unreachable_after"),
                         (["--unreachable-after", "nan"], "unreachable_after"),
                         (["--window", "Mon 01:00-02:00", "--timezone", "../etc"], "timezone"),
                         (["--window", "Someday 01:00-02:00"], "window"),
                         (["--assume-signal", "x", "--dry-run"], "--assume-signal")):
        out = run_cli(*base, *flags, env=env)
        assert out.returncode == 2 and field in out.stderr, (flags, out.stderr)
        assert "Traceback" not in out.stderr
    out = run_cli("campaign", "update", "1", "--window", "Mon 9-5", env=env)
    assert out.returncode == 2 and "window" in out.stderr
    s = dataclasses.replace(settings, api_listen="127.0.0.1:0")
    runner = web.AppRunner(build_app(ApiState(s, pool, Metrics(), lambda: {})))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/campaigns"
    body = {"name": "api", "type": "fota", "target": "1.3", "all_devices": True}
    try:
        for bad, field in (({"canary": "x"}, "canary"), ({"canary": True}, "canary"),
                           ({"max_in_flight": 0}, "max_in_flight"),
                           ({"unreachable_after": -1}, "unreachable_after"),
                           ({"windows": [1]}, "windows"), ({"timezone": 5}, "timezone"),
                           ({"timezone": "x" * 500}, "timezone")):
            status, err = await call("POST", url, {**body, **bad})
            assert status == 400 and field in err["error"], (bad, err)
        status, c = await call("POST", url, body)
        assert status == 201
        for bad, field in (({"windows": "Mon"}, "windows"), ({"max_in_flight": -5},
                                                             "max_in_flight"),
                           ({"unreachable_after": None}, "unreachable_after")):
            status, err = await call("PATCH", f"{url}/{c['campaign_id']}", bad)
            assert status == 400 and field in err["error"], (bad, err)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("canary", [None, 3])
async def test_the_plan_says_what_the_enrolment_then_does(pool: Any, canary: int | None) -> None:
    """The plan reads the selector once and writes nothing; the enrolment that follows
    enrols what it said, wave by wave, and leaves out what it said, for the same reasons."""
    async with pool.acquire() as conn:
        await seed_groups(conn)
        await conn.execute(     # on the target already; a module OneNET does not know
            "INSERT INTO ota.devices (dev_id, manuf, model, fota_version) VALUES"
            " (9001, 'China Mobile', 'M5310', '1.3'), (9002, 'China Mobile', 'M9999', '1.2')")
        busy = await create_campaign(conn, CampaignSpec(
            "busy", "fota", "1.4", Selector(model="M5311")), start=True)
        spec = CampaignSpec("p", "fota", "1.3", all_devices=True, waves=(1, 10, 50, 100),
                            canary=canary)
        before = await conn.fetchval("SELECT count(*) FROM ota.campaign_devices")
        plan = await campaigns.plan(conn, spec)
        assert await conn.fetchval("SELECT count(*) FROM ota.campaign_devices") == before
        cid = await create_campaign(conn, spec)
        waves = [r[0] for r in await conn.fetch(
            "SELECT count(*) FROM ota.campaign_devices WHERE campaign_id = $1"
            " GROUP BY wave ORDER BY wave", cid)]
        detail = await conn.fetchval("SELECT detail FROM ota.events WHERE campaign_id = $1"
                                     " AND kind = 'campaign_created'", cid)
    assert busy != cid
    assert [w["devices"] for w in plan["waves"]] == waves
    assert plan["selected"] == sum(waves) == 2050 - 40
    assert plan["left_out"] == {"on_target": 1, "in_another_campaign": 40,
                                "unknown_module": 1}
    assert (detail["left_out_busy"], detail["left_out_unknown_module"]) == (40, 1)
