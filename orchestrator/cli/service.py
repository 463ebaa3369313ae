"""``orchestrator migrate | run | demo | bench``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from orchestrator import runtime
from orchestrator.cli.common import LiveView, UsageError, print_json, table
from orchestrator.config import Settings
from orchestrator.domain.onenet import ERRNO_ACTION, ERRNO_TEXT
from orchestrator.logs import configure
from orchestrator.service import run_service
from orchestrator.tools.bench import BENCHES, run_bench
from orchestrator.tools.demo import run_demo
from orchestrator.usecases.common import migrate


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
                                    timeout=args.timeout, show=view.show,
                                    secure=args.secure)))


def cmd_errno(args: argparse.Namespace, settings: Settings) -> int:
    """OneNET's errno codes, what each means, and what the orchestrator does with it."""
    rows = [{"errno": e, "meaning": text, "orchestrator": ERRNO_ACTION.get(e, "")}
            for e, text in sorted(ERRNO_TEXT.items())]
    if args.json:
        print_json(rows)
    else:
        print(table(rows, ("errno", "meaning", "orchestrator")))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply the SQL migrations")
    p.set_defaults(handler=cmd_migrate)
    p = sub.add_parser("run", help="the service: ingest, scheduler, ops API")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("bench", help="throughput benchmarks beside the raw limits")
    p.add_argument("which", choices=BENCHES)
    p.add_argument("--size", "--devices", type=int, dest="size",
                   help="messages or devices (default per bench)")
    p.set_defaults(handler=cmd_bench)
    p = sub.add_parser("demo", help="the whole system on this machine, one campaign, a summary")
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up (exit 1) if the campaign has not finished by then")
    p.add_argument("--secure", action="store_true",
                   help="a private Mosquitto set up as 'broker init' does, every device on a "
                        "connection and an account of its own (needs mosquitto installed)")
    p.set_defaults(handler=cmd_demo)
    p = sub.add_parser("errno", help="OneNET's errno codes and what the orchestrator does")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_errno)
