"""The database port's adapter: :class:`PgDatabase` opens transactions on an asyncpg pool
and hands out :class:`PgTx`, whose methods are the store's queries. asyncpg's errors are
classified here, once, into the port's ``DatabaseUnavailable`` (transient: retry later,
acknowledge nothing) and ``DataRejected`` (the content was refused)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg

from orchestrator.domain.campaign import Campaign, Claimed, Member, RunningCampaign, Write
from orchestrator.domain.device import DUE_STATES
from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.progress import Key, Relay
from orchestrator.domain.radio import DAY
from orchestrator.domain.resilience import backoff
from orchestrator.domain.rollout import Counts
from orchestrator.ports import DatabaseUnavailable, DataRejected, Tx
from orchestrator.store import campaigns, counts, devices, health, members, outbox, relays
from orchestrator.store.db import Connection, Pool
from orchestrator.store.queries import q

T = TypeVar("T")

CONTROLLER_LOCK = int.from_bytes(b"ota-ctrl", "big", signed=True)

# SQLSTATE classes and codes that say "not now", not "never": connection exceptions (08),
# insufficient resources (53: too many connections, disk full, out of memory), operator
# intervention (57: admin/crash shutdown, cannot connect now, statement timeout), a
# read-only replica after failover (25006), serialization failure and deadlock (40001,
# 40P01), lock not available (55P03), and system errors (58).
TRANSIENT_CLASSES = frozenset({"08", "53", "57", "58"})
TRANSIENT_CODES = frozenset({"25006", "40001", "40P01", "55P03"})
RETRY_IN_PLACE = frozenset({"40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Would the same statement likely succeed later?"""
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", None) or ""
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError
                      | asyncpg.exceptions.InternalClientError | ConnectionError)


def translate(exc: BaseException) -> BaseException | None:
    """The port's exception for a database error, or None when ``exc`` is not one."""
    if is_transient(exc):
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}"[:300])
    if isinstance(exc, asyncpg.PostgresError):
        return DataRejected(f"{type(exc).__name__}: {exc}"[:300])
    return None


class PgTx:
    """The port ``Tx`` over one asyncpg connection inside a transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def running_campaigns(self) -> list[RunningCampaign]:
        return await campaigns.running(self.conn)

    async def get_campaign(self, campaign_id: int) -> Campaign | None:
        return await campaigns.get_campaign(self.conn, campaign_id)

    async def set_status(self, campaign_id: int, action: str, *, actor: str,
                         reason: str | None = None) -> Campaign:
        return await campaigns.set_status(self.conn, campaign_id, action, actor=actor,
                                          reason=reason)

    async def set_wave(self, campaign_id: int, wave: int) -> None:
        await campaigns.set_wave(self.conn, campaign_id, wave)

    async def enroll_late(self, campaign: Campaign,
                          since: dt.datetime | None = None) -> int:
        return await campaigns.enroll_late(self.conn, campaign, since)

    async def db_now(self) -> dt.datetime:
        return await campaigns.db_now(self.conn)

    async def event(self, kind: str, reason: str, **fields: Any) -> None:
        await campaigns.event(self.conn, kind, reason, **fields)

    async def take_rate(self, campaign_id: int) -> tuple[float, float]:
        return await campaigns.take_rate(self.conn, campaign_id)

    async def put_rate(self, campaign_id: int, tokens: float) -> None:
        await campaigns.put_rate(self.conn, campaign_id, tokens)

    async def claim(self, campaign_id: int, current_wave: int, limit: int, lease: float,
                    owner: str, states: Sequence[str] = DUE_STATES) -> list[Claimed]:
        return await members.claim(self.conn, campaign_id, current_wave, limit, lease, owner,
                                   states)

    async def cap_lock(self) -> None:
        await members.cap_lock(self.conn)

    async def cap_busy(self, campaign_id: int) -> tuple[int, int]:
        return await members.cap_busy(self.conn, campaign_id)

    async def cell_busy(self, cells: Sequence[str]) -> dict[str, int]:
        return await members.cell_busy(self.conn, cells)

    async def fleet_busy(self) -> int:
        return await members.fleet_busy(self.conn)

    async def members_listening(self, dev_ids: Sequence[int]) -> list[Key]:
        return await members.listening(self.conn, dev_ids)

    async def set_pace(self, campaign_id: int, rate_per_min: float | None,
                       eta_at: float | None, eta_note: str | None = None) -> None:
        await campaigns.set_pace(self.conn, campaign_id, rate_per_min, eta_at, eta_note)

    async def checks_total(self) -> int:
        return await health.checks_total(self.conn)

    async def set_check_rate(self, per_minute: float) -> None:
        await health.set_check_rate(self.conn, per_minute)

    async def lock_members(self, keys: Sequence[Key]) -> dict[Key, Member]:
        return await members.lock(self.conn, keys)

    async def write_members(self, writes: Sequence[Write], actor: str, *,
                            locked: bool = False) -> set[Key]:
        return await members.write(self.conn, writes, actor, locked=locked)

    async def members_reaching_target(self, statuses: Sequence[StatusReport]) -> list[Key]:
        return await members.reaching_target(self.conn, statuses)

    async def count_checks(self, by: Counter[Key]) -> None:
        await members.count_checks(self.conn, by)

    async def upsert_status(self, reports: Sequence[StatusReport],
                            period: float = DAY) -> int:
        return await devices.upsert_status(self.conn, reports, period)

    async def known_devices(self, dev_ids: Sequence[int]) -> set[int]:
        return await devices.known(self.conn, dev_ids)

    async def try_controller_lock(self) -> bool:
        return bool(await self.conn.fetchval(q("controller_lock"), CONTROLLER_LOCK))

    async def fold_counts(self) -> None:
        await counts.fold(self.conn)

    async def counts_by_wave(self, campaign_id: int) -> dict[int, Counts]:
        return await counts.by_wave(self.conn, campaign_id)

    async def due_backlog(self) -> tuple[int, float]:
        return await counts.due_backlog(self.conn)

    async def renew_claims(self, claimed: Sequence[Claimed], owner: str,
                           lease: float) -> int:
        return await members.renew(self.conn, claimed, owner, lease)

    async def enqueue(self, commands: Sequence[tuple[int, dict[str, Any]]],
                      seconds: float) -> list[tuple[int, int, str]]:
        return await outbox.enqueue(self.conn, commands, seconds)

    async def lease_outbox(self, limit: int, seconds: float) -> list[tuple[int, int, str]]:
        return await outbox.lease(self.conn, limit, seconds)

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        await outbox.delete(self.conn, ids)

    async def release_outbox(self, ids: Sequence[int]) -> None:
        await outbox.release(self.conn, ids)

    async def outbox_backlog(self) -> int:
        return await outbox.backlog(self.conn)

    async def add_relays(self, items: Sequence[Relay]) -> None:
        await relays.add(self.conn, items)

    async def lease_relays(self, limit: int, seconds: float) -> list[Relay]:
        return await relays.lease(self.conn, limit, seconds)

    async def relays_done(self, ids: Sequence[int]) -> None:
        await relays.done(self.conn, ids)

    async def relays_retry_later(self, ids: Sequence[int], seconds: float) -> None:
        await relays.retry_later(self.conn, ids, seconds)

    async def gap_end(self) -> float:
        return await health.gap_end(self.conn)

    async def mark_gap(self) -> None:
        await health.mark_gap(self.conn)

    async def beat(self, owner: str, ingest_ok: bool,
                   max_in_flight: int | None = None) -> None:
        await health.beat(self.conn, owner, ingest_ok, max_in_flight)

    async def replica_gone(self, owner: str) -> None:
        await health.gone(self.conn, owner)

    async def unhealthy_replicas(self, stale_after: float) -> list[str]:
        return await health.unhealthy(self.conn, stale_after)

    async def forget_replicas(self, silent_for: float) -> list[str]:
        return await health.forget(self.conn, silent_for)

    async def event_partitions(self, keep_days: int) -> tuple[int, int]:
        return await health.event_partitions(self.conn, keep_days)


STALL_AFTER = 5.0   # seconds: a transaction this slow met a stalled database (a lock, I/O)


class PgDatabase:
    """The port ``Database`` over an asyncpg pool. After an outage (a transaction that
    failed as DatabaseUnavailable, or one that took ``STALL_AFTER`` seconds or more: the
    database stalled, and what devices said meanwhile was not recorded) the first
    transaction that succeeds records the end of our gap in ``ota.health``, so no device's
    retry budget pays for it."""

    def __init__(self, pool: Pool, *, retries: int = 8, stall_after: float = STALL_AFTER
                 ) -> None:
        self.pool = pool
        self.retries = retries
        self.stall_after = stall_after
        self.outage = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTx]:
        started = time.monotonic()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield PgTx(conn)
        except Exception as exc:
            ported = translate(exc)
            if ported is None:
                raise
            if isinstance(ported, DatabaseUnavailable):
                self.outage = True
            raise ported from exc
        if time.monotonic() - started >= self.stall_after:
            self.outage = True
        if self.outage:
            await self._end_outage()

    async def _end_outage(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                await health.mark_gap(conn)
            self.outage = False
        except Exception as exc:
            if translate(exc) is None:
                raise

    async def run(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                async with self.transaction() as tx:
                    return await fn(tx)
            except DatabaseUnavailable as exc:
                code = getattr(exc.__cause__, "sqlstate", None)
                if code not in RETRY_IN_PLACE or attempt >= self.retries:
                    raise
                await asyncio.sleep(backoff(attempt, 0.01, 0.5))
                attempt += 1

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except Exception as exc:
            if translate(exc) is None:
                raise
            return False
