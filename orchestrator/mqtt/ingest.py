"""Batched MQTT ingest of device status and progress.

A message is acknowledged to the broker only once it is committed to PostgreSQL or
individually rejected (QoS 1, persistent session, manual acks): a crash, a lost database or
a broker restart leads to redelivery, never to loss.

- The database unavailable (restart, failover, overload, timeout): the batch is retried,
  unacknowledged, with capped backoff, for as long as it takes; SIGTERM still stops ingest
  at once (nothing acknowledged; the broker redelivers).
- A batch the database refuses on its content (or that trips a bug): split in halves until
  the offending message(s) are found; those alone are rejected (counted, logged), the rest
  is applied.
- Memory is bounded: past four batches' worth of messages waiting, the socket is not read
  until the batch is taken (the broker queues for us; Receive Maximum alone does not bound
  it, see ``_paho.Reads``), and each message is at most ``mqtt_max_payload`` bytes; QoS 0
  messages beyond the bound (from a read already made) are dropped and counted
  (``overload``).
- Invalid messages are counted by reason (every one) and logged at most once per reason
  per interval, with the count; never applied, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

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
from orchestrator.logs import RateLimitedLog
from orchestrator.metrics import Metrics
from orchestrator.mqtt import _paho, topics
from orchestrator.mqtt.connection import make_client
from orchestrator.ports import DatabaseUnavailable, DataRejected, IngestSink

log = structlog.get_logger(__name__)


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker answered a subscription with a failure code: ingest is not ready, and
    tries again with backoff (rights may be fixed while it waits)."""


class Ingest:
    def __init__(self, settings: Settings, sink: IngestSink, metrics: Metrics) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.connected = asyncio.Event()
        self.applied = 0
        self.rejections = RateLimitedLog(log, "messages rejected", interval=10.0)
        self.notes = RateLimitedLog(log, "messages applied with a note", interval=10.0)

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
        assert s.mqtt_client_id, "a persistent session needs a client id (Service sets one)"
        client = make_client(s.mqtt_url, s.mqtt_client_id, persistent=True, v5=s.mqtt_v5,
                             session_expiry=s.mqtt_session_expiry,
                             receive_maximum=min(65535, 2 * s.ingest_batch_size),
                             max_packet_size=s.mqtt_max_payload + 1024,
                             max_queued_incoming_messages=0)
        batch: list[_paho.Received] = []
        wake = asyncio.Event()
        bound = 4 * s.ingest_batch_size

        def receive(message: _paho.Received) -> None:
            # past the bound the socket is not read until the batch is taken (the broker
            # queues); what one read already holds still arrives: QoS 0 of it is dropped
            # and counted, QoS 1 kept (unacknowledged, it must not be lost)
            if message.qos == 0 and len(batch) >= bound:
                self._reject(Rejection("overload", "QoS 0 beyond the ingest bound",
                                       message.topic))
                return
            batch.append(message)
            if len(batch) >= s.ingest_batch_size:
                wake.set()
                if len(batch) >= bound:
                    reads.pause()

        # acknowledge only after the batch is committed
        _paho.manual_acks(client)
        reads = _paho.fast_receive(client, receive, keep_debug_log=s.log_level == "debug")
        async with client:
            for topic in self.subscriptions():
                reason = topics.refusal(await client.subscribe(topic, qos=1))
                if reason is not None:
                    self.metrics.mqtt_subscribe_refused.labels(topic).inc()
                    log.error("mqtt subscription refused: no device message can arrive",
                              topic=topic, reason=reason, client_id=s.mqtt_client_id,
                              hint="the broker's ACL must let this account read the topic "
                                   "('orchestrator broker init' writes one that does)")
                    raise SubscriptionRefused(f"subscription to {topic} refused ({reason})")
            self.connected.set()
            log.info("mqtt ingest subscribed", topics=self.subscriptions(),
                     client_id=s.mqtt_client_id)

            async def read() -> None:
                # every message goes to receive(); this only sees the connection end
                async for _ in client.messages:
                    pass

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
                        reads.resume()
                        await self._flush(client, taken, stop)
                    if stopper in done or stop.is_set():
                        break
                    if reader in done:
                        reader.result()  # re-raises the connection error
                        raise aiomqtt.MqttError("message stream ended")
            finally:
                stopper.cancel()
                if stop.is_set() and _paho.is_connected(client) and not reader.done():
                    # a clean stop: no new messages, then read and commit what the broker
                    # already sent us (the session ends below; Mosquitto drops what an
                    # ended session leaves unacknowledged)
                    reads.resume()
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        await asyncio.wait_for(client.unsubscribe(self.subscriptions()), 5)
                    await self._quiet(batch, 0.3, 10.0)
                reader.cancel()
                await asyncio.gather(reader, stopper, return_exceptions=True)
                # flush what arrived while stopping, so the broker need not resend it
                if batch and _paho.is_connected(client):
                    taken = batch[:]
                    batch.clear()
                    await self._flush(client, taken, stop)
                self.connected.clear()
                if stop.is_set():
                    # a clean stop ends the broker session: this replica holds nobody's
                    # reports while it is gone (the group's other members get them)
                    _paho.end_session_on_disconnect(client)
            if stop.is_set():
                log.info("ingest stopped", applied=self.applied)

    @staticmethod
    async def _quiet(batch: list[_paho.Received], idle: float, limit: float) -> None:
        """Until no message arrived for ``idle`` s (the reader keeps filling ``batch``)."""
        deadline = asyncio.get_running_loop().time() + limit
        seen = -1
        while len(batch) != seen and asyncio.get_running_loop().time() < deadline:
            seen = len(batch)
            await asyncio.sleep(idle)

    def _reject(self, r: Rejection) -> None:
        if r.applied:
            self.metrics.ingest_noted.labels(r.reason).inc()
            self.notes.note(r.reason, detail=r.detail, topic=r.topic[:120])
            return
        self.metrics.ingest_rejected.labels(r.reason).inc()
        self.rejections.note(r.reason, detail=r.detail, topic=r.topic[:120])

    async def _flush(self, client: aiomqtt.Client, messages: list[_paho.Received],
                     stop: asyncio.Event) -> None:
        prefix = self.settings.mqtt_topic_prefix
        limit = self.settings.mqtt_max_payload
        valid: list[StatusReport | ProgressReport] = []
        rejected: list[Rejection] = []
        for m in messages:
            if len(m.payload) > limit:
                rejected.append(Rejection("too_large", f"{len(m.payload)} bytes > {limit}",
                                          m.topic))
                continue
            parsed = parse_message(prefix, m.topic, m.payload)
            if isinstance(parsed, StatusReport | ProgressReport):
                valid.append(parsed)
            else:
                rejected.append(parsed)
        started = time.perf_counter()
        if valid:
            refused = await self._apply(valid, stop)
            if refused is None:
                return  # stopped before the batch was committed: acknowledge nothing
            rejected.extend(refused)
        self.metrics.ingest_batch_seconds.observe(time.perf_counter() - started)
        self.metrics.ingest_batches.inc()
        n_status = sum(1 for v in valid if isinstance(v, StatusReport))
        if n_status:
            self.metrics.ingest_messages.labels("status").inc(n_status)
        if len(valid) > n_status:
            self.metrics.ingest_messages.labels("progress").inc(len(valid) - n_status)
            for v in valid:
                if isinstance(v, ProgressReport):
                    self.metrics.progress.labels(str(v.step)).inc()
        for r in rejected:
            self._reject(r)
        self.applied += len(valid)
        _paho.ack_all(client, messages)

    async def _apply(self, valid: Sequence[StatusReport | ProgressReport],
                     stop: asyncio.Event) -> list[Rejection] | None:
        """Commit these messages, or find the ones the database refuses. None: stopped
        while the database was unavailable (nothing committed)."""
        statuses = [v for v in valid if isinstance(v, StatusReport)]
        progress = [v for v in valid if isinstance(v, ProgressReport)]
        attempt = 0
        while True:
            try:
                return list(await self.sink.apply(statuses, progress))
            except DatabaseUnavailable as exc:
                # not committed, not acknowledged: wait (SIGTERM still stops us) and retry
                self.metrics.ingest_db_retries.inc()
                delay = backoff(attempt, 0.2, 5.0)
                attempt += 1
                log.warning("ingest batch waits for the database", error=str(exc)[:200],
                            messages=len(valid), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return None
            except Exception as exc:
                reason = "db_refused" if isinstance(exc, DataRejected) else "internal_error"
                if len(valid) == 1:
                    if reason == "internal_error":
                        log.exception("ingest could not apply a message", topic=_topic(valid[0]))
                    return [Rejection(reason, str(exc)[:200], _topic(valid[0]))]
                half = len(valid) // 2
                first = await self._apply(valid[:half], stop)
                if first is None:
                    return None
                second = await self._apply(valid[half:], stop)
                return None if second is None else first + second


def _topic(v: StatusReport | ProgressReport) -> str:
    return f"{v.dev_id}/{'status' if isinstance(v, StatusReport) else 'progress'}"
