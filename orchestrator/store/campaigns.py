"""Campaign rows: creation with set-based enrolment, reads, status changes through the
domain's status machine, and the audit events. Rows become typed values here."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.domain.campaign import (
    DONE,
    RULE_FIELDS,
    Campaign,
    CampaignConflict,
    CampaignError,
    CampaignInputError,
    CampaignNotFound,
    CampaignSpec,
    RunningCampaign,
    Selector,
    Write,
    check_retry,
    check_rule_changes,
    transition,
)
from orchestrator.domain.commands import cancel_command
from orchestrator.domain.device import IN_FLIGHT, TERMINAL, on_retry
from orchestrator.domain.pace import Pace, wave_etas
from orchestrator.domain.rollout import Counts, accept, canary_size, rate_capacity, wave_bounds
from orchestrator.domain.windows import NEVER, BadWindow, Schedule
from orchestrator.store import counts, devices, health, members
from orchestrator.store.db import Connection, Record
from orchestrator.store.queries import q

log = structlog.get_logger(__name__)
_COUNT_COLS = ("pending", "in_progress", "succeeded", "failed", "no_task", "cancelled",
               "unreachable")


def _campaign(row: Record) -> Campaign:
    fields = dict(row.items())
    counts = Counts(**{k: fields.pop(k) for k in _COUNT_COLS})
    return Campaign(**fields, counts=counts)


async def get_campaign(conn: Connection, campaign_id: int) -> Campaign | None:
    row = await conn.fetchrow(q("campaign_list"), campaign_id, None, 1)
    return _campaign(row) if row else None


async def list_campaigns(conn: Connection, status: str | None = None,
                         limit: int = 100) -> list[Campaign]:
    return [_campaign(r) for r in await conn.fetch(q("campaign_list"), None, status, limit)]


async def running(conn: Connection) -> list[RunningCampaign]:
    return [RunningCampaign(r["campaign_id"], r["type"], r["current_wave"],
                            r["max_per_minute"], r["dispatch_timeout"], r["unreachable_after"],
                            r["max_in_flight"],
                            _schedule(r["campaign_id"], r["windows"], r["timezone"]))
            for r in await conn.fetch(q("campaigns_running"))]


def _schedule(campaign_id: int, windows: list[str], timezone: str) -> Schedule:
    """The campaign's windows; never open if what is stored no longer parses (a time zone
    gone from this machine's tz database, a row edited by hand): better to wait than to
    dispatch outside the operator's windows."""
    try:
        return Schedule.parse(windows, timezone)
    except BadWindow as exc:
        log.error("campaign windows unreadable: nothing is dispatched until fixed",
                  campaign=campaign_id, error=str(exc))
        return NEVER


async def set_pace(conn: Connection, campaign_id: int, rate_per_min: float | None,
                   eta_at: float | None) -> None:
    await conn.execute(q("campaign_set_pace"), campaign_id, rate_per_min,
                       None if eta_at is None else dt.datetime.fromtimestamp(eta_at, dt.UTC))


async def event(conn: Connection, kind: str, reason: str, *, campaign_id: int | None = None,
                dev_id: int | None = None, from_state: str | None = None,
                to_state: str | None = None, actor: str = "orchestrator",
                detail: dict[str, Any] | None = None) -> None:
    await conn.execute(q("event_insert"), campaign_id, dev_id, kind, from_state, to_state,
                       reason, actor, detail)


def _selection_args(campaign_id: int, kind: str, target: str, sel: Selector) -> list[Any]:
    return [campaign_id, sel.manuf, sel.model, list(sel.from_versions),
            None if sel.devices is None else list(sel.devices), target, kind]


async def busy(conn: Connection, campaign_id: int, spec: CampaignSpec) -> int:
    """Selected devices left out: another running or paused campaign of the type has them."""
    args = _selection_args(campaign_id, spec.type, spec.target, spec.selector)
    return int(await conn.fetchval(q("enroll_busy"), *args))


async def enroll_fresh(conn: Connection, campaign_id: int, spec: CampaignSpec) -> int:
    """Enrol a new campaign's devices over its waves, in one set-based statement."""
    args = _selection_args(campaign_id, spec.type, spec.target, spec.selector)
    total = await conn.fetchval(q("enroll_count"), *args)
    if spec.canary is None:
        bounds = wave_bounds(total, spec.waves)
        await conn.execute(q("campaign_set_wave_bounds"), campaign_id, bounds)
        status = await conn.execute(q("enroll_waves"), *args, bounds, len(spec.waves) - 1)
    else:
        canary = int(await conn.fetchval(q("enroll_canary_size"), *args, spec.canary))
        bounds = wave_bounds(total, spec.waves, first_at_least=canary)
        await conn.execute(q("campaign_set_wave_bounds"), campaign_id, bounds)
        status = await conn.execute(q("enroll_waves_canary"), *args, bounds,
                                    len(spec.waves) - 1, spec.canary)
    return int(status.split()[-1])


async def enroll_late(conn: Connection, campaign: Campaign,
                      since: dt.datetime | None = None) -> int:
    """Devices that match a continuous campaign and are not in it yet join its current wave:
    every such device (``since`` None), or only those created after ``since``."""
    args = _selection_args(campaign.campaign_id, campaign.type, campaign.target_version,
                           Selector.from_json(campaign.selector))
    if since is None:
        status = await conn.execute(q("enroll_late"), *args, campaign.current_wave)
    else:
        status = await conn.execute(q("enroll_late_since"), *args, campaign.current_wave,
                                    since)
    return int(status.split()[-1])


async def db_now(conn: Connection) -> dt.datetime:
    """The database's clock (the transaction's start)."""
    value = await conn.fetchval(q("db_now"))
    assert isinstance(value, dt.datetime)
    return value


class _DryRun(Exception):
    """Leaves the dry run's transaction: everything it wrote is rolled back."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__("dry run")
        self.plan = plan


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


async def plan_campaign(conn: Connection, spec: CampaignSpec,
                        status_max_age: float = 900.0, *, assume_signal: int | None = None,
                        assume_power: int | None = None,
                        fleet_cap: int | None = None) -> dict[str, Any]:
    """What creating this campaign would do, from the real enrolment run in a transaction
    that is rolled back: nothing is written. ``assume_signal``/``assume_power``: the gate's
    thresholds to count against (the task's are known only at its check). The ETA per wave
    uses the fleet's measured check rate, the rate limit, the caps over the measured time
    one upgrade takes, and the maintenance windows, from now."""
    for name, value in (("assume_signal", assume_signal), ("assume_power", assume_power)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not -(2**31) <= value < 2**31):
            raise CampaignInputError(f"{name}: an integer")
    gate_given = assume_signal is not None or assume_power is not None
    try:
        async with conn.transaction():
            cid = await create_campaign(conn, spec, actor="dry-run", _check_empty=False)
            args = _selection_args(cid, spec.type, spec.target, spec.selector)
            groups = [dict(r.items()) for r in
                      await conn.fetch(q("plan_groups"), cid, status_max_age,
                                       assume_signal if assume_signal is not None else -2**31,
                                       assume_power if assume_power is not None else -2**31)]
            caps = [c for c in (fleet_cap, spec.max_in_flight) if c]
            pace = Pace(await health.check_rate(conn), spec.max_per_minute,
                        min(caps) if caps else None,
                        await conn.fetchval(q("plan_upgrade_seconds")))
            waves: dict[int, int] = {}
            kinds: dict[tuple[str | None, str | None, str | None], int] = {}
            for g in groups:
                waves[g["wave"]] = waves.get(g["wave"], 0) + g["devices"]
                key = (g["manuf"], g["model"], g["from_version"])
                kinds[key] = kinds.get(key, 0) + g["devices"]
            sizes = [waves.get(w, 0) for w in range(len(spec.waves))]
            etas = wave_etas(time.time(), sizes, pace, spec.schedule())
            plan = {
                "selected": sum(waves.values()),
                "left_out": {"on_target": int(await conn.fetchval(q("plan_on_target"), *args)),
                             "in_another_campaign": await busy(conn, cid, spec)},
                "never_reported": sum(g["unreported"] for g in groups),
                "fresh_status": sum(g["fresh"] for g in groups),
                "would_pass_gate": sum(g["would_pass"] for g in groups) if gate_given else None,
                "assumed_gate": {"signal": assume_signal, "power": assume_power}
                if gate_given else None,
                "canary": None if spec.canary is None else {
                    "per_group": spec.canary, "groups": len(kinds),
                    "devices": canary_size(kinds.values(), spec.canary)},
                "pace": {"check_rate_per_min": pace.measured_per_min,
                         "max_per_minute": pace.max_per_minute, "max_in_flight": pace.cap,
                         "upgrade_seconds": pace.upgrade_seconds,
                         "per_minute": pace.per_minute()},
                "windows": list(spec.windows), "timezone": spec.timezone,
                "waves": [{"wave": w + 1, "percent": spec.waves[w], "devices": n,
                           "eta": _iso(eta)}
                          for w, (n, eta) in enumerate(zip(sizes, etas, strict=True))],
                "groups": [{"manuf": k[0], "model": k[1], "from_version": k[2],
                            "devices": n}
                           for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])],
            }
            raise _DryRun(plan)
    except _DryRun as done:
        return done.plan


async def create_campaign(conn: Connection, spec: CampaignSpec, *, start: bool = False,
                          actor: str = "cli", _check_empty: bool = True) -> int:
    """Create a campaign and enrol its devices (one transaction)."""
    spec.validate()
    async with conn.transaction():
        if spec.selector.devices is not None:
            absent = await devices.missing(conn, spec.selector.devices)
            if absent:
                shown = ", ".join(str(m) for m in absent[:10])
                raise CampaignError(f"devices: {len(absent)} listed device(s) are not in the "
                                    f"registry: {shown}{' ...' if len(absent) > 10 else ''}")
        cid = await conn.fetchval(
            q("campaign_insert"), spec.name, spec.type, spec.target, spec.selector.to_json(),
            list(spec.waves), spec.wave_success_pct, spec.max_per_minute,
            spec.abort_failure_pct, spec.abort_min_finished, spec.continuous,
            0.0 if spec.max_per_minute is None else rate_capacity(spec.max_per_minute),
            spec.abort_action, spec.dispatch_timeout, spec.canary, spec.unreachable_after,
            spec.max_in_flight, list(spec.windows), spec.timezone)
        n = await enroll_fresh(conn, cid, spec)
        skipped = await busy(conn, cid, spec)
        left_out = (f"; {skipped} left out: another running or paused {spec.type} campaign "
                    "is upgrading them") if skipped else ""
        if n == 0 and not spec.continuous and _check_empty:
            raise CampaignError("selector: matches no device to upgrade (none, or all on the "
                                f"target already{left_out}; a --continuous campaign may start "
                                "empty)")
        await event(conn, "campaign_created", f"{n} device(s) enrolled{left_out}",
                    campaign_id=cid, actor=actor, to_state="draft",
                    detail={"enrolled": n, "left_out_busy": skipped})
        if start:
            await set_status(conn, cid, "start", actor=actor)
    return int(cid)


async def set_status(conn: Connection, campaign_id: int, action: str, *, actor: str = "cli",
                     reason: str | None = None) -> Campaign:
    """Take a status action (``TRANSITIONS``: start, pause, resume, cancel, complete,
    abort). Cancel and abort move every open device to ``cancelled`` and queue
    ``{"op": "cancel"}`` for those in flight (outbox, same transaction)."""
    async with conn.transaction():
        current = await conn.fetchval(q("campaign_lock_status"), campaign_id)
        if current is None:
            raise CampaignNotFound(f"campaign {campaign_id} not found")
        new = transition(campaign_id, current, action)
        if reason is None and new in DONE:
            reason = f"{new} by {actor}"     # a finished campaign always says why
        await conn.execute(q("campaign_set_status"), campaign_id, new, reason)
        if action == "resume":
            # the operator's decision: what the rules paused on is accepted; they fire
            # again only on new failures (or a wave gate not yet accepted)
            campaign = await get_campaign(conn, campaign_id)
            assert campaign is not None
            seen = accept(await counts.by_wave(conn, campaign_id), campaign.current_wave)
            await conn.execute(q("campaign_accept_evidence"), campaign_id, seen.failed_base,
                               seen.finished_base, seen.gate_accepted_wave)
        if new in ("cancelled", "aborted"):
            await conn.execute(q("members_cancel_commands"), campaign_id,
                               cancel_command(campaign_id),
                               sorted(IN_FLIGHT))
            await conn.execute(q("members_cancel"), campaign_id, sorted(TERMINAL))
        await event(conn, f"campaign_{action}", reason or f"{action} by {actor}",
                    campaign_id=campaign_id, from_state=current, to_state=new, actor=actor)
    campaign = await get_campaign(conn, campaign_id)
    assert campaign is not None
    return campaign


async def retry(conn: Connection, campaign_id: int, states: Sequence[str],
                errno: int | None, reason: str, actor: str = "cli") -> int:
    """Give the chosen devices a fresh budget in the same campaign (an event each); a
    completed campaign runs again. Returns how many devices were retried."""
    states, errno, reason = check_retry(list(states), errno, reason)
    async with conn.transaction():
        campaign = await get_campaign(conn, campaign_id)
        if campaign is None:
            raise CampaignNotFound(f"campaign {campaign_id} not found")
        rows = await conn.fetch(q("members_to_retry"), campaign_id, list(states), errno)
        if not rows:
            return 0
        locked = await members.lock(conn, [(r["campaign_id"], r["dev_id"]) for r in rows])
        now = time.time()
        writes = []
        for key, m in locked.items():
            d = on_retry(m.row, now, reason)
            if d.row != m.row:
                writes.append(Write(key[0], key[1], m.rev, m.row.state, d.row, d.reason))
        if campaign.status in ("cancelled", "aborted", "draft"):
            raise CampaignConflict(f"campaign {campaign_id} is {campaign.status}: cannot retry")
        if campaign.status == "completed":
            await set_status(conn, campaign_id, "retry", actor=actor,
                             reason=f"{len(writes)} device(s) retried: {reason}")
        return len(await members.write(conn, writes, actor, locked=True))


def _plain(row: Record) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


async def events(conn: Connection, campaign_id: int, dev_id: int | None = None,
                 after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """A campaign's audit events after event id ``after``, oldest first."""
    rows = await conn.fetch(q("events_list"), campaign_id, dev_id, after, limit)
    return [_plain(r) for r in rows]


async def of_device(conn: Connection, dev_id: int) -> list[dict[str, Any]]:
    """The device's campaigns (newest first), its state and last event in each."""
    return [_plain(r) for r in await conn.fetch(q("device_campaigns"), dev_id)]


async def update_rules(conn: Connection, campaign_id: int, changes: dict[str, Any], *,
                       actor: str = "cli") -> Campaign:
    """Change a live campaign's rate, wave gate or abort rule; an event per change."""
    checked = check_rule_changes(changes)
    async with conn.transaction():
        current = await conn.fetchval(q("campaign_lock_status"), campaign_id)
        if current is None:
            raise CampaignNotFound(f"campaign {campaign_id} not found")
        if current in DONE:
            raise CampaignConflict(f"campaign {campaign_id} is {current}: cannot update")
        before = await get_campaign(conn, campaign_id)
        assert before is not None
        args: list[Any] = [campaign_id]
        for key in RULE_FIELDS:
            args += [key in checked, checked.get(key)]
        await conn.execute(q("campaign_update_rules"), *args)
        for key in RULE_FIELDS:
            if key in checked and getattr(before, key) != checked[key]:
                await event(conn, "campaign_update",
                            f"{key}: {getattr(before, key)} -> {checked[key]}",
                            campaign_id=campaign_id, actor=actor,
                            detail={"field": key, "from": getattr(before, key),
                                    "to": checked[key]})
    after = await get_campaign(conn, campaign_id)
    assert after is not None
    return after


async def set_wave(conn: Connection, campaign_id: int, wave: int) -> None:
    await conn.execute(q("campaign_set_wave"), campaign_id, wave)


async def take_rate(conn: Connection, campaign_id: int) -> tuple[float, float]:
    """Lock the campaign's rate bucket: (tokens left, seconds since they were counted)."""
    row = await conn.fetchrow(q("campaign_rate_lock"), campaign_id)
    assert row is not None
    return float(row["rate_tokens"]), float(row["elapsed"])


async def put_rate(conn: Connection, campaign_id: int, tokens: float) -> None:
    await conn.execute(q("campaign_rate_set"), campaign_id, tokens)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a finished campaign amounted to, for the demo's closing lines."""

    failures: list[tuple[str, int]]
    gate_retries: int
    install_retries: int
    checks: list[tuple[int, int]]


async def summary(conn: Connection, campaign_id: int) -> Summary:
    return Summary(
        [(r["reason"].strip(), r["n"])
         for r in await conn.fetch(q("summary_failures"), campaign_id)],
        await conn.fetchval(q("summary_gate_retries"), campaign_id),
        await conn.fetchval(q("summary_install_retries"), campaign_id),
        [(r["errno"], r["calls"]) for r in await conn.fetch(q("summary_checks"), campaign_id)])
