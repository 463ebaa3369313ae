"""Command line: ``orchestrator <command>`` (contract section 1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import __version__, runtime
from orchestrator.config import ConfigError, Settings, load_settings
from orchestrator.logging import configure

Handler = Callable[[argparse.Namespace, Settings], int]


class UsageError(Exception):
    """Bad input from the operator: printed as one line, exit 2."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


# --- migrate -------------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.store.migrate import migrate

    applied = asyncio.run(migrate(settings.require_database()))
    if applied:
        for m in applied:
            print(f"applied {m.version:03d}_{m.name}")
    else:
        print("database is up to date")
    return 0


# --- run -----------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.service import run_service

    settings.require_database()
    runtime.run(run_service(settings))
    return 0


# --- bench ---------------------------------------------------------------------------------

def cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.bench import run_bench

    settings.require_database()
    if args.size is not None and args.size < 10:
        raise UsageError("--size: at least 10")
    configure(settings.log_format, "error" if settings.log_level == "info" else
              settings.log_level)
    return run_bench(args.which, settings, args.size)


# --- demo ----------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.demo import run_demo

    if not 1 <= args.devices <= 100_000:
        raise UsageError("--devices: 1 to 100000")
    configure(settings.log_format, "error" if settings.log_level == "info" else
              settings.log_level)
    return int(runtime.run(run_demo(args.devices, settings, seed=args.seed,
                                    timeout=args.timeout)))


# --- device --------------------------------------------------------------------------------

async def _with_conn(settings: Settings, fn: Callable[[Any], Any]) -> Any:
    from orchestrator.store.db import connect

    conn = await connect(settings.require_database())
    try:
        return await fn(conn)
    finally:
        await conn.close()


def cmd_device_import(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.importer import parse_csv
    from orchestrator.store.devices import import_devices

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None
    plan = parse_csv(text)
    for line, message in plan.errors:
        print(f"{path}:{line}: {message}", file=sys.stderr)
    if plan.errors and not args.partial:
        print(f"{len(plan.errors)} bad row(s); nothing imported (--partial imports the "
              "good rows)", file=sys.stderr)
        return 1

    async def go(conn: Any) -> int:
        async with conn.transaction():
            return int(await import_devices(conn, plan.rows))

    count = asyncio.run(_with_conn(settings, go))
    print(f"imported {count} device(s)" + (f", skipped {len(plan.errors)} bad row(s)"
                                            if plan.errors else ""))
    return 0


DEVICE_COLUMNS = ("dev_id", "manuf", "model", "fota_version", "sota_version", "signal", "power",
                  "last_seen")


def cmd_device_list(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.store.devices import list_devices

    devices = asyncio.run(_with_conn(settings, lambda c: list_devices(
        c, manuf=args.manuf, model=args.model, after=args.after, limit=args.limit)))
    rows = [d.to_json() for d in devices]
    if args.json:
        _print_json(rows)
    else:
        print(_table(rows, DEVICE_COLUMNS))
    return 0


def cmd_device_show(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.store.devices import get_device

    device = asyncio.run(_with_conn(settings, lambda c: get_device(c, args.dev_id)))
    if device is None:
        print(f"device {args.dev_id} not found", file=sys.stderr)
        return 1
    data = device.to_json()
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            print(f"{key:14} {'' if value is None else value}")
    return 0


# --- parser --------------------------------------------------------------------------------

def _dev_id(text: str) -> int:
    from orchestrator.domain.payloads import parse_dev_id

    value = parse_dev_id(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive device id")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Fleet firmware upgrades over OneNET OTA.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    parser.add_argument("--config", help="TOML file with the same keys as the ORCH_* variables")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply the SQL migrations")
    p.set_defaults(handler=cmd_migrate)
    p = sub.add_parser("run", help="the service: ingest, scheduler, ops API")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("bench", help="throughput benchmarks beside the raw limits")
    p.add_argument("which", choices=("ingest", "checks", "enroll", "campaign"))
    p.add_argument("--size", type=int, help="messages or devices (default per bench)")
    p.set_defaults(handler=cmd_bench)
    p = sub.add_parser("demo", help="the whole system on this machine, one campaign, a summary")
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up (exit 1) if the campaign has not finished by then")
    p.set_defaults(handler=cmd_demo)

    dev = sub.add_parser("device", help="the device registry").add_subparsers(
        dest="device_command", required=True, metavar="ACTION")
    p = dev.add_parser("import", help="import devices from CSV "
                       "(dev_id,manuf,model,fota_version,sota_version)")
    p.add_argument("file")
    p.add_argument("--partial", action="store_true", help="import good rows despite bad ones")
    p.set_defaults(handler=cmd_device_import)
    p = dev.add_parser("list", help="list devices")
    p.add_argument("--manuf")
    p.add_argument("--model")
    p.add_argument("--after", type=int, default=0, help="page: devices with a larger id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_device_list)
    p = dev.add_parser("show", help="show one device")
    p.add_argument("dev_id", type=_dev_id)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_device_show)

    for register in EXTENSIONS:
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    from orchestrator import cli_campaign, cli_sim

    return [cli_campaign.register, cli_sim.register]


EXTENSIONS = _extensions()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(config_file=args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    try:
        return int(args.handler(args, settings))
    except (ConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from orchestrator.store.campaigns import CampaignError

        if isinstance(exc, CampaignError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        import asyncpg

        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            print(f"error: database: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130
