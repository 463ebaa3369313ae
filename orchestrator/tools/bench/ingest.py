"""``bench ingest``: status reports through the broker into PostgreSQL, beside a bare
subscriber on the same broker in the same run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.metrics import Metrics
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import make_client
from orchestrator.mqtt.ingest import Ingest
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import create_pool
from orchestrator.tools.bench.common import Say, report, scratch_database
from orchestrator.tools.bench.load import idle_done, start_publisher
from orchestrator.workers.progress import ProgressSink


async def raw_subscriber(settings: Settings, n: int, devices: int) -> tuple[float, int]:
    """A bare aiomqtt subscriber at QoS 1: messages per second it receives, and how many."""
    prefix = f"rawbench{os.getpid()}"
    count = 0
    first = last = 0.0
    async with make_client(settings.mqtt_url, f"raw-{prefix}", v5=settings.mqtt_v5) as client:
        await client.subscribe(topics.status(prefix), qos=1)

        async def consume() -> None:
            nonlocal count, first, last
            async for _ in client.messages:
                count += 1
                last = time.perf_counter()
                if count == 1:
                    first = last

        reader = asyncio.create_task(consume())
        pub = start_publisher(settings, prefix, n, devices)
        try:
            await idle_done(pub, lambda: count, n)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await asyncio.to_thread(pub.wait)
    return (count - 1) / max(last - first, 1e-9), count


async def bench_ingest(settings: Settings, say: Say, n: int = 60_000,
                       devices: int = 10_000) -> dict[str, Any]:
    say(f"ingest: {n} QoS 1 status messages from {devices} devices, through "
        f"{settings.mqtt_url.host}:{settings.mqtt_url.port}")
    raw, raw_got = await raw_subscriber(settings, n, devices)
    say(f"  raw aiomqtt subscriber: {raw:,.0f} msg/s ({raw_got} received)")
    async with scratch_database(settings) as dsn:
        pool = await create_pool(dsn, max_size=4)
        prefix = f"ingbench{os.getpid()}"
        s = dataclasses.replace(settings, database_url=dsn, mqtt_topic_prefix=prefix,
                                mqtt_client_id=f"bench-{prefix}", mqtt_shared_group=None)
        metrics = Metrics()
        ingest = Ingest(s, ProgressSink(PgDatabase(pool)), metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(ingest.run(stop))
        await asyncio.wait_for(ingest.connected.wait(), 30)
        pub = start_publisher(s, prefix, n, devices)
        first = last = 0.0
        seen = 0

        def applied() -> int:
            nonlocal first, last, seen
            if ingest.applied != seen:
                last = time.perf_counter()
                if not seen:
                    first = last
                seen = ingest.applied
            return seen

        try:
            await idle_done(pub, applied, n)
        finally:
            stop.set()
            await task
            await asyncio.to_thread(pub.wait)
            batches = metrics.registry.get_sample_value("orch_ingest_batches_total") or 1
            await pool.close()
    rate = seen / max(last - first, 1e-9)
    say(f"  orchestrator ingest into PostgreSQL: {rate:,.0f} msg/s ({seen} applied)")
    if seen < n or raw_got < n:
        say("  note: the broker dropped messages for a slow subscriber (Mosquitto keeps 1000 "
            "queued by default); deploy/mosquitto.conf raises the limits")
    return report("ingest", "status messages/s", rate, raw,
                  {"messages": n, "applied": seen, "raw_received": raw_got,
                   "devices": devices, "mean_batch": round(seen / batches, 1), "qos": 1}, say)


