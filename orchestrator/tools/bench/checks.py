"""``bench checks``: claim -> check -> gate -> command -> record, beside bare aiohttp POSTs to
the same simulator process in the same run."""

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
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.store import counts, devices
from orchestrator.store.campaigns import create_campaign
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import create_pool
from orchestrator.tools.bench.common import (
    PRODUCT_ID,
    Say,
    checks_scenario,
    raw_checks,
    report,
    scratch_database,
    simulator_process,
)
from orchestrator.workers.scheduler import Scheduler


async def bench_checks(settings: Settings, say: Say, n: int = 20_000) -> dict[str, Any]:
    say(f"checks: claim -> check -> gate -> command -> record for {n} devices, against the "
        "OneNET simulator in its own process")
    async with simulator_process(checks_scenario()) as url:
        auth = {"Authorization": authorization(PRODUCT_ID, DEMO_ACCESS_KEY,
                                               int(time.time()) + 3600)}

        def body(i: int) -> dict[str, Any]:
            return {"dev_id": 10_000_000 + i, "manuf": "China Mobile", "model": "M5310",
                    "type": 1, "version": "1.2", "cdn": True, "signals": 20, "powers": 80}

        cpu = time.process_time()
        raw = await raw_checks(url, n, settings.onenet_concurrency, body, auth)
        raw_cpu = time.process_time() - cpu
        say(f"  raw aiohttp POSTs: {raw:,.0f} checks/s, "
            f"{1000 * raw_cpu / n * 1000:,.0f} ms of CPU per 1,000")
        async with scratch_database(settings) as dsn:
            pool = await create_pool(dsn, max_size=8)
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
                started = time.perf_counter()
                cpu = time.process_time()
                task = asyncio.create_task(scheduler.run(stop, workers=2))
                try:
                    async with asyncio.timeout(600):
                        # watched in memory: polling the database would load it
                        while scheduler.processed < n:
                            await asyncio.sleep(0.01)
                    elapsed = time.perf_counter() - started
                    our_cpu = time.process_time() - cpu
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
        # the raw limit again after our run, on the same (now warm) simulator; the mean of
        # both evens out the machine's drift
        raw_after = await raw_checks(url, n, settings.onenet_concurrency,
                                     lambda i: body(n + i), auth)
        say(f"  raw aiohttp POSTs again: {raw_after:,.0f} checks/s")
        raw = (raw + raw_after) / 2
    rate = n / elapsed
    ours_ms, raw_ms = 1e6 * our_cpu / n, 1e6 * raw_cpu / n
    say(f"  orchestrator: {rate:,.0f} devices/s checked, gated, commanded and recorded, "
        f"{ours_ms:,.0f} ms of CPU per 1,000 devices (our process; the database's not counted)")
    return report("checks", "devices/s", rate, raw,
                  {"devices": n, "concurrency": settings.onenet_concurrency,
                   "batch": settings.scheduler_batch_size,
                   "cpu_ms_per_1000": round(ours_ms, 1), "raw_cpu_ms_per_1000": round(raw_ms, 1),
                   "cpu_efficiency": round(raw_ms / ours_ms, 3)}, say)


