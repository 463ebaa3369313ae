"""``orchestrator bench``: this system's throughput beside the raw limit measured in the same
run on the same machine, as a ratio. Each prints a table, then one line of JSON."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from orchestrator import runtime
from orchestrator.config import Settings
from orchestrator.metrics import Metrics
from orchestrator.mqtt import topics
from orchestrator.mqtt.connection import make_client

Say = Callable[[str], None]


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def report(name: str, unit: str, rate: float, raw: float, table: dict[str, Any],
           say: Say) -> dict[str, Any]:
    result = {"bench": name, "unit": unit, "rate": round(rate, 1), "raw_rate": round(raw, 1),
              "ratio": round(rate / raw, 3) if raw else None, **table,
              "machine": machine()}
    width = max(len(k) for k in result)
    say("")
    for key, value in result.items():
        say(f"  {key:<{width}}  {value}")
    say(json.dumps(result))
    return result


@contextlib.asynccontextmanager
async def scratch_database(settings: Settings) -> Any:
    """A fresh, migrated database beside the configured one, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    from orchestrator.store.migrate import migrate

    dsn = settings.require_database()
    name = f"orch_bench_{os.getpid()}_{int(time.time())}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(dsn)
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        await migrate(url)
        yield url
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# --- a publisher in its own process, so it does not share our event loop -------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def publisher_main(argv: list[str]) -> int:
    """``python -m orchestrator.bench publish HOST PORT PREFIX N DEVICES``: a load generator
    that writes pre-encoded MQTT 3.1.1 QoS 1 PUBLISH packets straight to the socket and
    counts the PUBACKs, so the measurement is bounded by the broker and the subscriber,
    not by a Python client on the sending side."""
    import socket as sock

    host, port, prefix, n, devices = argv[0], int(argv[1]), argv[2], int(argv[3]), int(argv[4])
    payloads = [json.dumps({"manuf": "China Mobile", "model": "M5310",
                            "fota_version": f"1.{i % 5}", "signal": i % 31,
                            "power": i % 100}).encode() for i in range(64)]
    s = sock.create_connection((host, port))
    s.setsockopt(sock.IPPROTO_TCP, sock.TCP_NODELAY, 1)
    body = _string("MQTT") + bytes([4, 0x02, 0, 60]) + _string(f"benchpub{os.getpid()}")
    s.sendall(b"\x10" + _varint(len(body)) + body)
    if s.recv(4)[:1] != b"\x20":
        raise SystemExit("publisher: CONNACK expected")
    acked = 0
    window = 20_000
    pending = b""
    sent = 0
    while acked < n:
        chunk: list[bytes] = []
        while sent < n and sent - acked < window and len(chunk) < 2000:
            pid = sent % 65535 + 1
            topic = _string(topics.status(prefix, 1 + sent % devices))
            payload = payloads[sent % 64]
            rest = topic + pid.to_bytes(2, "big") + payload
            chunk.append(b"\x32" + _varint(len(rest)) + rest)
            sent += 1
        if chunk:
            s.sendall(b"".join(chunk))
        if sent - acked >= window or sent >= n or not chunk:
            data = pending + s.recv(65536)
            whole = len(data) // 4
            acked += whole
            pending = data[whole * 4:]
    s.sendall(b"\xe0\x00")
    s.close()
    return 0


def start_publisher(settings: Settings, prefix: str, n: int, devices: int
                    ) -> subprocess.Popen[bytes]:
    u = settings.mqtt_url
    return subprocess.Popen([sys.executable, "-m", "orchestrator.bench", "publish",
                             u.host, str(u.port), prefix, str(n), str(devices)])


async def _idle_done(pub: subprocess.Popen[bytes], progress: Callable[[], int], n: int,
                     idle: float = 3.0, limit: float = 600.0) -> None:
    """Until ``n`` arrived, or the publisher is done and nothing arrived for ``idle`` s (a
    broker past its queue limits drops messages for slow subscribers)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while progress() < n and time.monotonic() < deadline:
        now = progress()
        if now != last:
            last, last_change = now, time.monotonic()
        elif pub.poll() is not None and time.monotonic() - last_change > idle:
            return
        await asyncio.sleep(0.01)


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
            await _idle_done(pub, lambda: count, n)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await asyncio.to_thread(pub.wait)
    return (count - 1) / max(last - first, 1e-9), count


async def bench_ingest(settings: Settings, say: Say, n: int = 60_000,
                       devices: int = 10_000) -> dict[str, Any]:
    from orchestrator.mqtt.ingest import Ingest
    from orchestrator.store.db import create_pool
    from orchestrator.store.sink import PgSink

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
        ingest = Ingest(s, PgSink(pool), metrics)
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
            await _idle_done(pub, applied, n)
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


async def raw_checks(url: str, n: int, concurrency: int, body: Callable[[int], dict[str, Any]],
                     headers: dict[str, str]) -> float:
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem, http.post(f"{url}/ota/south/check", json=body(i),
                                      headers=headers) as r:
                await r.read()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def simulator_process(scenario: dict[str, Any]) -> Any:
    from orchestrator.demo import _free_port

    port = _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(scenario, f)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "simulate", "onenet",
                             "--port", str(port), "--scenario", f.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCH_LOG_LEVEL": "error"})
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{url}/sim/state"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait)
        os.unlink(f.name)


BENCH_KEY = "mjgvkTCYTBF6DguxMmm+aV9EkDp2CYfL5jzRTph5Th6KhU8gqZz/cBivPTA7tfY5"


def _checks_scenario() -> dict[str, Any]:
    return {"credentials": {"product_id": "1", "access_key": BENCH_KEY},
            "server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1024}],
            "strategies": [{"type": "fota", "package": "p", "signal": 0, "power": 0}]}


async def _registry(conn: Any, n: int) -> None:
    await conn.execute(
        """INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,
                                    status_at, last_seen)
           SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80, now(), now()
           FROM generate_series(1, $1::bigint) g""", n)


async def bench_checks(settings: Settings, say: Say, n: int = 20_000) -> dict[str, Any]:
    from orchestrator.domain.onenet import authorization
    from orchestrator.engine.scheduler import Scheduler
    from orchestrator.mqtt.publisher import Publisher
    from orchestrator.onenet.client import OneNetClient
    from orchestrator.store.campaigns import CampaignSpec, create_campaign
    from orchestrator.store.db import create_pool

    say(f"checks: claim -> check -> gate -> command -> record for {n} devices, against the "
        "OneNET simulator in its own process")
    async with simulator_process(_checks_scenario()) as url:
        auth = {"Authorization": authorization("1", BENCH_KEY, int(time.time()) + 3600)}

        def body(i: int) -> dict[str, Any]:
            return {"dev_id": 10_000_000 + i, "manuf": "China Mobile", "model": "M5310",
                    "type": 1, "version": "1.2", "cdn": True, "signals": 20, "powers": 80}

        raw = await raw_checks(url, n, settings.onenet_concurrency, body, auth)
        say(f"  raw aiohttp POSTs: {raw:,.0f} checks/s")
        async with scratch_database(settings) as dsn:
            pool = await create_pool(dsn, max_size=8)
            async with pool.acquire() as conn:
                await _registry(conn, n)
                cid = await create_campaign(conn, CampaignSpec("bench", "fota", "1.3"),
                                            start=True)
            s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                    onenet_product_id="1", onenet_access_key=BENCH_KEY,
                                    onenet_authorization=None,
                                    mqtt_topic_prefix=f"chkbench{os.getpid()}")
            publisher = Publisher(s, f"bench-cmd-{os.getpid()}")
            async with OneNetClient(s) as client:
                scheduler = Scheduler(s, pool, client, publisher, Metrics(), "bench")
                stop = asyncio.Event()
                started = time.perf_counter()
                task = asyncio.create_task(scheduler.run(stop, workers=2))
                try:
                    async with asyncio.timeout(600):
                        # watched in memory: polling the database would load it
                        while scheduler.processed < n:
                            await asyncio.sleep(0.01)
                    elapsed = time.perf_counter() - started
                finally:
                    stop.set()
                    await task
                    await publisher.close()
            async with pool.acquire() as conn:
                dispatched = await conn.fetchval(
                    "SELECT count(*) FROM ota.campaign_devices WHERE campaign_id = $1"
                    " AND state = 'dispatched'", cid)
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
    say(f"  orchestrator: {rate:,.0f} devices/s checked, gated, commanded and recorded")
    return report("checks", "devices/s", rate, raw,
                  {"devices": n, "concurrency": settings.onenet_concurrency,
                   "batch": settings.scheduler_batch_size}, say)


async def _checkpoint(conn: Any) -> None:
    """Start each timed step with no checkpoint pending from the previous one's WAL."""
    with contextlib.suppress(asyncpg.PostgresError):
        await conn.execute("CHECKPOINT")


async def bench_enroll(settings: Settings, say: Say, n: int = 1_000_000) -> dict[str, Any]:
    from orchestrator.store.campaigns import CampaignSpec, create_campaign
    from orchestrator.store.db import connect

    say(f"enroll: a campaign over {n:,} registered devices")
    async with scratch_database(settings) as dsn:
        conn = await connect(dsn)
        try:
            await _registry(conn, n)
            await conn.execute("ANALYZE ota.devices")
            await conn.execute("CREATE TABLE bench_raw (LIKE ota.campaign_devices INCLUDING ALL)")
            await _checkpoint(conn)
            started = time.perf_counter()
            await conn.execute(
                "INSERT INTO bench_raw (campaign_id, dev_id, wave, next_attempt_at)"
                " SELECT 1, g, 0, now() FROM generate_series(1, $1::bigint) g", n)
            raw_s = time.perf_counter() - started
            say(f"  raw INSERT ... SELECT generate_series: {raw_s:.2f} s")
            await _checkpoint(conn)
            started = time.perf_counter()
            cid = await create_campaign(conn, CampaignSpec(
                "bench", "fota", "1.3", waves=(1, 10, 50, 100)), start=True)
            ours_s = time.perf_counter() - started
            say(f"  orchestrator enrolment (selector, waves, counts): {ours_s:.2f} s")
            from orchestrator.store.campaigns import fold_counts

            await fold_counts(conn)
            timings = []
            for _ in range(20):
                t = time.perf_counter()
                row = await conn.fetchrow(
                    "SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid)
                timings.append(time.perf_counter() - t)
            assert row["total"] == n, dict(row)
            timings.sort()
        finally:
            await conn.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report("enroll", "devices/s", n / ours_s, n / raw_s,
                  {"devices": n, "seconds": round(ours_s, 2), "raw_seconds": round(raw_s, 2),
                   "campaign_progress_ms_p50": round(1000 * timings[len(timings) // 2], 2),
                   "campaign_progress_ms_max": round(1000 * timings[-1], 2),
                   "process_max_rss_mb": round(rss_mb, 1)}, say)


async def bench_campaign(settings: Settings, say: Say, n: int = 2_000) -> dict[str, Any]:
    from orchestrator.domain.onenet import authorization
    from orchestrator.service import Service
    from orchestrator.store.campaigns import CampaignSpec, create_campaign
    from orchestrator.store.db import connect

    say(f"campaign: {n} simulated devices from creation to the last success")
    scenario = _checks_scenario()
    async with simulator_process(scenario) as url:
        auth = {"Authorization": authorization("1", BENCH_KEY, int(time.time()) + 3600)}
        raw = await raw_checks(url, n, settings.onenet_concurrency, lambda i: {
            "dev_id": 20_000_000 + i, "manuf": "China Mobile", "model": "M5310", "type": 1,
            "version": "1.2", "cdn": True}, auth)
        say(f"  raw aiohttp POSTs (one check per device): {raw:,.0f}/s")
        async with scratch_database(settings) as dsn:
            prefix = f"cmpbench{os.getpid()}"
            s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                    onenet_product_id="1", onenet_access_key=BENCH_KEY,
                                    onenet_authorization=None, mqtt_topic_prefix=prefix,
                                    mqtt_client_id=f"bench-{prefix}", api_listen="127.0.0.1:0",
                                    scheduler_poll_interval=0.05)
            u = s.mqtt_url
            fleet = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "simulate", "fleet", "--devices", str(n),
                 "--status-interval", "3600", "--install-time", "0.05", "--seed", "1",
                 "--bandwidth", "10000000"],
                env={**os.environ, "ORCH_MQTT_URL": f"mqtt://{u.host}:{u.port}",
                     "ORCH_MQTT_TOPIC_PREFIX": prefix, "ORCH_MQTT_PROTOCOL": s.mqtt_protocol,
                     "ORCH_LOG_LEVEL": "error"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            service = Service(s, api=False)
            task = asyncio.create_task(service.run())
            try:
                await asyncio.wait_for(service.ready.wait(), 30)
                conn = await connect(dsn)
                try:
                    async with asyncio.timeout(120):
                        while await conn.fetchval("SELECT count(*) FROM ota.devices") < n:
                            await asyncio.sleep(0.1)
                    started = time.perf_counter()
                    cid = await create_campaign(conn, CampaignSpec("bench", "fota", "1.3"),
                                                start=True)
                    async with asyncio.timeout(600):
                        while True:
                            row = await conn.fetchrow(
                                "SELECT status, succeeded FROM ota.campaign_progress"
                                " WHERE campaign_id = $1", cid)
                            if row["status"] == "completed":
                                break
                            await asyncio.sleep(0.05)
                    elapsed = time.perf_counter() - started
                finally:
                    await conn.close()
            finally:
                service.stop.set()
                await task
                fleet.send_signal(signal.SIGTERM)
                await asyncio.to_thread(fleet.wait)
    rate = n / elapsed
    say(f"  campaign: {row['succeeded']} succeeded in {elapsed:.1f} s")
    return report("campaign", "devices/s", rate, raw,
                  {"devices": n, "succeeded": row["succeeded"], "seconds": round(elapsed, 2)},
                  say)


BENCHES = {"ingest": bench_ingest, "checks": bench_checks, "enroll": bench_enroll,
           "campaign": bench_campaign}


def run_bench(name: str, settings: Settings, size: int | None) -> int:
    fn = BENCHES[name]

    def say(text: str) -> None:
        print(text, flush=True)

    kwargs = {"n": size} if size else {}
    runtime.run(fn(settings, say, **kwargs))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        raise SystemExit(publisher_main(sys.argv[2:]))
    raise SystemExit("usage: python -m orchestrator.bench publish URL PREFIX N DEVICES [V]")
