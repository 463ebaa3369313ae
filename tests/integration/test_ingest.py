"""Ingest through a real broker into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiomqtt
import asyncpg

from conftest import Mosquitto, orchestrator_env
from orchestrator.config import Settings, parse_mqtt_url
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.metrics import Metrics
from orchestrator.mqtt.ingest import Ingest
from orchestrator.store.database import PgDatabase
from orchestrator.workers.progress import ProgressSink
from stack import until


def status(i: int) -> bytes:
    return json.dumps({"manuf": "China Mobile", "model": "M5310", "fota_version": f"1.{i % 7}",
                       "sota_version": "s1", "signal": i % 30, "power": i % 101}).encode()


GARBAGE: list[tuple[str, bytes, str]] = [
    ("{p}/1/status", b"", "empty"),
    ("{p}/2/status", b'{"manuf": "China Mobile", "mod', "bad_json"),
    ("{p}/3/status", b'{"signal": "strong"}', "bad_type"),
    ("{p}/4/status", b"\xc3\x28\xa0\xa1", "not_utf8"),
    ("{p}/abc/status", b'{"signal": 3}', "bad_dev_id"),
    ("{p}/5/status", b'{"fota_version": "v 1"}', "bad_version"),
    # a NUL PostgreSQL could not store: refused alone, never failing the batch it is in
    ("{p}/7/status", b'{"manuf": "China\\u0000Mobile", "model": "M5310"}', "bad_text"),
    ("{p}/6/progress", b'{"campaign": 99, "step": 10}', "unknown_campaign"),
]


async def count_devices(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ota.devices"))
    finally:
        await conn.close()


async def publish_all(url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    u = parse_mqtt_url(url)
    async with aiomqtt.Client(u.host, u.port, max_inflight_messages=200) as client:
        await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages))


@contextlib.asynccontextmanager
async def running(settings: Settings, sink: ProgressSink) -> AsyncIterator[tuple[Ingest, Metrics]]:
    """Ingest consuming in this test's loop until the block ends."""
    metrics = Metrics()
    ingest = Ingest(settings, sink, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    await asyncio.wait_for(ingest.connected.wait(), 10)
    yield ingest, metrics
    assert not task.done(), task
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_ingest_many_devices_with_garbage(settings: Settings, pool: Any) -> None:
    async with running(settings, ProgressSink(PgDatabase(pool))) as (_, metrics):
        await many_devices_with_garbage(settings, pool, metrics)


async def many_devices_with_garbage(settings: Settings, pool: Any, metrics: Metrics) -> None:
    p = settings.mqtt_topic_prefix
    good = [(f"{p}/{i}/status", status(i)) for i in range(100, 2100)]
    bad = [(t.format(p=p), b) for t, b, _ in GARBAGE]
    mixed = good + bad * 3
    random.Random(7).shuffle(mixed)
    await publish_all(f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}", mixed)

    async def all_in() -> bool:
        rejected = sum(metrics.rejected(r) for _, _, r in GARBAGE)
        return await count_devices(settings.database_url or "") == 2000 and rejected == 24

    await until(all_in)
    for _, _, r in GARBAGE:
        assert metrics.rejected(r) == 3, r
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM ota.devices WHERE dev_id = 1234")
        # garbage was never applied: ids 1..6 are not in the registry
        assert await conn.fetchval("SELECT count(*) FROM ota.devices WHERE dev_id < 100") == 0
    assert (row["model"], row["fota_version"], row["signal"], row["power"]) == (
        "M5310", f"1.{1234 % 7}", 1234 % 30, 1234 % 101)
    assert row["status_at"] is not None


async def test_partial_reports_keep_earlier_fields(settings: Settings, pool: Any) -> None:
    async with running(settings, ProgressSink(PgDatabase(pool))):
        await partial_reports(settings, pool)


async def partial_reports(settings: Settings, pool: Any) -> None:
    p = settings.mqtt_topic_prefix
    url = f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}"
    await publish_all(url, [(f"{p}/77/status", status(77))])

    async def arrived() -> bool:
        return await count_devices(settings.database_url or "") == 1

    await until(arrived)
    await publish_all(url, [(f"{p}/77/status", b'{"signal": 25}')])

    async def updated() -> bool:
        async with pool.acquire() as conn:
            return bool(await conn.fetchval(
                "SELECT signal = 25 FROM ota.devices WHERE dev_id = 77"))

    await until(updated)
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM ota.devices WHERE dev_id = 77")
    assert row["model"] == "M5310" and row["power"] == 77 and row["fota_version"] == "1.0"


class SlowSink(ProgressSink):
    """The real sink, slowed, so the broker restart falls between delivery and commit."""

    async def apply(self, statuses: Sequence[StatusReport],
                    reports: Sequence[ProgressReport]) -> Sequence[Rejection]:
        await asyncio.sleep(0.05)
        return await super().apply(statuses, reports)


async def test_broker_restart_mid_stream_loses_nothing(
        settings: Settings, pool: Any, private_broker: Mosquitto) -> None:
    # a plain subscription: Mosquitto 2.0 does not restore shared subscriptions from its
    # persistence, so a shared one drops what is published before ingest re-subscribes
    # (test_mosquitto_facts measures it; the README states it)
    s = dataclasses.replace(settings, mqtt_url=parse_mqtt_url(private_broker.url),
                            ingest_batch_size=50, mqtt_shared_group=None)
    async with running(s, SlowSink(PgDatabase(pool))) as (_, metrics):
        await restart_mid_stream(s, private_broker, metrics)


async def restart_mid_stream(s: Settings, private_broker: Mosquitto, metrics: Metrics) -> None:
    p = s.mqtt_topic_prefix
    first = [(f"{p}/{i}/status", status(i)) for i in range(1, 1501)]
    await publish_all(private_broker.url, first)
    private_broker.stop()  # messages are queued, in flight, or in an uncommitted batch
    assert await count_devices(s.database_url or "") < 1500
    await asyncio.sleep(0.5)
    private_broker.start()
    second = [(f"{p}/{i}/status", status(i)) for i in range(1501, 2001)]
    await publish_all(private_broker.url, second)

    async def all_in() -> bool:
        return await count_devices(s.database_url or "") == 2000

    await until(all_in, 20)
    assert metrics.registry.get_sample_value("orch_mqtt_reconnects_total") >= 1


async def start_service(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, "".join(lines)
        lines.append(line)
        if "mqtt ingest subscribed" in line:
            return proc, lines


async def test_sigterm_flushes_and_exits_zero(settings: Settings) -> None:
    env = orchestrator_env(settings)
    env["ORCH_INGEST_FLUSH_INTERVAL"] = "0.5"   # a batch is open when SIGTERM comes
    proc, lines = await start_service(env)
    p = settings.mqtt_topic_prefix
    url = f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}"
    await publish_all(url, [(f"{p}/{i}/status", status(i)) for i in range(1, 1001)])
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    stopped = [json.loads(x) for x in rest.splitlines() if "ingest stopped" in x]
    assert stopped, rest
    applied = stopped[0]["applied"]
    assert applied > 0
    # everything the process took from the broker was committed before it exited
    assert await count_devices(settings.database_url or "") == applied
    # and what it did not take is still at the broker, for the next start
    proc2, _ = await start_service(env)
    try:
        async def all_in() -> bool:
            return await count_devices(settings.database_url or "") == 1000
        await until(all_in)
    finally:
        proc2.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc2.communicate, timeout=30)
    assert proc2.returncode == 0


async def test_a_batch_the_database_refuses_is_counted_and_ingest_goes_on(
        settings: Settings, pool: Any) -> None:
    async with pool.acquire() as conn:   # a rule our validation does not know
        await conn.execute("ALTER TABLE ota.devices ADD CONSTRAINT weak CHECK (signal < 100)")
    async with running(settings, ProgressSink(PgDatabase(pool))) as (_, metrics):
        await refused_then_applied(settings, metrics)


async def refused_then_applied(settings: Settings, metrics: Metrics) -> None:
    """One message the database refuses, in a batch of good ones: the batch is split until
    that message alone is rejected (db_refused); the 19 others are applied."""
    p = settings.mqtt_topic_prefix
    url = f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}"
    batch = [(f"{p}/{i}/status", status(i)) for i in range(2, 21)]
    bad = json.dumps({"manuf": "China Mobile", "model": "M5310", "fota_version": "1.0",
                      "signal": 150}).encode()
    batch.insert(7, (f"{p}/1/status", bad))
    await publish_all(url, batch)

    async def refused() -> bool:
        return metrics.rejected("db_refused") == 1

    await until(refused)

    async def applied() -> bool:
        return await count_devices(settings.database_url or "") == 19

    await until(applied)
    assert metrics.rejected("db_refused") == 1


async def test_a_status_registers_a_device_only_with_manufacturer_model_and_version(
        settings: Settings, pool: Any) -> None:
    async with running(settings, ProgressSink(PgDatabase(pool))) as (_, metrics):
        p = settings.mqtt_topic_prefix
        url = f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}"
        await publish_all(url, [(f"{p}/{i}/status", b'{"signal": 5}') for i in range(1, 51)]
                          + [(f"{p}/51/status", b"{}"), (f"{p}/52/status", status(52))])

        async def counted() -> bool:
            return metrics.rejected("unknown_device") == 51

        await until(counted)
        assert await count_devices(settings.database_url or "") == 1
        # a known device may then send any subset
        await publish_all(url, [(f"{p}/52/status", b'{"signal": 9}')])

        async def updated() -> bool:
            conn = await asyncpg.connect(settings.database_url)
            try:
                return bool(await conn.fetchval(
                    "SELECT signal = 9 FROM ota.devices WHERE dev_id = 52"))
            finally:
                await conn.close()

        await until(updated)


class BuggySink(ProgressSink):
    """The real sink, with a bug that trips on device 13's reports."""

    async def apply(self, statuses: Sequence[StatusReport],
                    reports: Sequence[ProgressReport]) -> Sequence[Rejection]:
        if any(s.dev_id == 13 for s in statuses):
            raise RuntimeError("a bug in applying device 13")
        return await super().apply(statuses, reports)


async def test_oversized_and_bug_tripping_messages_are_rejected_alone(
        settings: Settings, pool: Any) -> None:
    """MQTT 3.1.1 has no Maximum Packet Size, so a 20 KB report reaches ingest: it is
    rejected (too_large). A message that trips a bug is found by splitting the batch and
    rejected alone (internal_error); ingest goes on and the others are applied."""
    s = dataclasses.replace(settings, mqtt_protocol="3.1.1", ingest_batch_size=100)
    async with running(s, BuggySink(PgDatabase(pool))) as (_, metrics):
        p = s.mqtt_topic_prefix
        url = f"mqtt://{s.mqtt_url.host}:{s.mqtt_url.port}"
        big = json.dumps({"manuf": "China Mobile", "model": "M5310", "fota_version": "1.2",
                          "pad": "x" * 20_000}).encode()
        batch = [(f"{p}/{i}/status", status(i)) for i in range(1, 21)]
        batch.append((f"{p}/99/status", big))
        await publish_all(url, batch)

        async def done() -> bool:
            return (metrics.rejected("too_large") == 1
                    and metrics.rejected("internal_error") == 1)

        await until(done)

        async def applied() -> bool:
            return await count_devices(s.database_url or "") == 19

        await until(applied)


class StalledSink(ProgressSink):
    """The real sink behind a gate (a database that does not answer until it opens); the
    size of every batch it is given is recorded."""

    def __init__(self, db: PgDatabase, gate: asyncio.Event) -> None:
        super().__init__(db)
        self.gate = gate
        self.sizes: list[int] = []

    async def apply(self, statuses: Sequence[StatusReport],
                    reports: Sequence[ProgressReport]) -> Sequence[Rejection]:
        self.sizes.append(len(statuses) + len(reports))
        await self.gate.wait()
        return await super().apply(statuses, reports)


async def test_a_stalled_database_bounds_what_ingest_holds(
        settings: Settings, pool: Any, private_broker: Mosquitto) -> None:
    """Receive Maximum does not bound it (Mosquitto 2.0 sends its whole queue after the
    first acknowledgements): past four batches ingest stops reading the socket, without
    spinning, and the broker keeps the rest; nothing is lost when the database answers."""
    s = dataclasses.replace(settings, mqtt_url=parse_mqtt_url(private_broker.url),
                            ingest_batch_size=50, mqtt_shared_group=None)
    gate = asyncio.Event()
    sink = StalledSink(PgDatabase(pool), gate)
    p = s.mqtt_topic_prefix
    messages = [(f"{p}/{i}/status", status(i)) for i in range(1, 4001)]
    async with running(s, sink):
        await publish_all(private_broker.url, messages)
        await asyncio.sleep(0.5)
        cpu = time.process_time()
        await asyncio.sleep(1.0)
        idle_cpu = time.process_time() - cpu
        gate.set()

        async def all_in() -> bool:
            return await count_devices(s.database_url or "") == 4000

        await until(all_in, 30)
    smallest = min(len(t.encode()) + len(b) + 4 for t, b in messages)   # a PUBLISH's bytes
    slack = 65536 // smallest + 1       # what one socket read may still hold
    assert max(sink.sizes) <= 4 * 50 + slack < 4000 // 2, sink.sizes
    assert idle_cpu < 0.3, f"{idle_cpu:.2f} s of CPU in 1 s while paused"
