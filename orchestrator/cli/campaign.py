"""``orchestrator campaign ...``: create, list, show, start, pause, resume, cancel, watch."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.common import LiveView, UsageError, print_json, table, with_conn
from orchestrator.config import Settings
from orchestrator.domain.campaign import (
    DONE,
    RULE_FIELDS,
    STATUSES,
    Campaign,
    CampaignSpec,
    Selector,
    shown,
)
from orchestrator.domain.device import DEFAULT_UNREACHABLE_AFTER, STATES
from orchestrator.domain.payloads import parse_dev_id
from orchestrator.domain.rehearsal import CHECK_SECONDS, RUNS
from orchestrator.domain.rollout import BadRollout, parse_waves
from orchestrator.usecases import campaigns, rehearsals
from orchestrator.usecases.common import Connection


def read_device_file(path: str) -> tuple[int, ...]:
    """Device ids, one per line or in a CSV whose first column (or ``dev_id``) holds them."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--devices {path}: cannot read ({exc})") from None
    ids: list[int] = []
    column = 0
    for n, line in enumerate(lines, 1):
        cells = [c.strip() for c in line.split(",")]
        if n == 1 and "dev_id" in cells:
            column = cells.index("dev_id")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cell = cells[column] if column < len(cells) else ""
        value = parse_dev_id(cell)
        if value is None:
            raise UsageError(f"--devices {path}:{n}: {cell!r} is not a device id")
        ids.append(value)
    if not ids:
        raise UsageError(f"--devices {path}: no device ids")
    return tuple(dict.fromkeys(ids))


def spec_of(args: argparse.Namespace) -> CampaignSpec:
    """The campaign these flags describe (``create`` and ``rehearse`` share them)."""
    try:
        waves = tuple(parse_waves(args.waves))
    except BadRollout as exc:
        raise UsageError(f"--{exc}") from None
    return CampaignSpec(
        name=args.name, type=args.type, target=args.target,
        selector=Selector(args.manuf, args.model, tuple(args.from_version or ()),
                          read_device_file(args.devices) if args.devices else None),
        waves=waves, wave_success_pct=args.wave_success_pct,
        max_per_minute=args.max_per_minute, abort_failure_pct=args.abort_failure_pct,
        abort_min_finished=args.abort_min_finished, continuous=args.continuous,
        abort_action=args.abort_action, all_devices=args.all_devices,
        dispatch_timeout=args.dispatch_timeout, canary=args.canary,
        unreachable_after=args.unreachable_after, max_in_flight=args.max_in_flight,
        max_per_cell=args.max_per_cell, gating=args.gating,
        windows=tuple(args.window or ()), timezone=args.timezone)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    spec = spec_of(args)
    if args.dry_run:
        spec.validate()
        plan = asyncio.run(with_conn(settings, lambda c: campaigns.plan(
            c, spec, settings.status_max_age, assume_signal=args.assume_signal,
            assume_power=args.assume_power, fleet_cap=settings.max_in_flight,
            radio_period=settings.radio_period)))
        if args.json:
            print_json(plan)
        else:
            print_plan(plan, settings.status_max_age)
        return 0
    if args.assume_signal is not None or args.assume_power is not None:
        raise UsageError("--assume-signal/--assume-power: only with --dry-run")

    async def go(conn: Connection) -> tuple[Campaign, dict[str, int]]:
        cid = await campaigns.create(conn, spec, start=args.start)
        return await campaigns.get(conn, cid), await campaigns.left_out(conn, cid, spec)

    campaign, left_out = asyncio.run(with_conn(settings, go))
    print(f"campaign {campaign.campaign_id} {campaign.name!r}: {campaign.counts.total} device(s) "
          f"enrolled, {campaign.status}")
    if left_out["in_another_campaign"]:
        print(f"{left_out['in_another_campaign']} device(s) left out: another running or "
              f"paused {spec.type} campaign is upgrading them")
    if left_out["unknown_module"]:
        print(f"{left_out['unknown_module']} device(s) left out: their module is not in "
              "OneNET's tables (a check would be refused, errno 2)")
    print(campaign.campaign_id)
    return 0


def print_plan(plan: dict[str, Any], max_age: float) -> None:
    out = plan["left_out"]
    print(f"dry run (nothing written): {plan['selected']} device(s) would be enrolled; "
          f"left out: {out['on_target']} on the target already, "
          f"{out['in_another_campaign']} in another running or paused campaign, "
          f"{out['unknown_module']} whose module is not in OneNET's tables")
    print(f"  never reported manufacturer/model/version: {plan['never_reported']}; "
          f"fresh status (< {max_age:g} s): {plan['fresh_status']}")
    if plan["assumed_gate"]:
        gate = plan["assumed_gate"]
        print(f"  would pass a gate of signal > {gate['signal']}, power > {gate['power']} "
              f"today: {plan['would_pass_gate']}")
    if plan["canary"]:
        c = plan["canary"]
        print(f"  canary: {c['per_group']} per group, {c['groups']} group(s), "
              f"{c['devices']} device(s) in wave 1")
    pace = plan["pace"]
    per_min = pace["per_minute"]
    print("  pace: " + (f"{per_min:.1f} devices/min" if per_min else "unknown (no check "
                        "rate measured yet, no rate limit)")
          + f" (measured checks/min: {_num(pace['check_rate_per_min'])}, rate limit: "
            f"{_num(pace['max_per_minute'])}, in-flight cap: {_num(pace['max_in_flight'])}, "
            f"one upgrade: {_num(pace['upgrade_seconds'])} s)")
    if plan["windows"]:
        print(f"  windows: {'; '.join(plan['windows'])} ({plan['timezone']})")
    print(table(plan["waves"], ("wave", "percent", "devices", "eta")))
    print(table(plan["groups"], ("manuf", "model", "from_version", "devices")))
    for g in plan["groups"]:
        o = g.get("gate_outlook")
        if not o:
            continue
        bars = "".join(" ▁▂▃▄▅▆▇█"[min(8, round(8 * h))] for h in o["likely_by_hour"])
        wait = o["expected_wait_seconds"]
        print(f"  gate outlook, {g['model']} on {g['from_version']} ({o['sampled']} sampled):"
              f" likely to pass by hour 00-23 |{bars}|; expected wait "
              + ("-" if wait is None else f"{wait / 60:.0f} min")
              + f"; {o['never_likely']} never likely, {o['no_history']} without history")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(with_conn(settings, lambda c: campaigns.listing(c, args.status,
                                                                       args.limit)))
    data = [c.to_json() for c in rows]
    if args.json:
        print_json(data)
    else:
        print(table(data, ("campaign_id", "name", "status", "type", "target_version", "total",
                            "pending", "in_progress", "succeeded", "failed", "no_task",
                           "cancelled", "unreachable", "rate_per_min", "eta_at")))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    if args.state and not args.devices:
        args.devices = 100        # --state alone means: list them

    async def go(conn: Connection) -> tuple[Campaign | None, list[dict[str, Any]],
                                            dict[str, Any] | None, dict[str, Any] | None]:
        campaign = await campaigns.find(conn, args.id)
        devices = await campaigns.member_progress(conn, args.id, args.state, args.devices) \
            if campaign and args.devices else []
        waits = await campaigns.waits(conn, args.id) if campaign else None
        outlook = await campaigns.gate_outlook(conn, args.id) if campaign else None
        return campaign, devices, waits, outlook

    campaign, devices, waits, outlook = asyncio.run(with_conn(settings, go))
    if campaign is None:
        print(f"campaign {args.id} not found", file=sys.stderr)
        return 1
    data = campaign.to_json()
    if args.json:
        data["waits"] = waits
        data["gate_outlook"] = outlook
        print_json({**data, "devices": devices} if args.devices else data)
        return 0
    data["current_wave"] = f"{campaign.current_wave + 1}/{len(campaign.waves)}"  # as watch
    for key, value in data.items():
        text = json.dumps(value) if isinstance(value, dict | list) else shown(value)
        print(f"{key:20} {text}")
    said = campaigns.describe_waits(waits) if waits else None
    if said:
        print(f"{'waits on':20} {said}")
    radio = campaigns.describe_outlook(outlook) if outlook else None
    if radio:
        print(f"{'waiting for radio':20} {radio}")
    if outlook and outlook["cells"]:
        print(f"{'busiest cells':20} " + ", ".join(
            f"{c['cell']} {c['in_flight']}" + ("" if c["ce_level"] is None
                                                else f" (CE {c['ce_level']})")
            for c in outlook["cells"][:5]) + " in flight")
    if devices:
        print()
        print(table(devices, ("dev_id", "state", "attempts", "last_errno", "last_step",
                               "next_attempt_at", "reason")))
    return 0


def _action(action: str) -> Any:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        campaign = asyncio.run(with_conn(settings, lambda c: campaigns.act(
            c, args.id, action, reason=getattr(args, "reason", None))))
        print(f"campaign {campaign.campaign_id}: {campaign.status}")
        return 0

    return handler


def cmd_update(args: argparse.Namespace, settings: Settings) -> int:
    changes: dict[str, Any] = {k: getattr(args, k, None) for k in RULE_FIELDS
                               if getattr(args, k, None) is not None}
    if args.no_rate_limit:
        changes["max_per_minute"] = None
    if args.no_abort_rule:
        changes["abort_failure_pct"] = None
    if args.default_dispatch_timeout:
        changes["dispatch_timeout"] = None
    if args.no_max_in_flight:
        changes["max_in_flight"] = None
    if args.no_max_per_cell:
        changes["max_per_cell"] = None
    if args.window or args.no_windows:
        changes["windows"] = list(args.window or [])
    if not changes:
        raise UsageError("campaign update: give at least one change (see --help)")
    campaign = asyncio.run(with_conn(settings, lambda c: campaigns.update(
        c, args.id, changes, policy=settings.policy())))
    print(f"campaign {campaign.campaign_id}: " + ", ".join(
        f"{k} {shown(getattr(campaign, k))}" for k in changes))
    return 0


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    n = asyncio.run(with_conn(settings, lambda c: campaigns.retry(
        c, args.id, args.state or ["failed"], args.errno, args.reason or "by the operator")))
    print(f"campaign {args.id}: {n} device(s) retried (failed and unreachable ones with a "
          "fresh budget; in-flight ones checked and commanded again, budget untouched)")
    return 0


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    """The campaign's audit log, oldest first; --follow prints new events as they come."""

    def line(e: dict[str, Any]) -> str:
        who = f"device {e['dev_id']}" if e["dev_id"] else "campaign"
        move = f"{e['from_state'] or ''}->{e['to_state'] or ''}" \
            if e["from_state"] or e["to_state"] else ""
        return (f"{e['at'][:23]}  #{e['event_id']:<8} {who:16} {e['kind']:18} {move:24} "
                f"{e['actor'] or '':10} {e['reason'] or ''}").rstrip()

    async def go(conn: Connection) -> int:
        await campaigns.get(conn, args.id)
        after = 0
        while True:
            batch = await campaigns.events(conn, args.id, args.device, after, 1000)
            for e in batch:
                print(json.dumps(e, default=str) if args.json else line(e), flush=True)
                after = e["event_id"]
            if not args.follow and len(batch) < 1000:
                return 0
            if not batch:
                await asyncio.sleep(1.0)

    return asyncio.run(with_conn(settings, go))


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    view = LiveView(every=args.every)

    async def go(conn: Connection) -> int:
        while True:
            campaign = await campaigns.get(conn, args.id)
            finished = campaign.status in DONE
            waits = campaigns.describe_waits(await campaigns.waits(conn, args.id))
            view.show(campaign, final=finished, waits=waits)
            if finished:
                return 0
            await asyncio.sleep(args.interval)

    return asyncio.run(with_conn(settings, go))


def variants_of(args: argparse.Namespace) -> list[tuple[str, CampaignSpec]]:
    """The campaign the flags describe, then one per ``--compare``: its flags over them."""
    out = [("", spec_of(args))]
    if not args.compare:
        return out
    over = argparse.ArgumentParser(prog="--compare", add_help=False, exit_on_error=False)
    campaign_flags(over, named=False, required=False)
    for text in args.compare:
        try:
            tokens = shlex.split(text)
            parsed, extra = over.parse_known_args(tokens)
        except (ValueError, argparse.ArgumentError) as exc:
            raise UsageError(f"--compare {text!r}: {exc}") from None
        if extra:
            raise UsageError(f"--compare {text!r}: not a campaign's flags: {' '.join(extra)}")
        # the flags it gives (each flag's destination is its name: --from-version,
        # from_version), over the others
        given = {t[2:].split("=", 1)[0].replace("-", "_") for t in tokens
                 if t.startswith("--")}
        merged = argparse.Namespace(**{**vars(args), **{k: getattr(parsed, k)
                                                      for k in given if hasattr(parsed, k)}})
        try:
            out.append((text, spec_of(merged)))
        except UsageError as exc:
            raise UsageError(f"--compare {text!r}: {exc}") from None
    return out


def cmd_rehearse(args: argparse.Namespace, settings: Settings) -> int:
    variants = variants_of(args)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = asyncio.run(with_conn(settings, lambda c: rehearsals.plan_rehearsal(
        c, variants, policy=settings.policy(), fleet_cap=settings.max_in_flight,
        fleet_cell_cap=settings.max_per_cell, batch=settings.scheduler_batch_size,
        poll=settings.scheduler_poll_interval, checks_per_second=args.check_rate,
        concurrency=settings.onenet_concurrency,
        runs=args.runs, seed=args.seed, say=None if args.json else say)))
    if args.json:
        print_json(result)
    else:
        print_rehearsal(result)
    return 0


def _minutes(seconds: float | None) -> str:
    """A duration as people say it: seconds, minutes or hours."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 6 * 3600 else f"{seconds / 3600:.1f} h"


def print_rehearsal(r: dict[str, Any]) -> None:
    print(f"rehearsal (nothing written): {r['selected']:,} device(s) from {r['start']}, "
          f"{r['runs']} run(s) per variant, in {r['rehearsed_in_seconds']} s")
    for a in r["assumptions"]:
        print(f"  assumed: {a}")
    print(table([{"manuf": g["manuf"], "model": g["model"], "from_version": g["from_version"],
                  "devices": g["devices"],
                  "task_share": g["history"]["answers"].get("0", 0.0),
                  "upgrade_s": g["history"]["upgrade_seconds_median"],
                  "fail_dl": g["history"]["download_fail"],
                  "fail_inst": g["history"]["install_fail"],
                  "silent": g["history"]["silent"],
                  "from": "defaults" if g["history"]["assumed"] else "history"}
                 for g in r["groups"]],
                ("manuf", "model", "from_version", "devices", "task_share", "upgrade_s",
                 "fail_dl", "fail_inst", "silent", "from")))
    for v in r["variants"]:
        t = v["time_to_finish"]
        print(f"\n{v['flags'] or 'as given'}: ends in {_minutes(t['median_seconds'])} "
              f"(median; 90th percentile {_minutes(t['p90_seconds'])}), at "
              f"{(t['median_at'] or '-')[:19]}; runs ended "
              + ", ".join(f"{k} {n}" for k, n in v["ended"].items()))
        acts = v["rule_acts"]
        if acts:
            print(f"  the {acts['rule']} rule would {acts['action']} the campaign in wave "
                  f"{acts['wave']} after {_minutes(acts['seconds'])} (in "
                  f"{v['rule_acts_in_runs']}/{r['runs']} runs): {acts['reason']}")
        print("  final: " + ", ".join(f"{k} {n:,}" for k, n in v["counts"].items())
              + f"; never pass the gate: {v['never_pass_gate']:,}; checks: {v['checks']:,}")
        print(table([{"wave": w["wave"], "devices": w["devices"],
                      "opens": _minutes(w["opened"]), "done": _minutes(w["finished"])}
                     for w in v["waves"]], ("wave", "devices", "opens", "done")))


def campaign_flags(p: argparse.ArgumentParser, *, named: bool = True,
                   required: bool = True) -> None:
    """The flags that describe a campaign: ``create``'s and ``rehearse``'s (``named``: a
    name is asked; ``required``: type and target must be given)."""
    if named:
        p.add_argument("--name", required=True)
    p.add_argument("--type", required=required, choices=("fota", "sota"))
    p.add_argument("--target", required=required, help="target version")
    p.add_argument("--manuf", help="only devices of this manufacturer")
    p.add_argument("--model", help="only devices of this module model")
    p.add_argument("--from-version", action="append", metavar="VERSION",
                   help="only devices on this version (repeatable)")
    p.add_argument("--devices", metavar="FILE", help="only these device ids (one per line/CSV)")
    p.add_argument("--waves", default="100", help="cumulative percentages, e.g. 1,10,50,100")
    p.add_argument("--wave-success-pct", type=float, default=0.0,
                   help="success %% a wave needs before the next one opens")
    p.add_argument("--max-per-minute", type=int, help="devices checked per minute at most")
    p.add_argument("--abort-failure-pct", type=float,
                   help="pause when more than this %% of finished devices failed")
    p.add_argument("--abort-min-finished", type=int, default=1,
                   help="... once at least this many have finished")
    p.add_argument("--abort-action", choices=("pause", "abort"), default="pause",
                   help="what the abort rule does: pause (resume accepts the failures so "
                        "far) or abort (status aborted, in-flight devices get cancel)")
    p.add_argument("--continuous", action="store_true",
                   help="devices that register later and match join")
    p.add_argument("--dispatch-timeout", type=float, metavar="SECONDS",
                   help="this campaign's dispatch timeout (default ORCH_DISPATCH_TIMEOUT)")
    p.add_argument("--all-devices", action="store_true",
                   help="required to select the whole registry (no other selector)")
    p.add_argument("--canary", type=int, metavar="N",
                   help="the first wave holds N devices of every (manufacturer, model, "
                        "from-version) group (all of a smaller group)")
    p.add_argument("--unreachable-after", type=float, metavar="SECONDS",
                   default=DEFAULT_UNREACHABLE_AFTER,
                   help="silent this long (no answer to a report request, or nothing heard "
                        "while dispatched): unreachable, not failed (default "
                        f"{DEFAULT_UNREACHABLE_AFTER:g})")
    p.add_argument("--max-in-flight", type=int, metavar="N",
                   help="this campaign's devices checking or in flight at most (the fleet's "
                        "cap is ORCH_MAX_IN_FLIGHT)")
    p.add_argument("--max-per-cell", type=int, metavar="N",
                   help="downloads at once per cell, over every campaign and replica (default: "
                        "50, 10 or 1 by coverage level when devices report ce_level)")
    p.add_argument("--gating", choices=("radio", "interval"), default="radio",
                   help="radio (default): a device that fails the gate is checked when its "
                        "history says it is likely to pass; interval: after the task's")
    p.add_argument("--window", action="append", metavar="'DAYS HH:MM-HH:MM'",
                   help="maintenance window, e.g. 'Mon-Fri 01:00-05:00' (repeatable): devices "
                        "are checked and dispatched only inside one; in-flight ones finish")
    p.add_argument("--timezone", default="UTC", help="IANA zone of the windows "
                                                     "(e.g. Asia/Shanghai; default UTC)")


def register(sub: Any) -> None:
    camp = sub.add_parser("campaign", help="upgrade campaigns").add_subparsers(
        dest="campaign_command", required=True, metavar="ACTION")
    p = camp.add_parser("create", help="create a campaign (prints its id on the last line)")
    campaign_flags(p)
    p.add_argument("--assume-signal", type=int, metavar="N",
                   help="with --dry-run: count devices whose fresh status has signal > N")
    p.add_argument("--assume-power", type=int, metavar="N",
                   help="with --dry-run: ... and power > N")
    p.add_argument("--start", action="store_true", help="start it now")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (devices, left out and why, waves, groups); write "
                        "nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.set_defaults(handler=cmd_create)
    p = camp.add_parser("rehearse", help="play a campaign through in virtual time against a "
                        "model of the fleet, before creating it (nothing written)")
    campaign_flags(p, named=False)
    p.add_argument("--compare", action="append", metavar="'FLAGS'",
                   help="a variant: these flags over the others, rehearsed beside them "
                        "(repeatable), e.g. --compare '--canary 5 --waves 5,100'")
    p.add_argument("--runs", type=int, default=RUNS,
                   help=f"seeded runs per variant (default {RUNS}): the median and the "
                        "90th percentile of the time to finish")
    p.add_argument("--seed", type=int, default=0, help="the first run's seed (default 0)")
    p.add_argument("--check-rate", type=float, metavar="PER_SECOND",
                   help="checks per second the service makes at most (default: "
                        "ORCH_ONENET_CONCURRENCY calls at once of "
                        f"{CHECK_SECONDS * 1000:g} ms each, an assumption)")
    p.add_argument("--json", action="store_true", help="the rehearsal as JSON")
    p.set_defaults(handler=cmd_rehearse, name="rehearsal")
    p = camp.add_parser("list", help="list campaigns")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)
    p = camp.add_parser("show", help="show one campaign")
    p.add_argument("id", type=int)
    p.add_argument("--devices", type=int, default=0, metavar="N",
                   help="also list up to N devices")
    p.add_argument("--state", choices=STATES,
                   help="only devices in this state (lists up to 100 without --devices)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)
    for action in ("start", "pause", "resume", "cancel"):
        p = camp.add_parser(action, help=f"{action} a campaign")
        p.add_argument("id", type=int)
        if action in ("pause", "resume", "cancel"):
            p.add_argument("--reason", help="recorded in the campaign's events")
        p.set_defaults(handler=_action(action))
    p = camp.add_parser("update", help="change a live campaign's rate, wave gate, abort rule")
    p.add_argument("id", type=int)
    p.add_argument("--max-per-minute", type=int)
    p.add_argument("--no-rate-limit", action="store_true")
    p.add_argument("--wave-success-pct", type=float)
    p.add_argument("--abort-failure-pct", type=float)
    p.add_argument("--no-abort-rule", action="store_true")
    p.add_argument("--abort-min-finished", type=int)
    p.add_argument("--abort-action", choices=("pause", "abort"))
    p.add_argument("--dispatch-timeout", type=float, metavar="SECONDS",
                   help="seconds without progress before a dispatched device is re-checked")
    p.add_argument("--default-dispatch-timeout", action="store_true",
                   help="back to ORCH_DISPATCH_TIMEOUT")
    p.add_argument("--unreachable-after", type=float, metavar="SECONDS")
    p.add_argument("--max-in-flight", type=int, metavar="N")
    p.add_argument("--no-max-in-flight", action="store_true")
    p.add_argument("--max-per-cell", type=int, metavar="N")
    p.add_argument("--no-max-per-cell", action="store_true")
    p.add_argument("--gating", choices=("radio", "interval"))
    p.add_argument("--window", action="append", metavar="'DAYS HH:MM-HH:MM'",
                   help="replaces the campaign's windows (repeatable)")
    p.add_argument("--no-windows", action="store_true", help="always open")
    p.add_argument("--timezone")
    p.set_defaults(handler=cmd_update)
    p = camp.add_parser("retry", help="give failed (or unreachable) devices a fresh budget, "
                                      "or check and command in-flight ones again")
    p.add_argument("id", type=int)
    p.add_argument("--state", action="append", metavar="STATE",
                   help="devices in this state: failed, unreachable, dispatched, downloading, "
                        "upgrading (repeatable; default failed)")
    p.add_argument("--errno", type=int, help="only devices whose last errno is this")
    p.add_argument("--reason", help="recorded in each device's event")
    p.set_defaults(handler=cmd_retry)
    p = camp.add_parser("events", help="the campaign's audit log (--follow: as it grows)")
    p.add_argument("id", type=int)
    p.add_argument("--device", type=int, metavar="ID", help="only this device's events")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_events)
    p = camp.add_parser("watch", help="live progress until the campaign ends")
    p.add_argument("id", type=int)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--every", type=float, default=10.0,
                   help="off a terminal: seconds between printed snapshots")
    p.set_defaults(handler=cmd_watch)
