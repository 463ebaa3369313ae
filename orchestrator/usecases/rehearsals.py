"""Rehearse a campaign before creating it: its devices read as the enrolment would read
them (nothing written), each (manufacturer, model, from-version) group modelled from the
newest campaigns' ended members, then the domain's rehearsal played several seeded times
for each variant of the rules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.domain.campaign import (
    CampaignError,
    CampaignInputError,
    CampaignSpec,
    campaign_policy,
)
from orchestrator.domain.device import Policy
from orchestrator.domain.onenet import Task
from orchestrator.domain.radio import informed
from orchestrator.domain.rehearsal import (
    CHECK_SECONDS,
    DEFAULT_TASK,
    DEFAULT_UPGRADE_SECONDS,
    MAX_CHECK_RATE,
    MAX_RUNS,
    RUNS,
    Device,
    GroupModel,
    History,
    Setup,
    Summary,
    model_group,
    rehearse,
    summarize,
)
from orchestrator.domain.rollout import Rules, assign_waves
from orchestrator.store import campaigns as store
from orchestrator.store.db import Connection
from orchestrator.usecases.campaigns import check_listed
from orchestrator.usecases.common import iso

HISTORY_CAMPAIGNS = 5          # the newest campaigns of the type a group's model reads
HISTORY_PER_CAMPAIGN = 100_000  # ... at most this many ended members of each
HISTORY_EVENTS_PER_CAMPAIGN = 300_000   # ... and this many of its command and step events
Say = Callable[[str], None]

Key = tuple[str | None, str | None, str | None]


def rules_of(spec: CampaignSpec) -> Rules:
    """The rules a campaign made from ``spec`` runs by (a continuous one is rehearsed for
    the devices it would enrol now: it ends when they do)."""
    return Rules(tuple(spec.waves), spec.wave_success_pct, spec.abort_failure_pct,
                 spec.abort_min_finished, False,
                 "abort" if spec.abort_action == "abort" else "pause")


def setup_of(spec: CampaignSpec, policy: Policy, *, fleet_cap: int | None,
             fleet_cell_cap: int | None, batch: int, poll: float,
             checks_per_second: float) -> Setup:
    caps = [c for c in (fleet_cap, spec.max_in_flight) if c]
    return Setup(
        rules_of(spec), spec.type,
        campaign_policy(policy, spec.dispatch_timeout, spec.unreachable_after),
        spec.schedule(), spec.max_per_minute, min(caps) if caps else None,
        spec.max_per_cell or fleet_cell_cap, spec.gating == "radio", checks_per_second,
        batch, poll)


async def models(conn: Connection, kind: str) -> dict[Key, GroupModel]:
    """Each group's model from the newest campaigns of ``kind``."""
    out: dict[Key, GroupModel] = {}
    attempts = {(a["manuf"], a["model"], a["from_version"]): a
                for a in await store.rehearse_attempts(conn, kind, HISTORY_CAMPAIGNS,
                                                       HISTORY_EVENTS_PER_CAMPAIGN)}
    for r in await store.rehearse_history(conn, kind, HISTORY_PER_CAMPAIGN, HISTORY_CAMPAIGNS):
        key = (r["manuf"], r["model"], r["from_version"])
        a = attempts.get(key, {})
        h = History(int(r["members"]), int(r["tasked"]), int(r["no_task"]),
                    tuple(r["refused"]), int(r["transient"]), int(r["commanded"]),
                    int(r["silent"]), int(r["download_failed"]), int(r["install_failed"]),
                    None if r["task"] is None else Task.from_json(r["task"]),
                    tuple(float(s) for s in r["upgrade_seconds"]),
                    int(a.get("commands", 0)), int(a.get("download_failed", 0)),
                    int(a.get("install_failed", 0)))
        out[key] = model_group(key, h)
    return out


async def selection(conn: Connection, spec: CampaignSpec, now: float,
                    silent_after: float, say: Say | None = None
                    ) -> tuple[list[Key], list[tuple[int, int, int, tuple[Any, ...]]]]:
    """The devices the enrolment would take: the groups, and per device (id, its hash, its
    group's index, what the rehearsal models it by)."""
    keys: dict[Key, int] = {}
    rows: list[tuple[int, int, int, tuple[Any, ...]]] = []
    async for r in store.rehearse_selection(conn, spec):
        (dev_id, h, manuf, model, from_version, signal, power, status_at, last_seen, radio,
         cell, ce_level) = r             # store.REHEARSED's columns
        key = (manuf, model, from_version)
        g = keys.get(key)
        if g is None:
            g = keys[key] = len(keys)
        rows.append((dev_id, h, g, (
            signal, power, status_at, last_seen is not None and last_seen > now - silent_after,
            # a profile that says nothing yet is none (as the service reads it)
            radio if radio and informed(radio) else None, cell, ce_level)))
        if say is not None and len(rows) % 250_000 == 0:
            say(f"  read {len(rows):,} devices")
    return list(keys), rows


def _group_json(key: Key, devices: int, m: GroupModel) -> dict[str, Any]:
    return {"manuf": key[0], "model": key[1], "from_version": key[2], "devices": devices,
            "history": {"answers": {str(e): round(s, 4) for e, s in m.answers},
                      "transient": round(m.transient, 4),
                      "task": {"signal": m.task.signal, "power": m.task.power,
                               "retry": m.task.retry, "interval": m.task.interval},
                      "upgrade_seconds_median": round(sorted(m.upgrade_seconds)[
                          len(m.upgrade_seconds) // 2], 1),
                      "download_fail": round(m.download_fail, 4),
                      "install_fail": round(m.install_fail, 4),
                      "silent": round(m.silent, 4), "assumed": list(m.assumed)}}


def _variant_json(flags: str, s: Summary, start: float, keys: Sequence[Key]
                  ) -> dict[str, Any]:
    def at(seconds: float | None) -> str | None:
        return None if seconds is None else iso(start + seconds)

    return {
        "flags": flags, "runs": s.runs, "ended": s.ended,
        "time_to_finish": {"median_seconds": _round(s.median_seconds),
                           "p90_seconds": _round(s.p90_seconds),
                           "median_at": at(s.median_seconds), "p90_at": at(s.p90_seconds)},
        "counts": s.counts,
        "waves": [{**w, "opened": _round(w["opened"]), "finished": _round(w["finished"]),
                   "opened_at": at(w["opened"]), "finished_at": at(w["finished"])}
                  for w in s.waves],
        "rule_acts": s.tripped and {**s.tripped, "seconds": _round(s.tripped["seconds"]),
                                    "at": at(s.tripped["seconds"])},
        "rule_acts_in_runs": s.trip_runs,
        "never_pass_gate": s.never_pass, "checks": s.checks, "events": s.events,
        "by_group": [{"manuf": k[0], "model": k[1], "from_version": k[2], **c}
                     for k, c in zip(keys, s.by_group, strict=True)],
    }


def _round(x: Any) -> Any:
    return None if x is None else round(float(x), 1)


async def plan_rehearsal(conn: Connection, variants: Sequence[tuple[str, CampaignSpec]], *,
                         policy: Policy, fleet_cap: int | None = None,
                         fleet_cell_cap: int | None = None, batch: int = 2000,
                         poll: float = 0.5, checks_per_second: float | None = None,
                         concurrency: int = 64,
                         runs: int = RUNS, seed: int = 0, start: float | None = None,
                         say: Say | None = None) -> dict[str, Any]:
    """Rehearse each variant (its flags as given, its spec) ``runs`` times from ``start``
    (default now). The variants share the first's selector: they differ in their rules.
    ``checks_per_second``: the service's check throughput (None: ``concurrency`` calls at
    once of ``CHECK_SECONDS`` each, an assumption said in the result)."""
    if not variants:
        raise CampaignInputError("rehearse: no campaign given")
    if not 1 <= runs <= MAX_RUNS:
        raise CampaignInputError(f"runs: 1..{MAX_RUNS}")
    if checks_per_second is not None and not 0 < checks_per_second <= MAX_CHECK_RATE:
        raise CampaignInputError(f"check_rate: above 0, at most {MAX_CHECK_RATE:g} a second")
    first = variants[0][1]
    for flags, spec in variants:
        spec.validate()
        if (spec.selector, spec.type, spec.target) != (first.selector, first.type,
                                                        first.target):
            raise CampaignInputError(f"compare {flags!r}: variants differ in their rules, not in "
                                "the devices (selector, type and target are the first's)")
    await check_listed(conn, first)
    started = time.perf_counter()
    now = float(round(time.time())) if start is None else start
    by_key = await models(conn, first.type)
    modelled = time.perf_counter()
    keys, rows = await selection(conn, first, now, policy.unreachable_after, say)
    read = time.perf_counter()
    if not rows:
        raise CampaignError("selector: matches no device to upgrade (none, or all on the "
                            "target already, in another campaign, or of a module OneNET's "
                            "tables do not know): nothing to rehearse")
    groups = [by_key.get(k) or model_group(k, None) for k in keys]
    sizes = [0] * len(keys)
    for _, _, g, _ in rows:
        sizes[g] += 1
    assumptions = []
    if checks_per_second is None:
        checks_per_second = concurrency / CHECK_SECONDS
        assumptions.append(f"the service checks {checks_per_second:g} devices/s at most: "
                           f"{concurrency} calls at once (ORCH_ONENET_CONCURRENCY) of "
                           f"{CHECK_SECONDS * 1000:g} ms each (--check-rate to say)")
    assumed = [k for k, m in zip(keys, groups, strict=True) if m.assumed]
    if assumed:
        assumptions.append(
            f"{len(assumed)} of {len(keys)} group(s) have no history of their own: every "
            f"check finds a task (signal > {DEFAULT_TASK.signal}, power > "
            f"{DEFAULT_TASK.power}, retry {DEFAULT_TASK.retry}, interval "
            f"{DEFAULT_TASK.interval} s), an upgrade takes {DEFAULT_UPGRADE_SECONDS:g} s, "
            "none fails or goes silent")
    hashes = {d: h for d, h, _, _ in rows}
    out_variants = []
    played_s = 0.0
    for flags, spec in variants:
        waves = assign_waves([(d, g) for d, _, g, _ in rows], spec.waves, spec.canary,
                             order=hashes.__getitem__)
        devices = [Device(d, waves[d], g, *m) for d, _, g, m in rows]
        setup = setup_of(spec, policy, fleet_cap=fleet_cap, fleet_cell_cap=fleet_cell_cap,
                         batch=batch, poll=poll, checks_per_second=checks_per_second)
        played = []
        for n in range(runs):
            t = time.perf_counter()
            played.append(rehearse(devices, groups, setup, now, seed + n))
            played_s += time.perf_counter() - t
            if say is not None:
                r = played[-1]
                say(f"  {flags or 'as given'}: run {n + 1}/{runs} ended {r.ended} after "
                    + ("-" if r.seconds is None else f"{r.seconds / 60:.1f} min"))
        out_variants.append(_variant_json(flags, summarize(played), now, keys))
    return {
        "selected": len(rows), "start": iso(now), "runs": runs, "seed": seed,
        "assumptions": assumptions,
        "groups": [_group_json(k, n, m) for k, n, m in zip(keys, sizes, groups, strict=True)],
        "variants": out_variants,
        "rehearsed_in_seconds": round(time.perf_counter() - started, 2),
        "seconds": {"history": round(modelled - started, 2), "read": round(read - modelled, 2),
                    "play": round(played_s, 2)},
    }
