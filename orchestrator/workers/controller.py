"""The controller: one replica at a time (advisory lock) folds kept counts, opens waves,
applies abort rules, completes campaigns, keeps the event partitions and watches the other
replicas' health; every replica beats its heartbeat and drains the command outbox."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from orchestrator.domain.campaign import RunningCampaign
from orchestrator.domain.pace import STALL_AFTER, Pace, RateMeter, campaign_eta, no_eta
from orchestrator.domain.rollout import COUNT_STATES, Counts, decide, enrol_since
from orchestrator.metrics import Metrics
from orchestrator.ports import (
    CommandPublisher,
    ControllerTx,
    Database,
    DatabaseUnavailable,
    DataRejected,
    PublishFailed,
)
from orchestrator.workers import outbox

log = structlog.get_logger(__name__)

ENROLL_EVERY = 5.0
PACE_EVERY = 2.0         # rate and ETA samples
PARTITIONS_EVERY = 3600.0
BEAT_EVERY = 2.0
STALE_AFTER = 10.0       # a replica silent this long is not listening (its share waits)
ACTOR = "controller"


class Controller:
    def __init__(self, db: Database, publisher: CommandPublisher, metrics: Metrics,
                 interval: float = 0.5, *, owner: str = "controller",
                 ingest_ok: Callable[[], bool] = lambda: True,
                 session_expiry: float = 60.0, event_retention_days: int = 90,
                 max_in_flight: int | None = None) -> None:
        self.db = db
        self.publisher = publisher
        self.metrics = metrics
        self.interval = interval
        self.owner = owner
        self.ingest_ok = ingest_ok
        self.session_expiry = session_expiry
        self.event_retention_days = event_retention_days
        self.max_in_flight = max_in_flight
        self._last_enroll = 0.0
        self._last_partitions = -PARTITIONS_EVERY
        self._last_beat = -BEAT_EVERY
        self._last_pace = 0.0
        # continuous campaigns: (database time of the last pass, monotonic time of the
        # last full pass); lost on failover, so a new leader starts with a full pass
        self._enrolled: dict[int, tuple[dt.datetime, float | None]] = {}
        self._meters: dict[int, RateMeter] = {}
        self.stall_after = STALL_AFTER     # working this long with nothing finished: no ETA
        self._rates: dict[int, float] = {}
        self._checks = RateMeter()

    async def run(self, stop: asyncio.Event) -> None:
        async with self.db.transaction() as tx:
            # this replica may be coming back from a crash: what it missed is our outage
            await tx.mark_gap()
        while not stop.is_set():
            try:
                await self.beat()
                await self.tick()
                await self.drain_outbox()
            except (DatabaseUnavailable, DataRejected, PublishFailed) as exc:
                log.warning("controller tick failed", error=str(exc)[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        with contextlib.suppress(DatabaseUnavailable):
            async with self.db.transaction() as tx:
                await tx.replica_gone(self.owner)
                # a replica leaving is a moment our side may have missed a report: no
                # dispatch timeout overlapping it is charged to a device
                await tx.mark_gap()

    async def beat(self) -> None:
        if time.monotonic() - self._last_beat < BEAT_EVERY:
            return
        async with self.db.transaction() as tx:
            await tx.beat(self.owner, self.ingest_ok(), self.max_in_flight)
        self._last_beat = time.monotonic()

    async def _watch_replicas(self, tx: ControllerTx) -> None:
        """While a replica is silent or its ingest disconnected, its share of device
        messages is not being read: our side is not healthy."""
        forgotten = await tx.forget_replicas(self.session_expiry + STALE_AFTER)
        if forgotten:
            log.warning("replicas gone for good", replicas=forgotten)
        unhealthy = await tx.unhealthy_replicas(STALE_AFTER)
        self.metrics.replicas_unhealthy.set(len(unhealthy))
        if unhealthy or forgotten:
            await tx.mark_gap()

    async def tick(self) -> bool:
        """Returns False when another replica holds the controller lock."""
        async with self.db.transaction() as tx:
            if not await tx.try_controller_lock():
                self.metrics.controller_leader.set(0)
                self.metrics.forget_campaigns(set(), COUNT_STATES)
                return False
            self.metrics.controller_leader.set(1)
            await tx.fold_counts()
            await self._watch_replicas(tx)
            if time.monotonic() - self._last_partitions >= PARTITIONS_EVERY:
                made, dropped = await tx.event_partitions(self.event_retention_days)
                self._last_partitions = time.monotonic()
                if made or dropped:
                    log.info("event partitions", made=made, dropped=dropped)
            enroll_now = time.monotonic() - self._last_enroll >= ENROLL_EVERY
            running = await tx.running_campaigns()
            counted = {c.campaign_id: await self._advance(tx, c.campaign_id, enroll_now)
                       for c in running}
            if enroll_now:
                self._last_enroll = time.monotonic()
            if time.monotonic() - self._last_pace >= PACE_EVERY:
                self._last_pace = time.monotonic()
                await self._measure(tx, running, counted)
            n, lag = await tx.due_backlog()
            self.metrics.due_backlog.set(n)
            self.metrics.claim_lag.set(lag)
            self.metrics.outbox_backlog.set(await tx.outbox_backlog())
        return True

    async def _measure(self, tx: ControllerTx, running: Sequence[RunningCampaign],
                       counted: Mapping[int, Mapping[int, Counts] | None]) -> None:
        """Each running campaign's rate (devices done per minute, sliding window) and ETA,
        kept in its row for the views; the fleet's check rate, for plans; the in-flight
        gauge. Outside its windows a campaign keeps its last rate (nothing is measured).
        ``counted``: the counts by wave this tick's decisions read."""
        now = time.time()
        live = {c.campaign_id for c in running}
        for gone in set(self._meters) - live:
            del self._meters[gone]
        for gone in set(self._enrolled) - live:
            del self._enrolled[gone]
        for gone in set(self._rates) - live:
            del self._rates[gone]
        for c in running:
            by_wave = counted.get(c.campaign_id)
            if by_wave is None:
                continue
            counts = sum(by_wave.values(), Counts())
            meter = self._meters.setdefault(c.campaign_id,
                                            RateMeter(stall_after=self.stall_after))
            meter.add(now, counts.total - counts.open, working=c.schedule.is_open(now))
            measured = meter.per_minute()
            if measured is not None:
                self._rates[c.campaign_id] = measured
            rate = self._rates.get(c.campaign_id)
            note = no_eta(rate, meter.stalled_for(now))
            eta = None if note else campaign_eta(now, by_wave, c.current_wave,
                                                 Pace(rate, c.max_per_minute), c.schedule)
            if counts.open == 0:
                eta, note = now, None
            await tx.set_pace(c.campaign_id, rate, eta, note)
            self.metrics.campaign(
                c.campaign_id, {s: getattr(counts, s) for s in COUNT_STATES}, counts.open,
                counts.total - counts.open, rate, c.schedule.is_open(now),
                None if eta is None else eta - now)
        self.metrics.forget_campaigns(live, COUNT_STATES)
        self._checks.add(now, await tx.checks_total())
        check_rate = self._checks.per_minute()
        if check_rate:
            await tx.set_check_rate(check_rate)
        fleet = await tx.fleet_busy()
        self.metrics.in_flight.set(fleet)

    async def _advance(self, tx: ControllerTx, campaign_id: int,
                       enroll_now: bool) -> dict[int, Counts] | None:
        """Enrol late devices, then take the rules' decision; returns the counts by wave
        the decision read (None: the campaign is gone)."""
        campaign = await tx.get_campaign(campaign_id)
        if campaign is None:
            return None
        if campaign.continuous and enroll_now:
            watermark, last_full = self._enrolled.get(campaign_id, (None, None))
            since = enrol_since(watermark, last_full, time.monotonic())
            started = await tx.db_now()
            n = await tx.enroll_late(campaign, since)
            self._enrolled[campaign_id] = (
                started, time.monotonic() if since is None else last_full)
            if n:
                await tx.event("enrolled", f"{n} late device(s) joined",
                               campaign_id=campaign_id)
                await tx.fold_counts()
        by_wave = await tx.counts_by_wave(campaign_id)
        action = decide(campaign.rules, campaign.current_wave, by_wave)
        if action.kind == "open_wave":
            assert action.wave is not None
            await tx.set_wave(campaign_id, action.wave)
            await tx.event("wave_opened", action.reason, campaign_id=campaign_id, actor=ACTOR)
            log.info("wave opened", campaign=campaign_id, wave=action.wave)
        elif action.kind in ("pause", "abort", "complete"):
            if action.rule is not None:
                self.metrics.rule_actions.labels(action.rule, action.kind).inc()
            await tx.set_status(campaign_id, action.kind, actor=ACTOR, reason=action.reason)
            log.info(f"campaign {action.kind}", campaign=campaign_id, reason=action.reason)
        return by_wave

    async def drain_outbox(self) -> int:
        return await outbox.drain(self.db, self.publisher)
