"""The controller: one replica at a time (advisory lock) folds kept counts, opens waves,
applies abort rules and completes campaigns; any replica drains the command outbox."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from orchestrator.domain.rollout import decide
from orchestrator.metrics import Metrics
from orchestrator.ports import (
    CommandPublisher,
    Database,
    DatabaseUnavailable,
    DataRejected,
    PublishFailed,
    Tx,
)
from orchestrator.workers import outbox

log = structlog.get_logger(__name__)

ENROLL_EVERY = 5.0
ACTOR = "controller"


class Controller:
    def __init__(self, db: Database, publisher: CommandPublisher, metrics: Metrics,
                 interval: float = 0.5) -> None:
        self.db = db
        self.publisher = publisher
        self.metrics = metrics
        self.interval = interval
        self._last_enroll = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
                await self.drain_outbox()
            except (DatabaseUnavailable, DataRejected, PublishFailed) as exc:
                log.warning("controller tick failed", error=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self) -> bool:
        """Returns False when another replica holds the controller lock."""
        async with self.db.transaction() as tx:
            if not await tx.try_controller_lock():
                return False
            await tx.fold_counts()
            enroll_now = time.monotonic() - self._last_enroll >= ENROLL_EVERY
            for c in await tx.running_campaigns():
                await self._advance(tx, c.campaign_id, enroll_now)
            if enroll_now:
                self._last_enroll = time.monotonic()
            n, lag = await tx.due_backlog()
            self.metrics.due_backlog.set(n)
            self.metrics.claim_lag.set(lag)
        return True

    async def _advance(self, tx: Tx, campaign_id: int, enroll_now: bool) -> None:
        campaign = await tx.get_campaign(campaign_id)
        if campaign is None:
            return
        if campaign.continuous and enroll_now:
            n = await tx.enroll_late(campaign)
            if n:
                await tx.event("enrolled", f"{n} late device(s) joined",
                               campaign_id=campaign_id)
                await tx.fold_counts()
        action = decide(campaign.rules, campaign.current_wave,
                        await tx.counts_by_wave(campaign_id))
        if action.kind == "open_wave":
            assert action.wave is not None
            await tx.set_wave(campaign_id, action.wave)
            await tx.event("wave_opened", action.reason, campaign_id=campaign_id, actor=ACTOR)
            log.info("wave opened", campaign=campaign_id, wave=action.wave)
        elif action.kind in ("pause", "complete"):
            await tx.set_status(campaign_id, action.kind, actor=ACTOR, reason=action.reason)
            log.info(f"campaign {action.kind}", campaign=campaign_id, reason=action.reason)

    async def drain_outbox(self) -> int:
        return await outbox.drain(self.db, self.publisher)
