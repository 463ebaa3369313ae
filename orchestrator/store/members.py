"""Campaign membership: claims of due devices, locked reads, revision-guarded batched
writes of decided rows with their events, and the per-device progress listing."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.domain.campaign import Claimed, Member, Write
from orchestrator.domain.device import DUE_STATES, NON_TERMINAL, DeviceRow, Status
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.progress import Key
from orchestrator.store.db import Connection, Record, picker
from orchestrator.store.queries import q

CAP_LOCK = int.from_bytes(b"ota-caps", "big", signed=True)   # pg_advisory_xact_lock key


MEMBER = ("campaign_id", "dev_id", "rev", "wave", "state", "attempts", "transient_errors",
          "next_attempt_at", "last_errno", "last_step", "last_error", "task",
          "token_expires_at", "dispatched_at", "report_asked_at", "heard_at", "attempt",
          "best_slot", "pass_probability", "type", "target_version", "dispatch_timeout",
          "unreachable_after")
DEVICE = ("manuf", "model", "version", "signal", "power", "status_at", "last_seen", "radio",
          "cell", "ce_level")


def _member(r: Record, rows: dict[tuple[Any, ...], DeviceRow],
            get: Callable[[Record], tuple[Any, ...]]) -> Member:
    """A membership from the columns of members_lock or members_claim, by name (``get``:
    from :func:`picker`). Rows without a task are shared between members whose rows are
    equal (they are immutable): a batch of fresh claims then builds one."""
    (cid, did, rev, wave, state, attempts, te, next_at, errno, step, err, task, tok, disp,
     asked, heard, attempt, best, chance, kind, target, dispatch_timeout,
     unreachable_after) = get(r)
    if task is None:
        key = (state, attempts, te, next_at, errno, step, err, tok, disp, asked, heard,
               attempt, best, chance)
        row = rows.get(key)
        if row is None:
            row = rows[key] = DeviceRow(state, attempts, te, next_at, errno, step, err, None,
                                        tok, disp, asked, heard, attempt, best, chance)
    else:
        row = DeviceRow(state, attempts, te, next_at, errno, step, err, Task.from_json(task),
                        tok, disp, asked, heard, attempt, best, chance)
    return Member(cid, did, rev, wave, row, kind, target, dispatch_timeout, unreachable_after)


async def claim(conn: Connection, campaign_id: int, current_wave: int, limit: int,
                lease: float, owner: str, states: Sequence[str] = DUE_STATES
                ) -> list[Claimed]:
    """Claim up to ``limit`` due devices in ``states`` (SKIP LOCKED) and lease them for
    ``lease`` s."""
    if limit <= 0:
        return []
    rows = await conn.fetch(q("members_claim"), campaign_id, list(states),
                            current_wave, limit, lease, owner)
    if not rows:
        return []
    shared: dict[tuple[Any, ...], DeviceRow] = {}
    member, device = picker(rows[0], MEMBER), picker(rows[0], DEVICE)
    out = []
    for r in rows:
        manuf, model, version, signal, power, status_at, last_seen, profile, cell, ce = \
            device(r)
        out.append(Claimed(_member(r, shared, member), manuf, model, version,
                           Status(signal, power, status_at), last_seen, profile, cell, ce))
    return out


async def cap_lock(conn: Connection) -> None:
    """Take the caps' turn, held to commit: claims under a cap are serialized."""
    await conn.execute(q("cap_lock"), CAP_LOCK)


async def cap_busy(conn: Connection, campaign_id: int) -> tuple[int, int]:
    """Devices being checked or in flight: over the fleet and in this campaign."""
    row = await conn.fetchrow(q("cap_busy"), campaign_id)
    assert row is not None
    return int(row["fleet"]), int(row["campaign"])


async def fleet_busy(conn: Connection) -> int:
    """Devices being checked or in flight over the fleet."""
    row = await conn.fetchrow(q("cap_busy"), None)
    assert row is not None
    return int(row["fleet"])


async def cell_busy(conn: Connection, cells: Sequence[str]) -> dict[str, int]:
    """Devices checking or in flight in each of these cells, fleet-wide."""
    rows = await conn.fetch(q("cell_busy"), list(cells))
    return {r["cell"]: int(r["busy"]) for r in rows}


async def listening(conn: Connection, dev_ids: Sequence[int]) -> list[Key]:
    """These devices' memberships in running or paused campaigns that a status may move:
    unreachable (back in line) and dispatched (a lost command)."""
    rows = await conn.fetch(q("members_listening"), sorted(set(dev_ids)))
    return [(r["campaign_id"], r["dev_id"]) for r in rows]


async def lock(conn: Connection, keys: Sequence[Key]) -> dict[Key, Member]:
    """Lock and read these rows, in key order (concurrent writers never deadlock)."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(q("members_lock"), [k[0] for k in ordered],
                            [k[1] for k in ordered])
    if not rows:
        return {}
    shared: dict[tuple[Any, ...], DeviceRow] = {}
    member = picker(rows[0], MEMBER)
    return {(r["campaign_id"], r["dev_id"]): _member(r, shared, member) for r in rows}


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
        await conn.execute(q("members_lock_keys"), [(w.campaign_id, w.dev_id) for w in ws])
    doc = [
        (w.campaign_id, w.dev_id, w.rev, r.state, r.attempts, r.transient_errors,
         r.next_attempt_at, r.last_errno, r.last_step, r.last_error,
         r.task.to_json() if r.task else None, r.token_expires_at, r.dispatched_at,
         r.report_asked_at, r.heard_at, r.attempt, w.old_state, w.reason if w.event else None,
         r.best_slot, r.pass_probability)
        for w in ws for r in (w.row,)]
    rows = await conn.fetch(q("members_write"), doc, actor)
    return {(r[0], r[1]) for r in rows}


async def reaching_target(conn: Connection, statuses: Sequence[StatusReport]) -> list[Key]:
    """Open memberships whose campaign's target equals a version these statuses report."""
    rows = await conn.fetch(
        q("members_reaching_target"),
        [(s.dev_id, s.fota_version, s.sota_version) for s in statuses], list(NON_TERMINAL))
    return [(r[0], r[1]) for r in rows]


async def to_retry(conn: Connection, campaign_id: int, states: Sequence[str],
                   errno: int | None) -> list[Key]:
    """The campaign's devices in these states (and with this last errno, if given)."""
    rows = await conn.fetch(q("members_to_retry"), campaign_id, list(states), errno)
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
