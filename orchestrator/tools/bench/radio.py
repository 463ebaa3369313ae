"""``bench radio``: the same campaign under fixed-interval gating and under radio-aware
gating, side by side in one run: two fleets of the same make-up (devices weak by day and
good at night, charging at night, always weak, flapping, steady), one campaign each, both
started at once on a compressed day after a day of reports. Each reports the gate failures
at checks, the check calls, the devices finished and the time to finish; the line of JSON
holds radio-aware's check calls beside fixed-interval's (the raw figure)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import DONE, CampaignSpec, Selector
from orchestrator.service import Service
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.sim.onenet import Simulator, serve
from orchestrator.sim.scenario import parse_scenario
from orchestrator.store.db import connect
from orchestrator.tools.bench.common import (
    PRODUCT_ID,
    Say,
    private_broker,
    report,
    scratch_database,
)
from orchestrator.usecases import campaigns

DAY = 48.0                       # seconds: a compressed day of 24 two-second hours
MIX = (("steady", 0.4), ("weak_by_day", 0.2), ("charging_at_night", 0.2),
       ("flapping", 0.1), ("always_weak", 0.1))
HAS_GOOD_HOURS = {"steady", "weak_by_day", "charging_at_night", "flapping"}


def fleet_of(first: int, n: int, seed: int) -> list[SimDevice]:
    rng = random.Random(seed)
    kinds = [k for k, share in MIX for _ in range(round(n * share))][:n]
    kinds += ["steady"] * (n - len(kinds))
    rng.shuffle(kinds)
    return [SimDevice(first + i, "China Mobile", "M5310", "1.2", pattern=k, drift=False)
            for i, k in enumerate(kinds)]


async def _measure(conn: Any, cid: int, started: float, devices: list[SimDevice]
                   ) -> dict[str, Any]:
    c = await campaigns.get(conn, cid)
    calls = int(await conn.fetchval(
        "SELECT coalesce(sum(calls), 0) FROM ota.check_outcomes WHERE campaign_id = $1", cid))
    gate_failures = int(await conn.fetchval(
        "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND kind = 'transition'"
        " AND reason LIKE '%gate: low_%'", cid))
    last = await conn.fetchval(
        "SELECT extract(epoch FROM max(at)) FROM ota.events WHERE campaign_id = $1"
        " AND to_state = 'succeeded'", cid)
    succeeded = {r[0] for r in await conn.fetch(
        "SELECT dev_id FROM ota.campaign_devices WHERE campaign_id = $1"
        " AND state = 'succeeded'", cid)}
    good = [d.dev_id for d in devices if d.pattern in HAS_GOOD_HOURS]
    return {"status": c.status, "succeeded": c.counts.succeeded, "failed": c.counts.failed,
            "gate_failures": gate_failures, "check_calls": calls,
            "good_hour_devices_upgraded": sum(1 for d in good if d in succeeded),
            "good_hour_devices": len(good),
            "seconds_to_finish": None if last is None else round(float(last) - started, 1)}


async def bench_radio(settings: Settings, say: Say, n: int = 200) -> dict[str, Any]:
    say(f"radio: 2 x {n} devices with daily patterns on a {DAY:.0f}-second day; the same "
        "campaign under fixed-interval and radio-aware gating, at once")
    async with private_broker(settings, say) as s, scratch_database(s) as dsn:
        fixed, aware = fleet_of(1, n, 7), fleet_of(1 + n, n, 7)
        scenario = {
            "credentials": {"product_id": PRODUCT_ID, "access_key": DEMO_ACCESS_KEY},
            "server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "strategies": [{"type": "fota", "package": "p", "signal": 10, "power": 20,
                            "retry": 3, "interval": int(DAY / 12)}]}
        sim = Simulator(parse_scenario(scenario))
        runner = await serve(sim, "127.0.0.1", 0)
        prefix = f"radiobench{os.getpid()}"
        st = dataclasses.replace(
            s, database_url=dsn, onenet_url=f"http://127.0.0.1:{runner.addresses[0][1]}",
            onenet_product_id=PRODUCT_ID, onenet_access_key=DEMO_ACCESS_KEY,
            onenet_authorization=None, mqtt_topic_prefix=prefix,
            mqtt_client_id=f"bench-{prefix}", api_listen="127.0.0.1:0",
            scheduler_poll_interval=0.1, radio_period=DAY, status_max_age=DAY / 8,
            lost_command_grace=DAY)
        fleet = Fleet(st.mqtt_url, prefix, fixed + aware,
                      FleetConfig(status_interval=DAY / 96, install_time=0.05, day=DAY,
                                  seed=7, bandwidth=0),
                      client_id=f"fleet-{prefix}")
        service = Service(st, api=False)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(service.run()), asyncio.create_task(fleet.run(stop))]
        try:
            await asyncio.wait_for(service.ready.wait(), 30)
            await asyncio.wait_for(fleet.connected.wait(), 30)
            say(f"  a day of reports ({DAY:.0f} s) for the devices' radio profiles, then the "
                "campaigns start at 07:00, when the day's weak signal and low power begin")
            await asyncio.sleep(DAY)
            now = time.time()
            await asyncio.sleep((0.3 * DAY - now % DAY) % DAY)
            conn = await connect(dsn)
            try:
                ids = {}
                for name, devs, gating in (("fixed", fixed, "interval"),
                                           ("aware", aware, "radio")):
                    ids[name] = await campaigns.create(conn, CampaignSpec(
                        name=f"radio bench, {gating}", type="fota", target="1.3",
                        selector=Selector(devices=tuple(d.dev_id for d in devs)),
                        gating=gating), start=True, actor="bench")
                started = time.time()
                deadline = started + 4 * DAY
                while time.time() < deadline:
                    done = [await campaigns.get(conn, c) for c in ids.values()]
                    if all(c.status in DONE for c in done):
                        break
                    await asyncio.sleep(1)
                results = {name: await _measure(conn, cid, started,
                                                fixed if name == "fixed" else aware)
                           for name, cid in ids.items()}
            finally:
                await conn.close()
        finally:
            stop.set()
            service.stop.set()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 30)
            await runner.cleanup()
    for name, r in results.items():
        say(f"  {name:5}: {r['gate_failures']} gate failures at checks, {r['check_calls']} "
            f"check calls, {r['succeeded']} succeeded, {r['failed']} failed, finished in "
            f"{r['seconds_to_finish']} s; devices with a good hour upgraded: "
            f"{r['good_hour_devices_upgraded']}/{r['good_hour_devices']}")
    f, a = results["fixed"], results["aware"]
    fewer_failures = 1 - a["gate_failures"] / max(f["gate_failures"], 1)
    fewer_calls = 1 - a["check_calls"] / max(f["check_calls"], 1)
    return report("radio", "check calls", a["check_calls"], f["check_calls"], {
        "devices": n, "day_seconds": DAY,
        **{f"fixed_{k}": v for k, v in f.items()}, **{f"aware_{k}": v for k, v in a.items()},
        "gate_failures_fewer": round(fewer_failures, 3),
        "check_calls_fewer": round(fewer_calls, 3)}, say)
