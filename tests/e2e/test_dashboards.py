"""Dashboards without Grafana: every panel's SQL from the provisioned board, run against a
campaign the real stack finished; and the status page in a real headless Chromium."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from grafana import grafana_sql, panels
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.sim.fleet import FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign
from stack import Stack, until

M = {"manuf": "China Mobile", "model": "M5310"}


def scenario() -> dict[str, Any]:
    return {"server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "tasks": [{"type": "fota", "package": "p", "devices": list(range(1, 29)),
                       "signal": 10, "power": 20, "retry": 1, "interval": 1}],
            "script": {"8": [8]}}


def fleet() -> list[SimDevice]:
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, 31)]
    devices[4].signal = 5                     # 5: low signal, the gate holds it, then fails
    devices[5].install_failures = [205, 205]  # 6: install fails twice: failed
    return devices


async def finished_campaign(stack: Stack, devices: list[SimDevice]) -> int:
    await stack.wait_devices(30)
    devices[6].offline_until = time.monotonic() + 10**6      # 7: silent, unreachable
    conn = await connect(stack.settings.database_url or "")
    try:
        await conn.execute("UPDATE ota.devices SET status_at = now() - interval '1 hour'"
                           " WHERE dev_id = 7")
        cid = await create_campaign(conn, CampaignSpec(
            "board", "fota", "1.3", all_devices=True, waves=(50, 100),
            unreachable_after=2.0), start=True)
    finally:
        await conn.close()
    await stack.wait_status(cid, "completed", timeout=90)
    return cid


async def test_every_panel_runs_on_a_finished_campaign(settings: Settings,
                                                       start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = fleet()
    async with Stack(settings, sim, devices) as stack:
        cid = await finished_campaign(stack, devices)
        conn = await connect(stack.settings.database_url or "")
        try:
            progress = dict(await conn.fetchrow(
                "SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid))
            now = dt.datetime.now(dt.UTC)
            results: dict[str, list[dict[str, Any]]] = {}
            for p in panels():
                sql = grafana_sql(p["targets"][0]["rawSql"], cid, now - dt.timedelta(hours=1),
                                  now + dt.timedelta(minutes=1))
                results[p["title"]] = [dict(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    assert (progress["succeeded"], progress["failed"], progress["no_task"],
            progress["unreachable"]) == (24, 3, 2, 1), progress
    total = progress["total"]
    now_row = results["Progress now"][0]
    assert sum(now_row.values()) == total == 30
    pace = results["Rate, remaining and ETA"][0]
    assert pace["status"] == "completed" and pace["remaining"] == 0
    cumulative: dict[str, int] = {}
    for r in results["Finished by state over time"]:
        cumulative[r["metric"]] = int(r["value"])          # last row of each state wins
    for state in ("succeeded", "failed", "no_task", "unreachable"):
        assert cumulative.get(state, 0) == progress[state], (state, cumulative)
    per_minute = results["Succeeded and failed per minute"]
    assert sum(r["succeeded"] for r in per_minute) == progress["succeeded"]
    assert sum(r["failed"] for r in per_minute) == progress["failed"]
    assert set(per_minute[0]) == {"time", "succeeded", "failed"}
    waves = results["Waves"]
    assert [w["wave"] for w in waves] == [1, 2] and all(w["opened"] for w in waves)
    assert sum(w["total"] for w in waves) == total
    flight = results["Devices in flight against the fleet-wide cap"][0]
    assert flight["busy"] == 0 and set(flight) == {"busy", "max_in_flight"}
    checks = results["Check outcomes"]
    assert {c["errno"] for c in checks} >= {0, 8, 11}
    assert all(c["meaning"] for c in checks) and sum(c["calls"] for c in checks) >= 29
    reasons = results["Failures by reason"]
    assert sum(r["devices"] for r in reasons) == progress["failed"]
    assert any(r["errno"] == 8 for r in reasons)
    by_errno = results["Failures by errno"]
    assert sum(r["devices"] for r in by_errno) == progress["failed"]
    assert any(r["metric"].startswith("8: task failed") for r in by_errno)
    gates = results["Gate retries by cause"]
    assert {g["metric"] for g in gates} >= {"signal", "stale"}
    unreachable = results["Unreachable devices"]
    assert [u["dev_id"] for u in unreachable] == [7] and unreachable[0]["reason"]


class Cells(HTMLParser):
    """Text of every element carrying data-field (and data-campaign)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self._open: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-field" in a:
            self._open = (a.get("data-campaign") or "", a["data-field"] or "")
            self.cells[self._open] = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.cells[self._open] += data

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def chromium(*args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (scripts/test installs Debian's chromium)")
    out = subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                          "--disable-dev-shm-usage", "--hide-scrollbars", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


async def test_the_status_page_in_a_real_browser_shows_the_views(
        settings: Settings, start_sim: Any, tmp_path: Path) -> None:
    sim = await start_sim(scenario())
    devices = fleet()
    async with Stack(settings, sim, devices,
                     FleetConfig(status_interval=3600, install_time=0.05)) as stack:
        await stack.wait_devices(30)
        conn = await connect(stack.settings.database_url or "")
        try:
            # slow on purpose: the campaign is running while the browser looks
            cid = await create_campaign(conn, CampaignSpec(
                "page", "fota", "1.3", all_devices=True, waves=(20, 100),
                max_per_minute=30), start=True)
            await until(lambda: stack.fetchval(
                "SELECT succeeded >= 2 FROM ota.campaign_progress WHERE campaign_id = $1",
                cid), 60, "some progress")
            assert stack.service is not None
            url = f"http://127.0.0.1:{stack.service.api_port}/"
            fields = ("total", "pending", "in_progress", "succeeded", "failed", "no_task",
                      "unreachable", "remaining", "status")
            for _ in range(10):         # a page and a view read between two changes
                before = dict(await conn.fetchrow(
                    "SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid))
                dom = await asyncio.to_thread(chromium, "--dump-dom", url)
                after = dict(await conn.fetchrow(
                    "SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid))
                if all(before[f] == after[f] for f in fields):
                    break
            else:
                pytest.fail("the campaign changed during every page load")
        finally:
            await conn.close()
        cells = Cells()
        cells.feed(dom)
        shown = {f: cells.cells[(str(cid), f)] for f in fields}
        assert shown == {f: str(before[f]) for f in fields}, (shown, before)
        assert before["status"] == "running" and 0 < before["succeeded"] < 30
        assert 'http-equiv="refresh"' in dom and "<script" not in dom
        shot = tmp_path / "status-page.png"
        await asyncio.to_thread(chromium, f"--screenshot={shot}", "--window-size=1200,1400",
                                url)
        assert shot.stat().st_size > 10_000
        keep = Path("/tmp/orch-status-page.png")     # the README's screenshot comes from here
        shutil.copy(shot, keep)
