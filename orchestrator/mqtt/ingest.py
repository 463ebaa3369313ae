"""Batched MQTT ingest of device status and progress.

Messages are acknowledged to the broker only after their batch is committed to
PostgreSQL (QoS 1, persistent session, manual acks): a crash loses nothing the broker
kept, it only redelivers. Invalid messages are counted by reason and logged, never
applied, and never stop ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
import structlog

from orchestrator.config import Settings
from orchestrator.domain.payloads import (
    ProgressReport,
    Rejection,
    StatusReport,
    parse_message,
)
from orchestrator.domain.resilience import backoff
from orchestrator.metrics import Metrics
from orchestrator.mqtt import _paho, topics
from orchestrator.mqtt.connection import make_client
from orchestrator.ports import DatabaseUnavailable, DataRejected, IngestSink

log = structlog.get_logger(__name__)


class Ingest:
    def __init__(self, settings: Settings, sink: IngestSink, metrics: Metrics) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.connected = asyncio.Event()
        self.applied = 0

    def subscriptions(self) -> list[str]:
        p, g = self.settings.mqtt_topic_prefix, self.settings.mqtt_shared_group
        return [topics.shared(topics.status(p), g), topics.shared(topics.progress(p), g)]

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, reconnecting with capped, jittered backoff."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._session(stop)
                attempt = 0
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.metrics.mqtt_reconnects.inc()
                delay = backoff(attempt, 0.5, 30.0)
                attempt += 1
                log.warning("mqtt connection lost", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        s = self.settings
        client = make_client(s.mqtt_url, s.mqtt_client_id, persistent=True, v5=s.mqtt_v5,
                             max_queued_incoming_messages=0)
        # acknowledge only after the batch is committed
        _paho.manual_acks(client)
        async with client:
            for topic in self.subscriptions():
                await client.subscribe(topic, qos=1)
            self.connected.set()
            log.info("mqtt ingest subscribed", topics=self.subscriptions())
            batch: list[aiomqtt.Message] = []
            wake = asyncio.Event()
            room = asyncio.Event()
            room.set()

            async def read() -> None:
                async for message in client.messages:
                    batch.append(message)
                    if len(batch) >= s.ingest_batch_size:
                        wake.set()
                    if len(batch) >= 4 * s.ingest_batch_size:
                        room.clear()
                        await room.wait()

            reader = asyncio.create_task(read(), name="mqtt-ingest-reader")
            stopper = asyncio.create_task(stop.wait(), name="mqtt-ingest-stop")
            try:
                while True:
                    waiter = asyncio.create_task(wake.wait())
                    done, _ = await asyncio.wait(
                        {waiter, reader, stopper}, timeout=s.ingest_flush_interval,
                        return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    wake.clear()
                    if batch:
                        taken = batch[:]
                        batch.clear()
                        room.set()
                        await self._flush(client, taken)
                    if stopper in done:
                        break
                    if reader in done:
                        reader.result()  # re-raises the connection error
                        raise aiomqtt.MqttError("message stream ended")
            finally:
                reader.cancel()
                stopper.cancel()
                await asyncio.gather(reader, stopper, return_exceptions=True)
                # flush what arrived while stopping, so the broker need not resend it
                if batch and _paho.is_connected(client):
                    taken = batch[:]
                    batch.clear()
                    await self._flush(client, taken)
            self.connected.clear()
            if stop.is_set():
                log.info("ingest stopped", applied=self.applied)

    async def _flush(self, client: aiomqtt.Client, messages: list[aiomqtt.Message]) -> None:
        prefix = self.settings.mqtt_topic_prefix
        statuses: list[StatusReport] = []
        progress: list[ProgressReport] = []
        rejected: list[Rejection] = []
        for m in messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            parsed = parse_message(prefix, m.topic.value, payload)
            if isinstance(parsed, StatusReport):
                statuses.append(parsed)
            elif isinstance(parsed, ProgressReport):
                progress.append(parsed)
            else:
                rejected.append(parsed)
        started = time.perf_counter()
        if statuses or progress:
            # retried until it succeeds: an unacked batch would be redelivered anyway
            for attempt in range(1_000_000):
                try:
                    rejected.extend(await self.sink.apply(statuses, progress))
                    break
                except DatabaseUnavailable as exc:
                    delay = backoff(attempt, 0.5, 5.0)
                    log.warning("ingest batch failed, retrying", error=str(exc),
                                retry_in=round(delay, 2))
                    await asyncio.sleep(delay)
                except DataRejected as exc:
                    # refused by the database itself: it would be refused again, so the
                    # batch is counted and logged, not applied, and ingest goes on
                    log.error("ingest batch refused by the database", error=str(exc)[:300],
                              messages=len(statuses) + len(progress))
                    rejected.extend(Rejection("db_error", str(exc)[:200], "batch")
                                    for _ in range(len(statuses) + len(progress)))
                    statuses, progress = [], []
                    break
        self.metrics.ingest_batch_seconds.observe(time.perf_counter() - started)
        self.metrics.ingest_batches.inc()
        if statuses:
            self.metrics.ingest_messages.labels("status").inc(len(statuses))
        if progress:
            self.metrics.ingest_messages.labels("progress").inc(len(progress))
            for report in progress:
                self.metrics.progress.labels(str(report.step)).inc()
        for r in rejected:
            self.metrics.ingest_rejected.labels(r.reason).inc()
            log.warning("message rejected", reason=r.reason, detail=r.detail, topic=r.topic)
        self.applied += len(statuses) + len(progress)
        for m in messages:
            _paho.ack(client, m)
