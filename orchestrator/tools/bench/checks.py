"""``bench checks``: claim -> check -> gate -> command -> record, beside bare POSTs to the
same simulator process in the same run (aiohttp, ours, and the fastest client measured here),
with the CPU of every process on the path, so the machine's own ceiling is in the report."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.onenet import authorization
from orchestrator.metrics import Metrics
from orchestrator.mqtt.publisher import Publisher
from orchestrator.onenet.client import OneNetClient
from orchestrator.sim import DEMO_ACCESS_KEY, fast
from orchestrator.store import counts, devices
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import create_pool
from orchestrator.tools.bench.common import (
    DB_PIDS,
    PRODUCT_ID,
    Say,
    checks_scenario,
    cpu_seconds,
    cpu_spent,
    raw_checks_all,
    report,
    scratch_database,
    simulator_process,
)
from orchestrator.usecases.campaigns import create as create_campaign
from orchestrator.workers.scheduler import Scheduler


async def bench_checks(settings: Settings, say: Say, n: int = 20_000) -> dict[str, Any]:
    # the endpoint should not be the limit: the simulator's check on granian costs about
    # half the CPU of its aiohttp server, and shares the two cores with us
    server = "granian" if fast.available() else "aiohttp"
    say(f"checks: claim -> check -> gate -> command -> record for {n} devices, against the "
        f"OneNET simulator in its own process ({server} server)")
    async with simulator_process(checks_scenario(), server) as (url, sim_pid):
        auth = {"Authorization": authorization(PRODUCT_ID, DEMO_ACCESS_KEY,
                                               int(time.time()) + 3600)}

        def body(i: int) -> dict[str, Any]:
            return {"dev_id": 10_000_000 + i, "manuf": "China Mobile", "model": "M5310",
                    "type": 1, "version": "1.2", "cdn": True, "signals": 20, "powers": 80}

        before = await raw_checks_all(url, n, settings.onenet_concurrency, body, auth, say)
        async with scratch_database(settings) as dsn:
            # every connection opened now, so the database's CPU counts all their backends
            pool = await create_pool(dsn, min_size=8, max_size=8)
            async with pool.acquire() as conn:
                await devices.seed(conn, n)
                cid = await create_campaign(conn, CampaignSpec("bench", "fota", "1.3",
                                                       all_devices=True),
                                            start=True)
            s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                    onenet_product_id=PRODUCT_ID, onenet_access_key=DEMO_ACCESS_KEY,
                                    onenet_authorization=None,
                                    mqtt_topic_prefix=f"chkbench{os.getpid()}")
            publisher = Publisher(s, f"bench-cmd-{os.getpid()}")
            async with OneNetClient(s) as client:
                scheduler = Scheduler(s, PgDatabase(pool), client, publisher, Metrics(), "bench")
                stop = asyncio.Event()
                # the other processes on the path: the simulator, and the database's backends
                # for this database plus its writers (when it runs on this machine)
                async with pool.acquire() as conn:
                    db_pids = [r["pid"] for r in await conn.fetch(DB_PIDS)]
                others = {"simulator": ([sim_pid], "orchestrator"),
                          "database": (db_pids, "postgres")}
                cpu_before = {k: cpu_seconds(*v) for k, v in others.items()}
                started = time.perf_counter()
                cpu = time.process_time()
                task = asyncio.create_task(scheduler.run(stop))
                try:
                    async with asyncio.timeout(600):
                        # watched in memory: polling the database would load it
                        while scheduler.processed < n:
                            await asyncio.sleep(0.01)
                    elapsed = time.perf_counter() - started
                    our_cpu = time.process_time() - cpu
                    spent = {k: cpu_spent(cpu_before[k], cpu_seconds(*v))
                             for k, v in others.items()}
                finally:
                    stop.set()
                    await task
                    await publisher.close()
            async with pool.acquire() as conn:
                await counts.fold(conn)
                by_wave = await counts.by_wave(conn, cid)
                dispatched = sum(c.in_progress for c in by_wave.values())
            await pool.close()
            if dispatched != n:
                raise RuntimeError(f"bench checks: {dispatched} of {n} devices dispatched")
        # the raw limits again after our run, on the same (now warm) simulator; the mean of
        # both evens out the machine's drift
        after = await raw_checks_all(url, n, settings.onenet_concurrency,
                                     lambda i: body(n + i), auth, say)
    raws = {r.client: ((r.rate + a.rate) / 2, 1e6 * (r.cpu + a.cpu) / 2 / n)
            for r, a in zip(before, after, strict=True)}
    fastest = max(raws, key=lambda c: raws[c][0])
    cheapest = min(raws, key=lambda c: raws[c][1])
    rate = n / elapsed
    ours_ms = 1e6 * our_cpu / n
    others_ms = {k: 1e6 * v / n for k, v in spent.items()}
    say(f"  orchestrator: {rate:,.0f} devices/s checked, gated, commanded and recorded, "
        f"{ours_ms:,.0f} ms of CPU per 1,000 devices (our process; the database's not counted)")
    cores = os.cpu_count() or 1
    path_ms = ours_ms + sum(others_ms.values())
    bare_ms = raws[cheapest][1] + sum(others_ms.values())
    say(f"  CPU per 1,000 devices on the whole path: ours {ours_ms:,.0f} + simulator "
        f"{others_ms['simulator']:,.0f} + database {others_ms['database']:,.0f} ms; "
        f"{cores} cores give at most {cores * 1e6 / path_ms:,.0f} devices/s with us, "
        f"{cores * 1e6 / bare_ms:,.0f} with bare {cheapest} in our place (the broker's "
        "few ms not counted)")
    table: dict[str, Any] = {
        "devices": n, "concurrency": settings.onenet_concurrency,
        "batch": settings.scheduler_batch_size, "workers": settings.scheduler_workers,
        "simulator_server": server, "raw_client": fastest}
    for c, (r, ms) in raws.items():
        table[f"{c}_rate"] = round(r, 1)
        table[f"{c}_cpu_ms_per_1000"] = round(ms, 1)
    table.update({
        "cpu_ms_per_1000": round(ours_ms, 1),
        "raw_cpu_ms_per_1000": round(raws["aiohttp"][1], 1),
        # the measure: bare aiohttp's CPU per check over ours per device
        "cpu_efficiency": round(raws["aiohttp"][1] / ours_ms, 3),
        "cpu_efficiency_cheapest": round(raws[cheapest][1] / ours_ms, 3),
        "simulator_cpu_ms_per_1000": round(others_ms["simulator"], 1),
        "database_cpu_ms_per_1000": round(others_ms["database"], 1),
        # devices/s if every core ran only this path: with us, and with a bare client in our
        # place (what no orchestrator on this machine could pass)
        "machine_ceiling": round(cores * 1e6 / path_ms),
        "machine_ceiling_bare": round(cores * 1e6 / bare_ms),
    })
    return report("checks", "devices/s", rate, raws[fastest][0], table, say)

