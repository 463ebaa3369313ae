"""``orchestrator migrate | run | demo | bench``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator import runtime
from orchestrator.cli.common import LiveView, UsageError, print_json, table
from orchestrator.config import Settings
from orchestrator.domain.onenet import ERRNO_ACTION, ERRNO_TEXT
from orchestrator.logs import configure
from orchestrator.mqtt import dynsec
from orchestrator.service import run_service
from orchestrator.store.migrate import migrate
from orchestrator.tools.bench import BENCHES, run_bench
from orchestrator.tools.demo import run_demo


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    applied = asyncio.run(migrate(settings.require_database()))
    if applied:
        for m in applied:
            print(f"applied {m.version:03d}_{m.name}")
    else:
        print("database is up to date")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database()
    runtime.run(run_service(settings))
    return 0


def _quiet(settings: Settings) -> None:
    """Only errors in the log while a progress view or a report owns the terminal."""
    configure(settings.log_format,
              "error" if settings.log_level == "info" else settings.log_level)


def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_database()
    if args.size is not None and args.size < 10:
        raise UsageError("--size: at least 10")
    _quiet(settings)
    return run_bench(args.which, settings, args.size)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.devices <= 100_000:
        raise UsageError("--devices: 1 to 100000")
    _quiet(settings)
    view = LiveView(every=2.0)
    return int(runtime.run(run_demo(args.devices, settings, seed=args.seed,
                                    timeout=args.timeout, show=view.show)))


def cmd_errno(args: argparse.Namespace, settings: Settings) -> int:
    """OneNET's errno codes, what each means, and what the orchestrator does with it."""
    rows = [{"errno": e, "meaning": text, "orchestrator": ERRNO_ACTION.get(e, "")}
            for e, text in sorted(ERRNO_TEXT.items())]
    if args.json:
        print_json(rows)
    else:
        print(table(rows, ("errno", "meaning", "orchestrator")))
    return 0


def cmd_broker_init(args: argparse.Namespace, settings: Settings) -> int:
    """Write the dynamic security plugin's file: the orchestrator's account and role."""
    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path}: exists (--force replaces it, and every account in it)")
    password = dynsec.new_secret()
    path.write_text(json.dumps(dynsec.config(settings.mqtt_topic_prefix, args.user, password),
                               indent=2))
    path.chmod(0o600)
    u = settings.mqtt_url
    print(f"wrote {path}: account {args.user!r} (ingest, commands, device accounts); "
          "the password is shown once:", file=sys.stderr)
    print(f"ORCH_MQTT_URL={u.scheme}://{args.user}:{password}@{u.host}:{u.port}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply the SQL migrations")
    p.set_defaults(handler=cmd_migrate)
    p = sub.add_parser("run", help="the service: ingest, scheduler, ops API")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("bench", help="throughput benchmarks beside the raw limits")
    p.add_argument("which", choices=BENCHES)
    p.add_argument("--size", type=int, help="messages or devices (default per bench)")
    p.set_defaults(handler=cmd_bench)
    p = sub.add_parser("demo", help="the whole system on this machine, one campaign, a summary")
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up (exit 1) if the campaign has not finished by then")
    p.set_defaults(handler=cmd_demo)
    p = sub.add_parser("errno", help="OneNET's errno codes and what the orchestrator does")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_errno)
    broker = sub.add_parser("broker", help="the broker's security set-up").add_subparsers(
        dest="broker_command", required=True, metavar="ACTION")
    p = broker.add_parser("init", help="write Mosquitto's dynamic-security file with the "
                          "orchestrator's account (devices: 'device credentials ID')")
    p.add_argument("file")
    p.add_argument("--user", default="orchestrator")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=cmd_broker_init)
