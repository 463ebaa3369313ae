"""``bench ingest``: status reports through the broker into PostgreSQL, beside a bare
subscriber on the same broker in the same run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from orchestrator.config import Settings
from orchestrator.metrics import Metrics
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import make_client
from orchestrator.mqtt.ingest import Ingest
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import create_pool
from orchestrator.tools.bench.common import (
    DB_PIDS,
    Say,
    cpu_seconds,
    cpu_spent,
    private_broker,
    report,
    scratch_database,
)
from orchestrator.tools.bench.load import idle_done, start_devices, start_publisher
from orchestrator.workers.progress import ProgressSink


class Timer:
    """First and last arrival, and how many."""

    def __init__(self) -> None:
        self.count = 0
        self.first = self.last = 0.0

    def tick(self, at: float | None = None) -> None:
        self.count += 1
        self.last = time.perf_counter() if at is None else at
        if self.count == 1:
            self.first = self.last

    def rate(self) -> float:
        return (self.count - 1) / max(self.last - self.first, 1e-9)


PYTHON_CLIENTS = ("aiomqtt", "gmqtt")
Load = Callable[[Settings, str], list[subprocess.Popen[bytes]]]


async def raw_aiomqtt(settings: Settings, load: Load, n: int) -> tuple[float, int]:
    """Our client run bare: aiomqtt at QoS 1 on the service's protocol version."""
    prefix = f"rawbench{os.getpid()}"
    t = Timer()
    async with make_client(settings.mqtt_url, f"raw-{prefix}", v5=settings.mqtt_v5) as client:
        await client.subscribe(topics.status(prefix), qos=1)

        async def consume() -> None:
            async for _ in client.messages:
                t.tick()

        reader = asyncio.create_task(consume())
        try:
            await _drive(settings, load, prefix, n, lambda: t.count)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return t.rate(), t.count


async def raw_gmqtt(settings: Settings, load: Load, n: int) -> tuple[float, int] | None:
    """The fastest Python asyncio MQTT client measured here (gmqtt, MQTT 3.1.1, QoS 1, its
    default acknowledgement), bare. None when gmqtt is not installed (the bench extra)."""
    try:
        import gmqtt  # noqa: PLC0415 (an optional dependency of the bench only)
        from gmqtt.mqtt.constants import MQTTv311  # noqa: PLC0415
    except ImportError:
        return None
    prefix = f"gmqbench{os.getpid()}"
    t = Timer()
    client = gmqtt.Client(f"gmq-{prefix}")
    client.on_message = lambda *args: t.tick()
    u = settings.mqtt_url
    if u.username:
        client.set_auth_credentials(u.username, u.password)
    await client.connect(u.host, u.port, version=MQTTv311)
    client.subscribe(topics.status(prefix), qos=1)
    await asyncio.sleep(0.3)          # SUBACK
    try:
        await _drive(settings, load, prefix, n, lambda: t.count)
    finally:
        await client.disconnect()
    return t.rate(), t.count


async def raw_mosquitto_sub(settings: Settings, load: Load, n: int
                            ) -> tuple[float, int] | None:
    """The C client: mosquitto_sub at QoS 1, printing each arrival's time. None when it is
    not installed (Debian's mosquitto-clients)."""
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        return None
    prefix = f"cbench{os.getpid()}"
    u = settings.mqtt_url
    auth = ["-u", u.username, "-P", u.password or ""] if u.username else []
    sub = await asyncio.create_subprocess_exec(
        exe, "-h", u.host, "-p", str(u.port), "-q", "1", "-t", topics.status(prefix),
        "-C", str(n), "-F", "%U", "-i", f"c-{prefix}", *auth,
        stdout=asyncio.subprocess.PIPE)
    assert sub.stdout is not None
    t = Timer()

    async def read() -> None:
        assert sub.stdout is not None
        async for line in sub.stdout:
            t.tick(float(line))

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)          # subscribed
    try:
        await _drive(settings, load, prefix, n, lambda: t.count)
    finally:
        if sub.returncode is None:
            sub.terminate()
        await sub.wait()
        await reader
    return t.rate(), t.count


async def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        await asyncio.to_thread(p.wait)


async def _drive(settings: Settings, load: Load, prefix: str, n: int,
                 progress: Callable[[], int]) -> None:
    """Start the load on ``prefix`` and wait until ``n`` arrived or it went idle."""
    procs = load(settings, prefix)
    try:
        await idle_done(_All(procs), progress, n)
    finally:
        await _wait(procs)


async def bench_ingest(settings: Settings, say: Say, n: int = 60_000,
                       devices: int = 10_000) -> dict[str, Any]:
    async with private_broker(settings, say) as s:
        return await _bench_ingest(s, say, n, devices)


@dataclasses.dataclass(frozen=True)
class Ours:
    rate: float          # messages/s, from the first commit
    applied: int
    batches: float
    cpu_us: float        # our process's CPU per message, over the rate's window
    db_cpu_us: float     # PostgreSQL's (its backends for this database and its writers)


async def ours(settings: Settings, dsn: str, tag: str, load: Load, n: int) -> Ours:
    """Our ingest into PostgreSQL under a load."""
    pool = await create_pool(dsn, min_size=4, max_size=4)
    async with pool.acquire() as conn:
        db_pids = [r["pid"] for r in await conn.fetch(DB_PIDS)]
    prefix = f"ing{tag}{os.getpid()}"
    s = dataclasses.replace(settings, database_url=dsn, mqtt_topic_prefix=prefix,
                            mqtt_client_id=f"bench-{prefix}", mqtt_shared_group=None)
    metrics = Metrics()
    ingest = Ingest(s, ProgressSink(PgDatabase(pool)), metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    await asyncio.wait_for(ingest.connected.wait(), 30)
    first = last = 0.0
    seen = base = 0
    cpu: list[tuple[float, dict[int, float]]] = []     # at the first commit, at the last

    def applied() -> int:
        # like Timer: from the first commit seen, not counting what it committed (the bare
        # subscribers count from their first arrival the same way); CPU over the same
        # window, so starting the load's processes is not counted as ours
        nonlocal first, last, seen, base
        if ingest.applied != seen:
            last = time.perf_counter()
            if not seen:
                first, base = last, ingest.applied
            seen = ingest.applied
            sample = (time.process_time(), cpu_seconds(db_pids, "postgres"))
            cpu[:] = [cpu[0] if cpu else sample, sample]
        return seen

    try:
        await _drive(s, load, prefix, n, applied)
    finally:
        stop.set()
        await task
        batches = metrics.registry.get_sample_value("orch_ingest_batches_total") or 1
        await pool.close()
    counted = max(seen - base, 1)
    (cpu0, db0), (cpu1, db1) = cpu or [(0.0, {}), (0.0, {})]
    return Ours((seen - base) / max(last - first, 1e-9), seen, batches,
                1e6 * (cpu1 - cpu0) / counted, 1e6 * cpu_spent(db0, db1) / counted)


class _All:
    """Several load processes seen as one by ``idle_done`` (done when all are)."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs

    def poll(self) -> int | None:
        codes = [p.poll() for p in self.procs]
        return None if any(c is None for c in codes) else max(c or 0 for c in codes)


async def _bench_ingest(settings: Settings, say: Say, n: int, devices: int) -> dict[str, Any]:
    connections = max(2, min(2000, n // 10))
    loads: dict[str, tuple[str, Load]] = {
        "devices": (f"{connections} device connections, one report in flight each",
                    lambda s, prefix: start_devices(s, prefix, n, connections)),
        "burst": (f"one burst connection over {devices} device ids",
                  lambda s, prefix: [start_publisher(s, prefix, n, devices)]),
    }
    say(f"ingest: {n} QoS 1 status messages, through Mosquitto at "
        f"{settings.mqtt_url.host}:{settings.mqtt_url.port}")
    out: dict[str, Any] = {"messages": n, "qos": 1, "device_connections": connections,
                           "devices": devices}
    headline: tuple[float, float] = (0.0, 0.0)
    async with scratch_database(settings) as dsn:
        for mode, (label, load) in loads.items():
            say(f"  load: {label}")
            raws: dict[str, tuple[float, int]] = {}
            raws["aiomqtt"] = await raw_aiomqtt(settings, load, n)
            for name, fn in (("gmqtt", raw_gmqtt), ("mosquitto_sub", raw_mosquitto_sub)):
                got = await fn(settings, load, n)
                if got is not None:
                    raws[name] = got
            for name, (r, received) in raws.items():
                say(f"    bare {name} subscriber: {r:,.0f} msg/s ({received} received)")
            us = await ours(settings, dsn, mode, load, n)
            rate, seen = us.rate, us.applied
            say(f"    orchestrator ingest into PostgreSQL, acknowledged after commit: "
                f"{rate:,.0f} msg/s ({seen} applied); CPU per message: ours "
                f"{us.cpu_us:.1f} us, PostgreSQL's {us.db_cpu_us:.1f} us")
            fastest = max(raws, key=lambda k: raws[k][0])
            raw, raw_got = raws[fastest]
            python = max((k for k in raws if k in PYTHON_CLIENTS), key=lambda k: raws[k][0])
            say(f"    ratio to the fastest bare subscriber ({fastest}): {rate / raw:.2f}; "
                f"to the fastest Python one ({python}): {rate / raws[python][0]:.2f}")
            if seen < n or raw_got < n:
                say("    note: the broker dropped messages for a slow subscriber (Mosquitto "
                    "keeps 1000 queued by default); deploy/mosquitto.conf raises the limits")
            key = "" if mode == "devices" else f"{mode}_"
            out.update({f"{key}applied": seen, f"{key}raw_client": fastest,
                        f"{key}raw_received": raw_got,
                        f"{key}mean_batch": round(seen / us.batches, 1),
                        f"{key}cpu_us_per_message": round(us.cpu_us, 2),
                        f"{key}database_cpu_us_per_message": round(us.db_cpu_us, 2),
                        f"{key}ratio_python": round(rate / raws[python][0], 3),
                        **{f"{key}raw_{k}": round(v[0], 1) for k, v in raws.items()}})
            if mode == "devices":
                headline = (rate, raw)
            else:
                out.update({"burst_rate": round(rate, 1), "burst_raw_rate": round(raw, 1),
                            "burst_ratio": round(rate / raw, 3)})
    return report("ingest", "status messages/s", headline[0], headline[1], out, say)
