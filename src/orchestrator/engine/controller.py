"""The controller: one replica at a time (advisory lock) folds kept counts, opens waves,
applies abort rules and completes campaigns; any replica drains the command outbox."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import structlog

from orchestrator.domain.rollout import decide
from orchestrator.engine import outbox
from orchestrator.engine.outbox import OutboxNotSent
from orchestrator.metrics import Metrics
from orchestrator.mqtt.publisher import Publisher
from orchestrator.store import campaigns as store

log = structlog.get_logger(__name__)

LOCK_KEY = int.from_bytes(b"ota-ctrl", "big", signed=True)
ENROLL_EVERY = 5.0


class Controller:
    def __init__(self, pool: Any, publisher: Publisher, metrics: Metrics,
                 interval: float = 0.5) -> None:
        self.pool = pool
        self.publisher = publisher
        self.metrics = metrics
        self.interval = interval
        self._last_enroll = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
                await self.drain_outbox()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    OutboxNotSent) as exc:
                log.warning("controller tick failed", error=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def tick(self) -> bool:
        """Returns False when another replica holds the controller lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY):
                return False
            await store.fold_counts(conn)
            rows = await conn.fetch(
                "SELECT campaign_id FROM ota.campaigns WHERE status = 'running'"
                " ORDER BY campaign_id")
            enroll_now = time.monotonic() - self._last_enroll >= ENROLL_EVERY
            for r in rows:
                await self._advance(conn, r["campaign_id"], enroll_now)
            if enroll_now:
                self._last_enroll = time.monotonic()
            backlog = await conn.fetchrow(
                """SELECT count(*) AS n, coalesce(max(lag), 0) AS lag FROM (
                       SELECT extract(epoch FROM now() - cd.next_attempt_at)::float8 AS lag
                       FROM ota.campaign_devices cd JOIN ota.campaigns c USING (campaign_id)
                       WHERE c.status = 'running' AND cd.next_attempt_at <= now()
                         AND cd.state = ANY($1) AND cd.wave <= c.current_wave
                       LIMIT 10000) x""", store.NON_TERMINAL)
            self.metrics.due_backlog.set(backlog["n"])
            self.metrics.claim_lag.set(backlog["lag"])
        return True

    async def _advance(self, conn: Any, campaign_id: int, enroll_now: bool) -> None:
        campaign = await store.get_campaign(conn, campaign_id)
        if campaign is None:
            return
        if campaign.continuous and enroll_now:
            n = await store.enroll(conn, campaign_id, campaign.type, campaign.target_version,
                                   store.Selector.from_json(campaign.selector), None,
                                   wave=campaign.current_wave)
            if n:
                await store.event(conn, "enrolled", f"{n} late device(s) joined",
                                  campaign_id=campaign_id)
                await store.fold_counts(conn)
        action = decide(campaign.rules, campaign.current_wave,
                        await store.counts_by_wave(conn, campaign_id))
        if action.kind == "open_wave":
            await conn.execute(
                "UPDATE ota.campaigns SET current_wave = $2, updated_at = now()"
                " WHERE campaign_id = $1", campaign_id, action.wave)
            await store.event(conn, "wave_opened", action.reason, campaign_id=campaign_id)
            log.info("wave opened", campaign=campaign_id, wave=action.wave)
        elif action.kind == "pause":
            await conn.execute(
                "UPDATE ota.campaigns SET status = 'paused', status_reason = $2,"
                " updated_at = now() WHERE campaign_id = $1", campaign_id, action.reason)
            await store.event(conn, "campaign_paused", action.reason, campaign_id=campaign_id,
                              from_state="running", to_state="paused")
            log.warning("campaign paused", campaign=campaign_id, reason=action.reason)
        elif action.kind == "complete":
            await conn.execute(
                "UPDATE ota.campaigns SET status = 'completed', status_reason = $2,"
                " finished_at = now(), updated_at = now() WHERE campaign_id = $1",
                campaign_id, action.reason)
            await store.event(conn, "campaign_completed", action.reason,
                              campaign_id=campaign_id, from_state="running",
                              to_state="completed")
            log.info("campaign completed", campaign=campaign_id)

    async def drain_outbox(self) -> int:
        return await outbox.drain(self.pool, self.publisher)
