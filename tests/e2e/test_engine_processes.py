"""Several `orchestrator run` processes, and one killed with SIGKILL mid-campaign."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign
from stack import env_for, start_run, stop_runs, until, wait_registered

M = {"manuf": "China Mobile", "model": "M5310"}


def scenario(n: int, size: int = 2000) -> dict[str, Any]:
    return {"server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": size}],
            "tasks": [{"type": "fota", "package": "p", "retry": 2, "interval": 1}]}


async def progress(dsn: str, cid: int) -> Any:
    conn = await connect(dsn)
    try:
        return await conn.fetchrow(
            "SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid)
    finally:
        await conn.close()


async def make_campaign(dsn: str, max_in_flight: int | None = None) -> int:
    conn = await connect(dsn)
    try:
        return await create_campaign(conn, CampaignSpec("p", "fota", "1.3", all_devices=True,
                                                       max_in_flight=max_in_flight),
                                     start=True)
    finally:
        await conn.close()


async def test_two_processes_never_dispatch_a_device_twice(
        settings: Settings, start_sim: Any) -> None:
    n = 300
    sim = await start_sim(scenario(n))
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, n + 1)]
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=3600, install_time=0.01))
    stop = asyncio.Event()
    # replicas split ingest through an MQTT 5 shared subscription
    env = env_for(settings, sim.url, ORCH_MQTT_SHARED_GROUP=f"g{settings.mqtt_topic_prefix}")
    procs = [await start_run(env, f"{settings.mqtt_client_id}-a"),
             await start_run(env, f"{settings.mqtt_client_id}-b")]
    fleet_task = asyncio.create_task(fleet.run(stop))
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        dsn = settings.database_url or ""
        await wait_registered(dsn, n)
        cid = await make_campaign(dsn)

        async def done() -> bool:
            return (await progress(dsn, cid))["status"] == "completed"

        await until(done, 90, "campaign completed")
        row = await progress(dsn, cid)
        assert row["succeeded"] == n
        upgrades = Counter(d for d, c in fleet.commands if c["op"] == "upgrade")
        assert len(upgrades) == n and max(upgrades.values()) == 1, upgrades.most_common(3)
        # every upgrade carries an attempt id of its own (drawn per batch, sliced per device)
        attempts = [c["attempt"] for _, c in fleet.commands if c["op"] == "upgrade"]
        assert len(set(attempts)) == n
        assert all(len(a) == 16 and int(a, 16) >= 0 for a in attempts)
        # both replicas did work
        conn = await connect(dsn)
        try:
            actors = await conn.fetchval(
                "SELECT count(DISTINCT actor) FROM ota.events WHERE campaign_id = $1"
                " AND to_state = 'dispatched'", cid)
        finally:
            await conn.close()
        assert actors == 2
    finally:
        await stop_runs(procs)
        stop.set()
        await fleet_task
    assert [p.returncode for p in procs] == [0, 0]


async def test_sigkill_mid_campaign_then_restart_completes(
        settings: Settings, start_sim: Any) -> None:
    n = 150
    sim = await start_sim(scenario(n, size=50_000))
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False) for i in range(1, n + 1)]
    # downloads take ~0.5 s, so the kill lands with devices in every state
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=3600, bandwidth=100_000, install_time=0.2))
    stop = asyncio.Event()
    env = env_for(settings, sim.url, ORCH_CLAIM_LEASE="2", ORCH_DISPATCH_TIMEOUT="4")
    name = f"{settings.mqtt_client_id}-k"
    proc = await start_run(env, name)
    fleet_task = asyncio.create_task(fleet.run(stop))
    dsn = settings.database_url or ""
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        await wait_registered(dsn, n)
        # 25 in flight at a time: the campaign takes several rounds, so the kill after the
        # first 20 successes lands mid-campaign however fast one round is (without a cap,
        # all 150 ran in one round and could all finish between two polls)
        cid = await make_campaign(dsn, max_in_flight=25)

        async def some_done() -> bool:
            row = await progress(dsn, cid)
            return bool(row["succeeded"] >= 20)

        await until(some_done, 60, "first successes")
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        mid = await progress(dsn, cid)
        assert mid["succeeded"] < n
        proc = await start_run(env, name)

        async def done() -> bool:
            return (await progress(dsn, cid))["status"] == "completed"

        await until(done, 120, "campaign completed after restart")
        row = await progress(dsn, cid)
        assert (row["total"], row["succeeded"]) == (n, n), dict(row)
        assert all(d.fota_version == "1.3" for d in devices)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        stop.set()
        await fleet_task
