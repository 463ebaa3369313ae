"""Campaign rows: creation with set-based enrolment, reads, status changes through the
domain's status machine, and the audit events. Rows become typed values here."""

from __future__ import annotations

import array
import dataclasses
import datetime as dt
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.domain.campaign import (
    DONE,
    RULE_FIELDS,
    Campaign,
    CampaignNotFound,
    CampaignSpec,
    RunningCampaign,
    Selector,
    transition,
)
from orchestrator.domain.commands import cancel_command
from orchestrator.domain.device import IN_FLIGHT, TERMINAL
from orchestrator.domain.rollout import COUNT_STATES, Counts, accept, rate_capacity, wave_bounds
from orchestrator.domain.windows import NEVER, BadWindow, Schedule
from orchestrator.store import counts
from orchestrator.store.db import Connection, Record, picker
from orchestrator.store.queries import q

log = structlog.get_logger(__name__)


def _campaign(row: Record) -> Campaign:
    fields = dict(row.items())
    counts = Counts(**{k: fields.pop(k) for k in COUNT_STATES})
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
                            _schedule(r["campaign_id"], r["windows"], r["timezone"]),
                            r["gating"], r["max_per_cell"])
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
                   eta_at: float | None, eta_note: str | None = None) -> None:
    await conn.execute(q("campaign_set_pace"), campaign_id, rate_per_min,
                       None if eta_at is None else dt.datetime.fromtimestamp(eta_at, dt.UTC),
                       eta_note)


async def event(conn: Connection, kind: str, reason: str, *, campaign_id: int | None = None,
                dev_id: int | None = None, from_state: str | None = None,
                to_state: str | None = None, actor: str = "orchestrator",
                detail: dict[str, Any] | None = None) -> None:
    await conn.execute(q("event_insert"), campaign_id, dev_id, kind, from_state, to_state,
                       reason, actor, detail)


NO_CAMPAIGN = -1     # a plan's selection: no campaign of its own to leave out of "busy"


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


async def insert(conn: Connection, spec: CampaignSpec) -> int:
    """The campaign's row (draft, no devices yet): its id."""
    row = {"name": spec.name, "type": spec.type,
           "target_version": spec.target,
           "selector": spec.selector.to_json(), "waves": list(spec.waves),
           "wave_success_pct": spec.wave_success_pct, "max_per_minute": spec.max_per_minute,
           "abort_failure_pct": spec.abort_failure_pct,
           "abort_min_finished": spec.abort_min_finished, "continuous": spec.continuous,
           "rate_tokens": 0.0 if spec.max_per_minute is None
           else rate_capacity(spec.max_per_minute),
           "abort_action": spec.abort_action, "dispatch_timeout": spec.dispatch_timeout,
           "canary": spec.canary, "unreachable_after": spec.unreachable_after,
           "max_in_flight": spec.max_in_flight, "windows": list(spec.windows),
           "timezone": spec.timezone, "max_per_cell": spec.max_per_cell,
           "gating": spec.gating}
    return int(await conn.fetchval(q("campaign_insert"), row))


async def lock_status(conn: Connection, campaign_id: int) -> str | None:
    """The campaign's status, its row locked to the end of the transaction (None: no such
    campaign)."""
    value = await conn.fetchval(q("campaign_lock_status"), campaign_id)
    return None if value is None else str(value)


async def update_rules(conn: Connection, campaign_id: int, changes: dict[str, Any]) -> None:
    """Set the rules named in ``changes`` (checked by the domain), leave the others."""
    args: list[Any] = [campaign_id]
    for key in RULE_FIELDS:
        args += [key in changes, changes.get(key)]
    await conn.execute(q("campaign_update_rules"), *args)


async def plan_selection(conn: Connection, spec: CampaignSpec, status_max_age: float,
                         signal: int | None, power: int | None) -> list[dict[str, Any]]:
    """The selector's devices by group, as a plan counts them (one pass; nothing written)."""
    floor = -2**31
    args = _selection_args(NO_CAMPAIGN, spec.type, spec.target, spec.selector)
    return [dict(r.items()) for r in await conn.fetch(
        q("plan_selection"), *args, status_max_age, floor if signal is None else signal,
        floor if power is None else power)]


async def plan_sample(conn: Connection, spec: CampaignSpec, about: int
                      ) -> list[dict[str, Any]]:
    """Radio profiles of about ``about`` of the selector's devices (a sample of the
    registry's pages; all of them in a registry that small)."""
    ids = None if spec.selector.devices is None else set(spec.selector.devices)
    if ids is None or len(ids) > about:
        size = int(await conn.fetchval(q("devices_estimate")))
        percent = 100.0 if size <= about else 100.0 * about / size
        sample = {r[0] for r in await conn.fetch(q("devices_sample"), percent)}
        ids = sample if ids is None else ids & sample
    sel = dataclasses.replace(spec.selector, devices=tuple(sorted(ids)))
    args = _selection_args(NO_CAMPAIGN, spec.type, spec.target, sel)
    return [dict(r.items()) for r in await conn.fetch(q("plan_sample"), *args)]


async def upgrade_seconds(conn: Connection) -> float | None:
    """How long one upgrade took lately, dispatch to success (None: none measured)."""
    value = await conn.fetchval(q("plan_upgrade_seconds"))
    return None if value is None else float(value)


async def unknown_module(conn: Connection, campaign_id: int, spec: CampaignSpec) -> int:
    """Selected devices left out because OneNET's tables do not know their module (a check
    would be refused with errno 2)."""
    args = _selection_args(campaign_id, spec.type, spec.target, spec.selector)
    return int(await conn.fetchval(q("plan_unknown_module"), *args))


async def waits(conn: Connection, campaign_id: int, limit: int
                ) -> tuple[int, list[dict[str, Any]]]:
    """How many of the open waves' devices are not finished, and the ``limit`` the campaign
    waits for longest (``ota.campaign_waits``)."""
    rows = await conn.fetch(q("campaign_waits"), campaign_id, limit)
    total = int(rows[0]["total"]) if rows else 0
    return total, [{k: r[k] for k in ("dev_id", "wave", "state", "until", "reason")}
                   for r in rows if r["dev_id"] is not None]


async def gate_outlook(conn: Connection, campaign_id: int) -> list[dict[str, Any]]:
    return [dict(r.items()) for r in await conn.fetch(q("gate_outlook"), campaign_id)]


async def cell_load(conn: Connection, limit: int) -> list[dict[str, Any]]:
    return [dict(r.items()) for r in await conn.fetch(q("cell_load_top"), limit)]


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


REHEARSED = ("dev_id", "h", "manuf", "model", "from_version", "signal", "power", "status_at",
             "last_seen", "radio", "cell", "ce_level")


_RADIO = REHEARSED.index("radio")
_ARRAY_HEADER = 20            # array_send of a one-dimensional array: its header's bytes
_INT2 = 6                     # ... then per value a 4-byte length and 2 bytes, big-endian


def profile_of(sent: bytes | None) -> array.array[int] | None:
    """A radio profile as ``array_send`` sends an ``int2[]``, as an array of 16-bit ints,
    read by slicing in C: decoded as an array by the driver, a million profiles would be
    120 million Python ints. None for none (or an empty one)."""
    if sent is None or len(sent) <= _ARRAY_HEADER:
        return None
    if struct.unpack_from("!i", sent, 4)[0]:          # it holds nulls: value by value
        values, at = [], _ARRAY_HEADER
        while at < len(sent):
            (size,) = struct.unpack_from("!i", sent, at)
            values.append(0 if size < 0 else struct.unpack_from("!h", sent, at + 4)[0])
            at += 4 + max(size, 0)
        return array.array("h", values)
    n = (len(sent) - _ARRAY_HEADER) // _INT2
    raw = bytearray(2 * n)
    high, low = (1, 0) if sys.byteorder == "little" else (0, 1)
    raw[high::2] = sent[_ARRAY_HEADER + 4::_INT2]
    raw[low::2] = sent[_ARRAY_HEADER + 5::_INT2]
    out = array.array("h")
    out.frombytes(raw)
    return out


async def rehearse_selection(conn: Connection, spec: CampaignSpec
                             ) -> AsyncIterator[tuple[Any, ...]]:
    """The devices creating this campaign would enrol, streamed (a cursor: a million rows
    never sit in memory as records), each the columns of ``REHEARSED`` in that order (read
    by name): id, the enrolment's hash, group, last report, radio profile (an array of
    16-bit ints, or None), cell."""
    args = _selection_args(NO_CAMPAIGN, spec.type, spec.target, spec.selector)
    get = None
    async with conn.transaction():
        async for r in conn.cursor(q("rehearse_selection"), *args, prefetch=20_000):
            if get is None:
                get = picker(r, REHEARSED)
            row = get(r)
            yield (*row[:_RADIO], profile_of(row[_RADIO]), *row[_RADIO + 1:])


async def rehearse_history(conn: Connection, kind: str, per_campaign: int,
                           campaigns: int) -> list[dict[str, Any]]:
    """What the newest campaigns of this type tell of each device group (rows of
    ``rehearse_history``)."""
    return [dict(r.items()) for r in await conn.fetch(q("rehearse_history"), kind,
                                                      per_campaign, campaigns)]


async def rehearse_attempts(conn: Connection, kind: str, campaigns: int,
                            per_campaign: int) -> list[dict[str, Any]]:
    """Upgrade commands and failed downloads and installs per device group, from the newest
    campaigns' events (rows of ``rehearse_attempts``)."""
    return [dict(r.items()) for r in await conn.fetch(q("rehearse_attempts"), kind,
                                                      campaigns, per_campaign)]


async def copy_rehearse_selection(conn: Connection, spec: CampaignSpec,
                                  output: Callable[[bytes], Awaitable[None]]) -> None:
    """The rehearsal's selection by COPY (binary) into ``output``: the fastest read of the
    same rows, the raw limit ``bench rehearse`` sets the rehearsal's read beside."""
    args = _selection_args(NO_CAMPAIGN, spec.type, spec.target, spec.selector)
    await conn.copy_from_query(q("rehearse_selection"), *args, output=output, format="binary")
