"""Campaign membership: claims of due devices, locked reads, revision-guarded batched
writes of decided rows with their events, and the per-device progress listing."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from orchestrator.domain.campaign import Claimed, Member, Write
from orchestrator.domain.device import DUE_STATES, NON_TERMINAL, DeviceRow, Status
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.progress import Key
from orchestrator.store.db import Connection, Record
from orchestrator.store.queries import q

CAP_LOCK = int.from_bytes(b"ota-caps", "big", signed=True)   # pg_advisory_xact_lock key


def _ts(value: dt.datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def device_row(r: Record) -> DeviceRow:
    task = r["task"]
    return DeviceRow(
        state=r["state"], attempts=r["attempts"], transient_errors=r["transient_errors"],
        next_attempt_at=_ts(r["next_attempt_at"]), last_errno=r["last_errno"],
        last_step=r["last_step"], last_error=r["last_error"],
        task=Task.from_json(task) if task else None,
        token_expires_at=_ts(r["token_expires_at"]), dispatched_at=_ts(r["dispatched_at"]),
        report_asked_at=_ts(r["report_asked_at"]), heard_at=_ts(r["heard_at"]),
        attempt=r["attempt"])


def _member(r: Record) -> Member:
    return Member(r["campaign_id"], r["dev_id"], r["rev"], r["wave"], device_row(r),
                  r["type"], r["target_version"], r["dispatch_timeout"],
                  r["unreachable_after"])


async def claim(conn: Connection, campaign_id: int, current_wave: int, limit: int,
                lease: float, owner: str, states: Sequence[str] = DUE_STATES
                ) -> list[Claimed]:
    """Claim up to ``limit`` due devices in ``states`` (SKIP LOCKED) and lease them for
    ``lease`` s."""
    if limit <= 0:
        return []
    rows = await conn.fetch(q("members_claim"), campaign_id, list(states),
                            current_wave, limit, lease, owner)
    return [Claimed(_member(r), r["manuf"], r["model"],
                    r["fota_version"] if r["type"] == "fota" else r["sota_version"],
                    Status(r["signal"], r["power"], _ts(r["status_at"])), _ts(r["last_seen"]))
            for r in rows]


async def cap_lock(conn: Connection) -> None:
    """Take the caps' turn, held to commit: claims under a cap are serialized."""
    await conn.execute(q("cap_lock"), CAP_LOCK)


async def cap_busy(conn: Connection, campaign_id: int) -> tuple[int, int]:
    """Devices being checked or in flight: over the fleet and in this campaign."""
    row = await conn.fetchrow(q("cap_busy"), campaign_id)
    assert row is not None
    return int(row["fleet"]), int(row["campaign"])


async def unreachable_of(conn: Connection, dev_ids: Sequence[int]) -> list[Key]:
    """These devices' unreachable memberships in running or paused campaigns."""
    rows = await conn.fetch(q("members_unreachable"), sorted(set(dev_ids)))
    return [(r["campaign_id"], r["dev_id"]) for r in rows]


async def lock(conn: Connection, keys: Sequence[Key]) -> dict[Key, Member]:
    """Lock and read these rows, in key order (concurrent writers never deadlock)."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(q("members_lock"), [k[0] for k in ordered],
                            [k[1] for k in ordered])
    return {(r["campaign_id"], r["dev_id"]): _member(r) for r in rows}


async def write(conn: Connection, writes: Sequence[Write], actor: str, *,
                locked: bool = False) -> set[Key]:
    """Write decisions whose row is unchanged since read (same rev) and append their
    events. Rows are locked in key order first, unless this transaction already holds
    them (``locked``, after ``lock``). Returns the keys written."""
    if not writes:
        return set()
    ws = sorted(writes, key=lambda w: (w.campaign_id, w.dev_id))
    if not locked:
        # rows are not returned by execute(): only the locks are wanted
        await conn.execute(q("members_lock_keys"),
                           orjson.dumps([(w.campaign_id, w.dev_id) for w in ws]).decode())
    doc = orjson.dumps([
        (w.campaign_id, w.dev_id, w.rev, r.state, r.attempts, r.transient_errors,
         r.next_attempt_at, r.last_errno, r.last_step, r.last_error,
         r.task.to_json() if r.task else None, r.token_expires_at, r.dispatched_at,
         r.report_asked_at, r.heard_at, r.attempt, w.old_state, w.reason if w.event else None)
        for w in ws for r in (w.row,)])
    rows = await conn.fetch(q("members_write"), doc.decode(), actor)
    return {(r[0], r[1]) for r in rows}


async def reaching_target(conn: Connection, statuses: Sequence[StatusReport]) -> list[Key]:
    """Open memberships whose campaign's target equals a version these statuses report."""
    rows = await conn.fetch(
        q("members_reaching_target"), [s.dev_id for s in statuses],
        [s.fota_version for s in statuses], [s.sota_version for s in statuses],
        list(NON_TERMINAL))
    return [(r["campaign_id"], r["dev_id"]) for r in rows]


async def count_checks(conn: Connection, counts: Counter[Key]) -> None:
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(q("check_counts_add"), [k[0] for k in keys], [k[1] for k in keys],
                       [counts[k] for k in keys])


async def progress(conn: Connection, campaign_id: int, state: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(q("members_progress"), campaign_id, state, limit)
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()}
            for r in rows]


async def renew(conn: Connection, claimed: Sequence[Claimed], owner: str, lease: float) -> int:
    """Extend the lease of claimed rows this owner still holds unchanged."""
    status = await conn.execute(q("members_renew"), [c.campaign_id for c in claimed],
                                [c.dev_id for c in claimed], owner, lease,
                                [c.rev for c in claimed])
    return int(status.split()[-1])
