"""The scheduler: claims due devices in batches (SKIP LOCKED, leased), checks them with
OneNET, applies the domain's decisions, records them with their commands (outbox), then
publishes the commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import secrets
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import structlog

from orchestrator.config import Settings
from orchestrator.domain.campaign import Claimed, RunningCampaign, Write, campaign_policy
from orchestrator.domain.commands import download_url, report_command, upgrade_command
from orchestrator.domain.device import (
    IN_FLIGHT,
    PROBE_REASON,
    WAITING,
    Decision,
    GroupGates,
    Policy,
    on_cell_busy,
    on_check,
    on_claim,
)
from orchestrator.domain.onenet import (
    TYPE_CODES,
    CheckOutcome,
    CheckRequest,
    Failed,
    Retryable,
    local_refusal,
    outcome_errno,
)
from orchestrator.domain.radio import admit_by_cell, cell_cap
from orchestrator.domain.rollout import rate_tokens, slots
from orchestrator.metrics import Metrics
from orchestrator.ports import (
    CheckClient,
    CommandPublisher,
    Database,
    DatabaseUnavailable,
    DataRejected,
    PublishFailed,
    SchedulerTx,
)
from orchestrator.workers import outbox

log = structlog.get_logger(__name__)
IN_FLIGHT_STATES = tuple(sorted(IN_FLIGHT))
WAITING_STATES = tuple(sorted(WAITING))      # pending, gated, and checking left by a crash
# a placeholder until a lane fills the slot (a lane that fails fails the whole batch)
_NOT_CHECKED = Retryable("internal", "not checked")


def policy_from(settings: Settings) -> Policy:
    return settings.policy()


def _group(campaign_id: int, c: Claimed) -> tuple[int, str | None, str | None, str | None]:
    """Devices that share a task in a campaign: its (manufacturer, model, version)."""
    return campaign_id, c.manuf, c.model, c.version


def check_request(c: Claimed, kind: str) -> CheckRequest | Failed:
    """The check for a claimed device, or the local refusal when it cannot be asked."""
    refused = local_refusal(c.manuf, c.model, c.version, kind)
    if refused is not None:
        return refused
    assert c.manuf and c.model and c.version
    return CheckRequest(c.dev_id, c.manuf, c.model, TYPE_CODES[kind], c.version,
                        cdn=True, signals=c.status.signal, powers=c.status.power)


class Scheduler:
    def __init__(self, settings: Settings, db: Database, client: CheckClient,
                 publisher: CommandPublisher, metrics: Metrics, owner: str,
                 policy: Policy | None = None) -> None:
        self.settings = settings
        self.db = db
        self.client = client
        self.publisher = publisher
        self.metrics = metrics
        self.owner = owner
        self.policy = policy or policy_from(settings)
        self.processed = 0
        # the gate each device group's task set, as this replica's checks saw it
        self._gates = GroupGates()

    async def run(self, stop: asyncio.Event, workers: int | None = None) -> None:
        """``workers`` batches at once (default ``ORCH_SCHEDULER_WORKERS``): while one
        waits on the database, another's checks are out."""
        n = self.settings.scheduler_workers if workers is None else workers
        await asyncio.gather(*(self._worker(stop) for _ in range(n)))

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.tick()
            except (DatabaseUnavailable, DataRejected) as exc:
                log.warning("scheduler tick failed", error=str(exc)[:300])
                done = 0
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.scheduler_poll_interval)

    async def tick(self) -> int:
        """One round over the running campaigns; returns how many devices were handled."""
        if self.client.breaker_open():
            self.metrics.breaker_open.set(1)
            return 0
        self.metrics.breaker_open.set(0)
        async with self.db.transaction() as tx:
            campaigns = await tx.running_campaigns()
        live = {c.campaign_id for c in campaigns}
        known = self._gates.known
        if any(k[0] not in live for k in known):
            self._gates.known = {k: v for k, v in known.items() if k[0] in live}
        total = 0
        for campaign in campaigns:
            claimed = await self.db.run(functools.partial(self._claim, c=campaign))
            if claimed:
                # read after the claim: a claim that waited out a stalled database has
                # marked that gap by now, and the devices it found due are judged by it
                async with self.db.transaction() as tx:
                    healthy_since = await tx.gap_end()
                renewer = asyncio.create_task(self._renew(claimed), name="lease-renewal")
                try:
                    await self.process(campaign, claimed, healthy_since)
                finally:
                    renewer.cancel()
                    await asyncio.gather(renewer, return_exceptions=True)
                total += len(claimed)
        return total

    async def _renew(self, claimed: Sequence[Claimed]) -> None:
        """Keep the claim while a slow endpoint holds the batch, so no other replica takes
        (and checks again) the same devices."""
        lease = self.settings.claim_lease
        while True:
            await asyncio.sleep(lease / 3)
            try:
                async with self.db.transaction() as tx:
                    await tx.renew_claims(claimed, self.owner, lease)
            except (DatabaseUnavailable, DataRejected) as exc:
                log.warning("lease renewal failed", error=str(exc)[:200])

    async def _claim(self, tx: SchedulerTx, c: RunningCampaign) -> list[Claimed]:
        """In-flight devices whose time is up come first, always (they hold their slot;
        in-flight devices finish outside windows too). Then waiting devices: only inside
        a maintenance window, under the fleet's and the campaign's in-flight caps (claims
        take turns, so two replicas never exceed them), at the campaign's rate."""
        limit = self.settings.scheduler_batch_size
        lease = self.settings.claim_lease
        claimed = await tx.claim(c.campaign_id, c.current_wave, limit, lease, self.owner,
                                 IN_FLIGHT_STATES)
        want = limit - len(claimed)
        if want <= 0 or not c.schedule.is_open(time.time()):
            return claimed
        fleet_cap = self.settings.max_in_flight
        if fleet_cap is not None or c.max_in_flight is not None:
            await tx.cap_lock()
            fleet, mine = await tx.cap_busy(c.campaign_id)
            want = min(slots(want, fleet_cap, fleet), slots(want, c.max_in_flight, mine))
            if want <= 0:
                self.metrics.cap_waits.inc()
                return claimed
        if c.max_per_minute is None:
            return claimed + await self._admit_cells(tx, c, await tx.claim(
                c.campaign_id, c.current_wave, want, lease, self.owner, WAITING_STATES))
        tokens, elapsed = await tx.take_rate(c.campaign_id)
        tokens = rate_tokens(tokens, c.max_per_minute, elapsed)
        waiting = await tx.claim(c.campaign_id, c.current_wave,
                                 min(want, math.floor(tokens)), lease, self.owner,
                                 WAITING_STATES)
        waiting = await self._admit_cells(tx, c, waiting)
        await tx.put_rate(c.campaign_id, tokens - len(waiting))
        return claimed + waiting

    async def _admit_cells(self, tx: SchedulerTx, c: RunningCampaign,
                           waiting: list[Claimed]) -> list[Claimed]:
        """What their cells admit of these claimed devices: the campaign's (or the fleet's)
        per-cell cap, else the default of the devices' coverage level. The claims take turns
        on the caps' lock (held to commit), so replicas never exceed a cell together; the
        rest go back to wait a few seconds."""
        cap = c.max_per_cell or self.settings.max_per_cell
        levels: dict[str, list[int | None]] = {}
        for w in waiting:
            if w.cell is not None:
                levels.setdefault(w.cell, []).append(w.ce_level)
        if not levels or (cap is None and not any(c is not None for v in levels.values()
                                                  for c in v)):
            return waiting
        await tx.cap_lock()
        busy = await tx.cell_busy(sorted(levels))
        for cell, members_of_cell in levels.items():   # the claim made them checking already
            busy[cell] = busy.get(cell, 0) - len(members_of_cell)
        by_key = {(w.campaign_id, w.dev_id): w for w in waiting}
        admitted, deferred = admit_by_cell(
            [((w.campaign_id, w.dev_id), w.cell, w.ce_level) for w in waiting], busy, cap)
        if deferred:
            now = time.time()
            writes = []
            turned: dict[str, int] = {}
            for key in deferred:
                w = by_key[key]
                assert w.cell is not None
                limit = cell_cap(cap, levels[w.cell]) or 0
                position = turned[w.cell] = turned.get(w.cell, -1) + 1
                d = on_cell_busy(w.row, now, w.cell, limit, limit, position)
                writes.append(Write(w.campaign_id, w.dev_id, w.rev, w.row.state, d.row,
                                    d.reason, event=False))
            await tx.write_members(writes, self.owner)
            self.metrics.cell_waits.inc(len(deferred))
        return [by_key[k] for k in admitted]

    async def check_all(self, reqs: Sequence[CheckRequest | Failed]) -> list[CheckOutcome]:
        """Each request's outcome, in order (a local refusal is its own outcome). As many
        lanes as the client may have calls out (``ORCH_ONENET_CONCURRENCY``), each taking
        the next request when its call returns: a task per lane, not per device (a task
        and a semaphore wait for each of 2,000 devices cost more than the calls' Python)."""
        outcomes: list[CheckOutcome] = [
            r if isinstance(r, Failed) else _NOT_CHECKED for r in reqs]
        calls = [(i, r) for i, r in enumerate(reqs) if not isinstance(r, Failed)]
        todo = iter(calls)

        async def lane() -> None:
            for i, req in todo:          # shared: each request is taken by one lane
                outcomes[i] = await self.client.check(req)

        lanes = min(self.settings.onenet_concurrency, len(calls))
        await asyncio.gather(*(lane() for _ in range(lanes)))
        return outcomes

    async def process(self, campaign: RunningCampaign, claimed: Sequence[Claimed],
                      healthy_since: float | None = None) -> None:
        policy = campaign_policy(self.policy, campaign.dispatch_timeout,
                                 campaign.unreachable_after)
        now = time.time()
        writes: list[Write] = []
        to_check: list[tuple[Claimed, Decision]] = []
        radio_aware = campaign.gating == "radio"
        probing: set[tuple[int, str | None, str | None, str | None]] = set()
        for c in claimed:
            d = on_claim(c.row, now, healthy_since, last_seen=c.last_seen,
                         unreachable_after=policy.unreachable_after)
            if d.reason == "dispatch_timeout_during_our_outage":
                self.metrics.free_rechecks.inc()
            if radio_aware:
                before = d
                d = self._gates.before_check(d, _group(campaign.campaign_id, c), c.status,
                                             c.radio, now, policy, probing)
                if d is not before and d.reason != PROBE_REASON:
                    self.metrics.held.inc()
            if d.row.state == "checking":
                to_check.append((c, d))
            else:
                writes.append(Write(c.campaign_id, c.dev_id, c.rev, c.row.state, d.row,
                                    d.reason, event=d.reason != PROBE_REASON))
        outcomes = await self.check_all([check_request(c, campaign.type)
                                          for c, _ in to_check])
        now = time.time()
        counts: Counter[tuple[int, int]] = Counter()
        commands: list[tuple[int, int, dict[str, Any]]] = []
        # each check's attempt id: 8 random bytes, drawn for the whole batch in one call
        attempts = secrets.token_hex(8 * len(to_check))
        for i, ((c, claimed_decision), outcome) in enumerate(zip(to_check, outcomes,
                                                                   strict=True)):
            errno = outcome_errno(outcome)
            called = not ((isinstance(outcome, Failed) and outcome.local) or
                          (isinstance(outcome, Retryable) and outcome.reason == "breaker_open"))
            if called:
                counts[(c.campaign_id, errno)] += 1
            self._gates.learn(_group(campaign.campaign_id, c), outcome, called)
            d = on_check(claimed_decision.row, outcome, c.status, now, policy,
                         attempt=attempts[16 * i:16 * i + 16],
                         profile=c.radio if campaign.gating == "radio" else None)
            if d.command is not None and d.command.op == "upgrade":
                assert d.row.task is not None
                url = download_url(self.settings.download_url_template, d.row.task,
                                   self.settings.onenet_url)
                commands.append((c.campaign_id, c.dev_id, upgrade_command(
                    c.campaign_id, campaign.type, d.row.task, url, d.row.token_expires_at,
                    d.row.attempt)))
            elif d.command is not None and d.command.op == "report":
                commands.append((c.campaign_id, c.dev_id, report_command()))
            reason = d.reason if claimed_decision.reason == "claimed" else \
                f"{claimed_decision.reason}; {d.reason}"
            writes.append(Write(c.campaign_id, c.dev_id, c.rev, c.row.state, d.row, reason))

        by_errno: Counter[int] = Counter()
        for (_, errno), n in counts.items():
            by_errno[errno] += n
        for errno, n in by_errno.items():
            self.metrics.checks.labels(str(errno)).inc(n)

        async def record(tx: SchedulerTx) -> list[tuple[int, int, str]]:
            written = await tx.write_members(writes, self.owner)
            await tx.count_checks(counts)
            return await tx.enqueue([(dev, payload) for cid, dev, payload in commands
                                     if (cid, dev) in written], outbox.LEASE)

        queued = await self.db.run(record)
        self.processed += len(claimed)
        try:
            await outbox.publish(self.db, self.publisher, queued)
            self.metrics.dispatches.inc(sum(1 for _, _, p in commands if p["op"] == "upgrade"))
        except (PublishFailed, DatabaseUnavailable) as exc:
            # recorded and queued: the controller's drain publishes them when it can
            log.warning("command publish failed; left in the outbox", error=str(exc),
                        devices=len(queued))
