"""Passing device progress on to OneNET's progress endpoint. Steps wait in ``ota.relays``
(written with the progress itself), are sent by any replica behind the check client's
breaker and concurrency bound, and leave the table once OneNET answered; a step that got no
answer is tried again later (capped backoff), across restarts, and dropped after
``RELAY_GIVE_UP_AFTER`` tries: logged and counted in ``orch_relays_total{outcome="dropped"}``."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from orchestrator.domain.progress import Relay, relay_fate
from orchestrator.domain.resilience import backoff
from orchestrator.metrics import Metrics
from orchestrator.ports import CheckClient, Database, DatabaseUnavailable, DataRejected

log = structlog.get_logger(__name__)

LEASE = 60.0
BATCH = 200


class Relayer:
    def __init__(self, db: Database, client: CheckClient, metrics: Metrics,
                 interval: float = 0.5) -> None:
        self.db = db
        self.client = client
        self.metrics = metrics
        self.interval = interval

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.tick()
            except (DatabaseUnavailable, DataRejected) as exc:
                log.warning("relay tick failed", error=str(exc)[:300])
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self) -> bool:
        """One batch; True when there may be more."""
        if self.client.breaker_open():
            return False
        async with self.db.transaction() as tx:
            due = await tx.lease_relays(BATCH, LEASE)
        if not due:
            return False
        answers = await asyncio.gather(*(self.client.report_progress(r.token, r.dev_id, r.step)
                                         for r in due))
        fates: dict[str, list[Relay]] = {"sent": [], "retried": [], "dropped": []}
        for r, a in zip(due, answers, strict=True):
            if r.id is not None:
                fates[relay_fate(a is not None, r.attempts)].append(r)
        for r in fates["dropped"]:
            log.warning("progress relay dropped: OneNET never answered", dev_id=r.dev_id,
                        step=r.step, tries=r.attempts + 1)
        done = [r.id for r in fates["sent"] + fates["dropped"] if r.id is not None]
        later = fates["retried"]
        async with self.db.transaction() as tx:
            if done:
                await tx.relays_done(done)
            if later:
                delay = backoff(min(r.attempts for r in later), 1.0, 300.0)
                await tx.relays_retry_later([r.id for r in later if r.id is not None], delay)
        for fate, rs in fates.items():
            if rs:
                self.metrics.relays.labels(fate).inc(len(rs))
        return len(due) == BATCH
