"""The operator's campaign use cases: create (or plan, writing nothing), read, change the
rules of a live campaign, take a status action, retry devices, read the audit log. Each
is one transaction; the decisions are the domain's, the SQL the store's."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from orchestrator.domain import radio
from orchestrator.domain.campaign import (
    DONE,
    RULE_FIELDS,
    Campaign,
    CampaignConflict,
    CampaignError,
    CampaignInputError,
    CampaignNotFound,
    CampaignSpec,
    Write,
    campaign_policy,
    check_retry,
    check_rule_changes,
    shown,
)
from orchestrator.domain.device import (
    DEFAULT_STATUS_MAX_AGE,
    IN_FLIGHT,
    Policy,
    on_retry,
    on_rules_changed,
)
from orchestrator.domain.pace import Pace, wave_etas
from orchestrator.domain.rollout import canary_size, wave_bounds
from orchestrator.store import campaigns as store
from orchestrator.store import devices, health, members
from orchestrator.store.db import Connection
from orchestrator.usecases.common import iso, iso_datetime


async def get(conn: Connection, campaign_id: int) -> Campaign:
    campaign = await store.get_campaign(conn, campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} not found")
    return campaign


async def find(conn: Connection, campaign_id: int) -> Campaign | None:
    return await store.get_campaign(conn, campaign_id)


async def listing(conn: Connection, status: str | None = None,
                  limit: int = 100) -> list[Campaign]:
    return await store.list_campaigns(conn, status, limit)


async def member_progress(conn: Connection, campaign_id: int, state: str | None,
                          limit: int) -> list[dict[str, Any]]:
    """The campaign's devices as ``ota.device_progress`` shows them (CampaignNotFound for no
    such campaign)."""
    await get(conn, campaign_id)
    return await members.progress(conn, campaign_id, state, limit)


async def waits(conn: Connection, campaign_id: int, limit: int = 5) -> dict[str, Any]:
    """What a running or paused campaign waits on: the devices of its open waves not yet
    finished (``total``), and the ``limit`` it waits for longest, each until when (its next
    check, or its command's deadline) and why; the next wave, or the end, comes after
    them."""
    campaign = await get(conn, campaign_id)
    total, devices = await store.waits(conn, campaign_id, limit)
    last = campaign.current_wave + 1 >= len(campaign.waves)
    return {"campaign_id": campaign_id, "status": campaign.status,
            "wave": campaign.current_wave + 1, "waves": len(campaign.waves),
            "then": "the end" if last else f"wave {campaign.current_wave + 2}",
            "devices": total,
            "longest": [{**d, "until": iso_datetime(d["until"])} for d in devices]}


def describe_waits(w: dict[str, Any]) -> str | None:
    """``waits`` as one line a person reads (None when the campaign waits on nothing)."""
    if w["status"] not in ("running", "paused") or not w["devices"]:
        return None
    longest = "; ".join(
        f"device {d['dev_id']} ({d['state']}"
        + (f", until {d['until'][11:19]} UTC" if d["until"] else "") + ")"
        for d in w["longest"][:3])
    return (f"wave {w['wave']}/{w['waves']} waits on {w['devices']:,} device(s) before "
            f"{w['then']}" + (f"; longest: {longest}" if longest else ""))


def describe_outlook(o: dict[str, Any]) -> str | None:
    """``gate_outlook`` as one line a person reads (None when no device waits for radio)."""
    if not o["waiting"]:
        return None
    hours = ", ".join(("no history" if h["best_hour"] is None else f"{h['best_hour']:02d}:00")
                      + f" ({h['devices']:,})" for h in o["by_best_hour"][:6])
    return f"{o['waiting']:,} device(s) for signal or power; best hours {hours}"


async def gate_outlook(conn: Connection, campaign_id: int, *, cells: bool = True
                      ) -> dict[str, Any]:
    """The campaign's devices waiting for signal or power, by the hour their radio profile
    likes best, and (``cells``) the busiest cells fleet-wide (``ota.gate_outlook``,
    ``ota.cell_load``)."""
    await get(conn, campaign_id)
    rows = await store.gate_outlook(conn, campaign_id)
    return {"campaign_id": campaign_id, "waiting": sum(r["devices"] for r in rows),
            "by_best_hour": [{"best_hour": r["best_hour"], "devices": r["devices"],
                              "pass_probability": None if r["pass_probability"] is None
                              else round(r["pass_probability"], 3),
                              "next_check": iso_datetime(r["next_check"])} for r in rows],
            "cells": await store.cell_load(conn, 10) if cells else []}


async def events(conn: Connection, campaign_id: int, dev_id: int | None = None,
                 after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    return await store.events(conn, campaign_id, dev_id, after, limit)


async def create(conn: Connection, spec: CampaignSpec, *, start: bool = False,
                 actor: str = "cli", allow_empty: bool = False) -> int:
    """Create a campaign and enrol its devices (one transaction)."""
    spec.validate()
    async with conn.transaction():
        await check_listed(conn, spec)
        cid = await store.insert(conn, spec)
        n = await store.enroll_fresh(conn, cid, spec)
        skipped = await store.busy(conn, cid, spec)
        unknown = await store.unknown_module(conn, cid, spec)
        left_out = (f"; {skipped} left out: another running or paused {spec.type} campaign "
                    "is upgrading them") if skipped else ""
        if unknown:
            left_out += (f"; {unknown} left out: their module is not in OneNET's tables (a "
                         "check would be refused, errno 2)")
        if n == 0 and not spec.continuous and not allow_empty:
            raise CampaignError("selector: matches no device to upgrade (none, or all on the "
                                f"target already{left_out}; a --continuous campaign may start "
                                "empty)")
        await store.event(conn, "campaign_created", f"{n} device(s) enrolled{left_out}",
                          campaign_id=cid, actor=actor, to_state="draft",
                          detail={"enrolled": n, "left_out_busy": skipped,
                                  "left_out_unknown_module": unknown})
        if start:
            await store.set_status(conn, cid, "start", actor=actor)
    return cid


async def left_out(conn: Connection, campaign_id: int, spec: CampaignSpec) -> dict[str, int]:
    """Selected devices a campaign left out, by why."""
    return {"in_another_campaign": await store.busy(conn, campaign_id, spec),
            "unknown_module": await store.unknown_module(conn, campaign_id, spec)}


OUTLOOK_SAMPLE = 2_000    # devices a group's gate outlook is read from, at most
SAMPLE = 20_000           # devices of the registry a plan's outlooks read, about


def _outlook_json(outlooks: dict[Any, radio.Outlook] | None, key: Any) -> dict[str, Any]:
    o = outlooks.get(key) if outlooks else None
    if o is None:
        return {}
    return {"gate_outlook": {"sampled": o.devices, "no_history": o.unknown,
                             "never_likely": o.never,
                             "expected_wait_seconds": None if o.expected_wait is None
                             else round(o.expected_wait),
                             "likely_by_hour": [round(h, 3) for h in o.hourly]}}


async def check_listed(conn: Connection, spec: CampaignSpec) -> None:
    """A selector's listed devices must all be registered."""
    if spec.selector.devices is not None:
        absent = await devices.missing(conn, spec.selector.devices)
        if absent:
            shown = ", ".join(str(m) for m in absent[:10])
            raise CampaignError(f"devices: {len(absent)} listed device(s) are not in the "
                                f"registry: {shown}{' ...' if len(absent) > 10 else ''}")


async def plan(conn: Connection, spec: CampaignSpec,
               status_max_age: float = DEFAULT_STATUS_MAX_AGE, *,
               assume_signal: int | None = None, assume_power: int | None = None,
               fleet_cap: int | None = None, radio_period: float = radio.DAY
               ) -> dict[str, Any]:
    """What creating this campaign would do, read in one pass over the selector's devices
    (the enrolment's own selector, nothing written; the waves as the enrolment bounds them,
    by ``rollout.wave_bounds``). ``assume_signal``/``assume_power``: the gate's thresholds
    to count against (the task's are known only at its check). The ETA per wave uses the
    fleet's measured check rate, the rate limit, the caps over the measured time one upgrade
    takes, and the maintenance windows, from now."""
    spec.validate()
    for name, value in (("assume_signal", assume_signal), ("assume_power", assume_power)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not -(2**31) <= value < 2**31):
            raise CampaignInputError(f"{name}: an integer")
    gate_given = assume_signal is not None or assume_power is not None
    await check_listed(conn, spec)
    groups = await store.plan_selection(conn, spec, status_max_age, assume_signal,
                                        assume_power)
    caps = [c for c in (fleet_cap, spec.max_in_flight) if c]
    pace = Pace(await health.check_rate(conn), spec.max_per_minute,
                min(caps) if caps else None, await store.upgrade_seconds(conn))
    kinds = {(g["manuf"], g["model"], g["from_version"]): int(g["devices"])
             for g in groups if g["devices"]}
    total = sum(kinds.values())
    canary = None if spec.canary is None else canary_size(kinds.values(), spec.canary)
    bounds = wave_bounds(total, spec.waves, first_at_least=canary or 0)
    sizes = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    outlooks = None
    if gate_given:
        by_group: dict[tuple[str | None, str | None, str | None], list[list[int] | None]] = {}
        for r in await store.plan_sample(conn, spec, SAMPLE):
            profiles = by_group.setdefault((r["manuf"], r["model"], r["from_version"]), [])
            if len(profiles) < OUTLOOK_SAMPLE:
                profiles.append(r["radio"])
        outlooks = {k: radio.outlook(v, assume_signal if assume_signal is not None
                                     else -2**31, assume_power if assume_power is not None
                                     else -2**31, time.time(), radio_period)
                    for k, v in by_group.items()}
    etas = wave_etas(time.time(), sizes, pace, spec.schedule())
    return {
        "selected": total,
        "left_out": {"on_target": sum(g["on_target"] for g in groups),
                     "in_another_campaign": sum(g["busy"] for g in groups),
                     "unknown_module": sum(g["unknown_module"] for g in groups)},
        "never_reported": sum(g["unreported"] for g in groups),
        "fresh_status": sum(g["fresh"] for g in groups),
        "would_pass_gate": sum(g["would_pass"] for g in groups) if gate_given else None,
        "assumed_gate": {"signal": assume_signal, "power": assume_power}
        if gate_given else None,
        "canary": None if spec.canary is None else {
            "per_group": spec.canary, "groups": len(kinds), "devices": canary},
        "pace": {"check_rate_per_min": pace.measured_per_min,
                 "max_per_minute": pace.max_per_minute, "max_in_flight": pace.cap,
                 "upgrade_seconds": pace.upgrade_seconds, "per_minute": pace.per_minute()},
        "windows": list(spec.windows), "timezone": spec.timezone,
        "waves": [{"wave": w + 1, "percent": spec.waves[w], "devices": n, "eta": iso(eta)}
                  for w, (n, eta) in enumerate(zip(sizes, etas, strict=True))],
        "groups": [{"manuf": k[0], "model": k[1], "from_version": k[2], "devices": n,
                    **_outlook_json(outlooks, k)}
                   for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])],
    }


async def act(conn: Connection, campaign_id: int, action: str, *, actor: str = "cli",
              reason: str | None = None) -> Campaign:
    """A status action (start, pause, resume, cancel): the domain's status machine decides,
    as it does for the controller."""
    return await store.set_status(conn, campaign_id, action, actor=actor, reason=reason)


async def update(conn: Connection, campaign_id: int, changes: dict[str, Any], *,
                 actor: str = "cli", policy: Policy | None = None) -> Campaign:
    """Change a live campaign's rules; an event per change. A new dispatch timeout applies
    to the devices already in flight too (their deadlines follow it); ``policy``: the
    service's (its ``ORCH_DISPATCH_TIMEOUT`` when the campaign's is removed)."""
    checked = check_rule_changes(changes)
    async with conn.transaction():
        current = await store.lock_status(conn, campaign_id)
        if current is None:
            raise CampaignNotFound(f"campaign {campaign_id} not found")
        if current in DONE:
            raise CampaignConflict(f"campaign {campaign_id} is {current}: cannot update")
        before = await get(conn, campaign_id)
        await store.update_rules(conn, campaign_id, checked)
        for key in RULE_FIELDS:
            if key in checked and getattr(before, key) != checked[key]:
                await store.event(conn, "campaign_update",
                                  f"{key}: {shown(getattr(before, key))} -> "
                                  f"{shown(checked[key])}",
                                  campaign_id=campaign_id, actor=actor,
                                  detail={"field": key, "from": getattr(before, key),
                                          "to": checked[key]})
        if "dispatch_timeout" in checked:
            after = await get(conn, campaign_id)
            rules = campaign_policy(policy or Policy(), after.dispatch_timeout,
                                    after.unreachable_after)
            locked = await members.lock(conn, await members.to_retry(
                conn, campaign_id, sorted(IN_FLIGHT), None))
            now = time.time()
            writes = []
            for (cid, dev_id), m in locked.items():
                d = on_rules_changed(m.row, now, rules)
                if d.row != m.row:
                    writes.append(Write(cid, dev_id, m.rev, m.row.state, d.row, d.reason))
            await members.write(conn, writes, actor, locked=True)
    return await get(conn, campaign_id)


async def retry(conn: Connection, campaign_id: int, states: Sequence[str],
                errno: int | None, reason: str, actor: str = "cli") -> int:
    """Give the chosen devices a fresh budget in the same campaign (an event each); a
    completed campaign runs again. Returns how many devices were retried."""
    states, errno, reason = check_retry(list(states), errno, reason)
    async with conn.transaction():
        campaign = await get(conn, campaign_id)
        if campaign.status in ("cancelled", "aborted", "draft"):
            raise CampaignConflict(f"campaign {campaign_id} is {campaign.status}: cannot retry")
        keys = await members.to_retry(conn, campaign_id, states, errno)
        if not keys:
            return 0
        locked = await members.lock(conn, keys)
        now = time.time()
        writes = []
        for key, m in locked.items():
            d = on_retry(m.row, now, reason)
            if d.row != m.row:
                writes.append(Write(key[0], key[1], m.rev, m.row.state, d.row, d.reason))
        if campaign.status == "completed":
            await store.set_status(conn, campaign_id, "retry", actor=actor,
                                   reason=f"{len(writes)} device(s) retried: {reason}")
        return len(await members.write(conn, writes, actor, locked=True))
