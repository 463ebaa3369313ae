"""Issue 12 end to end — real PostgreSQL, broker, simulator, fleet and service: unreachable
devices, maintenance windows, the fleet-wide cap with two real replicas, the ETA."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

from conftest import orchestrator_env, run_cli
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign
from stack import Stack, env_for, start_run, stop_runs, until, wait_registered

M = {"manuf": "China Mobile", "model": "M5310"}


def scenario() -> dict[str, Any]:
    return {"server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "tasks": [{"type": "fota", "package": "p", "retry": 1, "interval": 1}]}


async def go_silent(stack: Stack, *devs: SimDevice) -> None:
    """These devices stop answering, and what we know of them is an hour old."""
    for d in devs:
        d.offline_until = time.monotonic() + 10**6
    conn = await connect(stack.settings.database_url or "")
    try:
        await conn.execute("UPDATE ota.devices SET status_at = now() - interval '1 hour'"
                           " WHERE dev_id = ANY($1)", [d.dev_id for d in devs])
    finally:
        await conn.close()


async def test_unreachable_devices_are_not_failures_and_retry_takes_them(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, 7)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(6)
        await go_silent(stack, devices[4], devices[5])
        # an abort rule at 10%: two silent devices of six would trip it if they counted
        cid = await stack.start_campaign(CampaignSpec(
            "silent", "fota", "1.3", all_devices=True, abort_failure_pct=10,
            waves=(50, 100), wave_success_pct=90, unreachable_after=2.0))
        row = await stack.wait_status(cid, "completed", "paused", timeout=60)
        assert row["status"] == "completed", dict(row)
        assert (row["succeeded"], row["unreachable"], row["failed"]) == (4, 2, 0)
        reason = await stack.fetchval(
            "SELECT status_reason FROM ota.campaigns WHERE campaign_id = $1", cid)
        assert "2 unreachable" in reason
        listed = json.loads(run_cli("campaign", "show", str(cid), "--state", "unreachable",
                                    "--json", env=orchestrator_env(stack.settings)).stdout)
        assert sorted(d["dev_id"] for d in listed["devices"]) == [5, 6]
        for d in (5, 6):
            why = await stack.fetchval(
                "SELECT reason FROM ota.events WHERE campaign_id = $1 AND dev_id = $2"
                " AND to_state = 'unreachable'", cid, d)
            assert "no answer to a report request" in why
        # they come back; the campaign is over, so the operator retries them
        for d in devices[4:]:
            d.offline_until = 0.0
            await stack.fleet.report_status(d)
        out = run_cli("campaign", "retry", str(cid), "--state", "unreachable",
                      env=orchestrator_env(stack.settings))
        assert out.returncode == 0 and "2 device(s) retried" in out.stdout, out.stderr
        row = await stack.wait_status(cid, "completed", timeout=60)
        assert (row["succeeded"], row["unreachable"]) == (6, 0)


async def test_a_silent_device_is_put_back_in_line_by_its_next_report(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, 4)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(3)
        await go_silent(stack, devices[2])
        cid = await stack.start_campaign(CampaignSpec(
                "back", "fota", "1.3", all_devices=True, continuous=True,
                unreachable_after=2.0))

        async def unreachable() -> bool:
            return bool(await stack.fetchval(
                "SELECT state = 'unreachable' FROM ota.campaign_devices"
                " WHERE campaign_id = $1 AND dev_id = 3", cid))

        await until(unreachable, 30, "device 3 unreachable")
        devices[2].offline_until = 0.0
        await stack.fleet.report_status(devices[2])

        async def all_done() -> bool:
            return bool(await stack.fetchval(
                "SELECT succeeded = 3 FROM ota.campaign_progress WHERE campaign_id = $1", cid))

        await until(all_done, 30, "device 3 upgraded after reporting again")
        reasons = [r["reason"] for r in await stack.fetch(
            "SELECT reason FROM ota.events WHERE campaign_id = $1 AND dev_id = 3"
            " ORDER BY event_id", cid)]
        assert any("back in line" in r for r in reasons), reasons


def closed_window(now: dt.datetime) -> str:
    """A window on a weekday three days from now: closed for the whole test."""
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[(now.weekday() + 3) % 7]
    return f"{day} 00:00-24:00"


async def test_nothing_is_checked_outside_the_windows(settings: Settings,
                                                      start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, 6)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(5)
        env = orchestrator_env(stack.settings)
        shanghai = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
        out = run_cli("campaign", "create", "--name", "night", "--type", "fota", "--target",
                      "1.3", "--model", "M5310", "--window", closed_window(shanghai),
                      "--timezone", "Asia/Shanghai", "--start", env=env)
        assert out.returncode == 0, out.stderr
        cid = int(out.stdout.strip().splitlines()[-1])
        await asyncio.sleep(3)
        assert await stack.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM ota.check_counts WHERE campaign_id = $1",
            cid) == 0
        assert await stack.fetchval(
            "SELECT pending FROM ota.campaign_progress WHERE campaign_id = $1", cid) == 5
        shown = json.loads(run_cli("campaign", "show", str(cid), "--json", env=env).stdout)
        assert shown["windows"] == [closed_window(shanghai)]
        assert shown["timezone"] == "Asia/Shanghai"
        # the operator opens a window now: it runs to the end
        out = run_cli("campaign", "update", str(cid), "--window", "daily 00:00-24:00",
                      env=env)
        assert out.returncode == 0, out.stderr
        row = await stack.wait_status(cid, "completed", timeout=60)
        assert row["succeeded"] == 5


async def test_the_fleet_cap_holds_across_two_replicas_and_two_campaigns(
        settings: Settings, start_sim: Any) -> None:
    n, cap = 160, 12
    sim = await start_sim(scenario())
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, n + 1)]
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=3600, install_time=0.3))
    stop = asyncio.Event()
    env = env_for(settings, sim.url, ORCH_MQTT_SHARED_GROUP=f"g{settings.mqtt_topic_prefix}",
                  ORCH_MAX_IN_FLIGHT=str(cap))
    procs = [await start_run(env, f"{settings.mqtt_client_id}-a"),
             await start_run(env, f"{settings.mqtt_client_id}-b")]
    fleet_task = asyncio.create_task(fleet.run(stop))
    dsn = settings.database_url or ""
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        await wait_registered(dsn, n)
        conn = await connect(dsn)
        try:
            half = n // 2
            ids = [await create_campaign(conn, CampaignSpec(
                f"c{k}", "fota", "1.3", Selector(devices=tuple(range(1 + k * half,
                                                                    1 + (k + 1) * half)))),
                start=True) for k in (0, 1)]
            peak = 0
            samples = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                # the rows themselves, not the kept counts: what is really checking or out
                busy = await conn.fetchval(
                    "SELECT count(*) FROM ota.campaign_devices WHERE state IN"
                    " ('checking', 'dispatched', 'downloading', 'upgrading')")
                peak = max(peak, busy)
                samples += 1
                if await conn.fetchval("SELECT bool_and(status = 'completed')"
                                       " FROM ota.campaigns WHERE campaign_id = ANY($1)", ids):
                    break
                await asyncio.sleep(0.02)
            done = await conn.fetchval(
                "SELECT sum(succeeded) FROM ota.campaign_progress WHERE campaign_id = ANY($1)",
                ids)
            actors = await conn.fetchval(
                "SELECT count(DISTINCT actor) FROM ota.events WHERE to_state = 'dispatched'")
        finally:
            await conn.close()
        assert done == n
        assert peak <= cap, f"{peak} in flight with a cap of {cap}"
        assert peak >= cap - 2, f"the cap was never reached (peak {peak}): not exercised"
        assert actors == 2 and samples > 50
    finally:
        await stop_runs(procs)
        stop.set()
        await fleet_task


async def test_watch_and_the_view_show_rate_and_eta(settings: Settings,
                                                    start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, 101)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(100)
        cid = await stack.start_campaign(CampaignSpec(
                "paced", "fota", "1.3", all_devices=True, max_per_minute=300))

        async def measured() -> bool:
            return bool(await stack.fetchval(
                "SELECT rate_per_min > 0 AND eta_at IS NOT NULL FROM ota.campaign_progress"
                " WHERE campaign_id = $1", cid))

        await until(measured, 30, "a measured rate and an ETA")
        row = (await stack.fetch("SELECT * FROM ota.campaign_progress WHERE campaign_id = $1",
                                 cid))[0]
        # 300/min is the limit: the measured rate is near it, and the ETA is what is left
        assert 100 <= row["rate_per_min"] <= 400, row["rate_per_min"]
        left = row["remaining"] / row["rate_per_min"] * 60
        eta_in = (row["eta_at"] - dt.datetime.now(dt.UTC)).total_seconds()
        assert abs(eta_in - left) < 10, (eta_in, left)
        # the live view shows the same measurement while it runs
        out = run_cli("campaign", "show", str(cid), env=orchestrator_env(stack.settings))
        assert "rate_per_min" in out.stdout and "eta_at" in out.stdout
        try:
            await stack.wait_status(cid, "completed", timeout=60)
        except AssertionError:
            raise AssertionError(await stack.fetch(
                "SELECT state, last_error, count(*) FROM ota.campaign_devices"
                " WHERE campaign_id = $1 GROUP BY 1, 2", cid)) from None
        out = run_cli("campaign", "watch", str(cid), "--every", "1",
                      env=orchestrator_env(stack.settings), timeout=60)
        assert out.returncode == 0 and "rate " in out.stdout and "eta " in out.stdout
        assert "remaining 0" in out.stdout.splitlines()[-1]
