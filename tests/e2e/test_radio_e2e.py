"""Radio-aware rollouts end to end: devices weak by day are held to the night their profile
promises, not failed at the gate; one that is never good is reported as such; a per-cell
cap holds across two real replicas (the rows sampled, as the in-flight cap's test does)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases import campaigns
from orchestrator.usecases.campaigns import create as create_campaign
from stack import Stack, env_for, start_run, stop_runs, until, wait_registered

M = {"manuf": "China Mobile", "model": "M5310"}
DAY = 16.0


def scenario(**task: Any) -> dict[str, Any]:
    return {"server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "strategies": [{"type": "fota", "package": "p", "signal": 10, "power": 20,
                            "retry": 3, "interval": 1, **task}]}


async def test_weak_by_day_devices_wait_for_their_night(settings: Settings,
                                                        start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(1, **M, pattern="steady"), SimDevice(2, **M, pattern="weak_by_day"),
               SimDevice(3, **M, pattern="weak_by_day"),
               SimDevice(4, **M, pattern="always_weak")]
    s = dataclasses.replace(settings, radio_period=DAY, status_max_age=DAY / 4)
    async with Stack(s, sim, devices, FleetConfig(status_interval=DAY / 96,
                                                  install_time=0.05, day=DAY)) as stack:
        await stack.wait_devices(4)
        await asyncio.sleep(DAY)                                   # a day of reports
        await asyncio.sleep((0.3 * DAY - time.time() % DAY) % DAY)  # 07:00: weak until 21:00
        cid = await stack.start_campaign(CampaignSpec("radio", "fota", "1.3",
                                                      all_devices=True))

        async def outlook_seen() -> bool:
            async with connection(stack) as conn:
                o = await campaigns.gate_outlook(conn, cid)
            return o["waiting"] == 2 and all(h["best_hour"] is not None
                                             for h in o["by_best_hour"])

        await until(outlook_seen, DAY / 2, "the weak devices wait, their best hour known")
        row = await stack.wait_status(cid, "completed", timeout=2 * DAY)
        assert (row["succeeded"], row["failed"]) == (3, 1), row
        failed = await stack.fetchval("SELECT last_error FROM ota.campaign_devices"
                                      " WHERE campaign_id = $1 AND dev_id = 4", cid)
        assert "will not pass within a day" in failed
        # the weak ones never failed the gate at a check: held, then checked at night
        failures = await stack.fetchval(
            "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND dev_id IN (2, 3)"
            " AND reason LIKE '%gate: low_%'", cid)
        held = await stack.fetchval(
            "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND dev_id IN (2, 3)"
            " AND reason LIKE 'held:%'", cid)
        assert failures == 0 and held >= 2, (failures, held)


class connection:
    def __init__(self, stack: Stack) -> None:
        self.dsn = stack.settings.database_url or ""

    async def __aenter__(self) -> Any:
        self.conn = await connect(self.dsn)
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()


async def test_a_cell_cap_holds_across_two_replicas(settings: Settings,
                                                    start_sim: Any) -> None:
    n, cap = 60, 4
    sim = await start_sim(scenario(signal=0, power=0))
    devices = [SimDevice(i, **M, signal=25, power=90, drift=False,
                         cell=f"cell-{i % 2}", ce_level=0) for i in range(1, n + 1)]
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices,
                  FleetConfig(status_interval=3600, install_time=0.3))
    stop = asyncio.Event()
    env = env_for(settings, sim.url, ORCH_MQTT_SHARED_GROUP=f"g{settings.mqtt_topic_prefix}")
    procs = [await start_run(env, f"{settings.mqtt_client_id}-a"),
             await start_run(env, f"{settings.mqtt_client_id}-b")]
    fleet_task = asyncio.create_task(fleet.run(stop))
    dsn = settings.database_url or ""
    try:
        await asyncio.wait_for(fleet.connected.wait(), 10)
        await wait_registered(dsn, n)
        conn = await connect(dsn)
        try:
            cid = await create_campaign(conn, CampaignSpec(
                "cells", "fota", "1.3", Selector(devices=tuple(range(1, n + 1))),
                max_per_cell=cap), start=True)
            peak, samples = 0, 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                busiest = await conn.fetchval(
                    "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n"
                    " FROM ota.campaign_devices cd JOIN ota.devices d USING (dev_id)"
                    " WHERE cd.state IN ('checking', 'dispatched', 'downloading', 'upgrading')"
                    " GROUP BY d.cell) x")
                peak = max(peak, busiest)
                samples += 1
                if await conn.fetchval("SELECT status = 'completed' FROM ota.campaigns"
                                       " WHERE campaign_id = $1", cid):
                    break
                await asyncio.sleep(0.02)
            done = await conn.fetchval("SELECT succeeded FROM ota.campaign_progress"
                                       " WHERE campaign_id = $1", cid)
        finally:
            await conn.close()
        assert done == n
        assert peak <= cap, f"{peak} in flight in one cell with a cap of {cap}"
        assert peak >= cap - 1, f"the cap was never reached (peak {peak}): not exercised"
        assert samples > 50
    finally:
        await stop_runs(procs)
        stop.set()
        await fleet_task
