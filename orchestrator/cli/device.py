"""``orchestrator device ...``: import, list, show the registry."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from orchestrator.cli.common import UsageError, print_json, table, with_conn
from orchestrator.config import Settings
from orchestrator.domain.payloads import parse_dev_id
from orchestrator.domain.registry import parse_csv
from orchestrator.mqtt import dynsec
from orchestrator.store.campaigns import of_device
from orchestrator.store.db import Connection
from orchestrator.store.devices import Device, get_device, import_devices, list_devices

DEVICE_COLUMNS = ("dev_id", "manuf", "model", "fota_version", "sota_version", "signal", "power",
                  "last_seen")


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
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

    async def go(conn: Connection) -> int:
        async with conn.transaction():
            return await import_devices(conn, plan.rows)

    count = asyncio.run(with_conn(settings, go))
    print(f"imported {count} device(s)" + (f", skipped {len(plan.errors)} bad row(s)"
                                            if plan.errors else ""))
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    devices = asyncio.run(with_conn(settings, lambda c: list_devices(
        c, manuf=args.manuf, model=args.model, after=args.after, limit=args.limit)))
    rows = [d.to_json() for d in devices]
    if args.json:
        print_json(rows)
    else:
        print(table(rows, DEVICE_COLUMNS))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async def go(conn: Connection) -> tuple[Device | None, list[dict[str, Any]]]:
        return await get_device(conn, args.dev_id), await of_device(conn, args.dev_id)

    device, memberships = asyncio.run(with_conn(settings, go))
    if device is None:
        print(f"device {args.dev_id} not found", file=sys.stderr)
        return 1
    data = device.to_json()
    if args.json:
        print_json({**data, "campaigns": memberships})
    else:
        for key, value in data.items():
            print(f"{key:14} {'' if value is None else value}")
        if memberships:
            print()
            print(table(memberships, ("campaign_id", "name", "status", "state", "attempts",
                                      "last_event_at", "last_event")))
    return 0


def cmd_credentials(args: argparse.Namespace, settings: Settings) -> int:
    """Create device ID's broker account (or rotate its secret); the secret is shown once."""
    if not settings.mqtt_url.username:
        raise UsageError("ORCH_MQTT_URL: needs the orchestrator's broker account "
                         "(mqtt://USER:PASSWORD@host:port; see 'orchestrator broker init')")
    try:
        secret, created = asyncio.run(dynsec.set_device_secret(
            settings.mqtt_url, settings.mqtt_topic_prefix, args.dev_id))
    except dynsec.DynsecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json({"dev_id": args.dev_id, "username": str(args.dev_id), "password": secret,
                    "created": created})
    else:
        print(f"device {args.dev_id}: broker account {'created' if created else 'rotated'};"
              " the secret is shown once:", file=sys.stderr)
        print(f"username {args.dev_id}")
        print(f"password {secret}")
    return 0


def dev_id_arg(text: str) -> int:
    value = parse_dev_id(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive device id")
    return value


def register(sub: Any) -> None:
    dev = sub.add_parser("device", help="the device registry").add_subparsers(
        dest="device_command", required=True, metavar="ACTION")
    p = dev.add_parser("import", help="import devices from CSV "
                       "(dev_id,manuf,model,fota_version,sota_version)")
    p.add_argument("file")
    p.add_argument("--partial", action="store_true", help="import good rows despite bad ones")
    p.set_defaults(handler=cmd_import)
    p = dev.add_parser("list", help="list devices")
    p.add_argument("--manuf")
    p.add_argument("--model")
    p.add_argument("--after", type=int, default=0, help="page: devices with a larger id")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)
    p = dev.add_parser("show", help="show one device")
    p.add_argument("dev_id", type=dev_id_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)
    p = dev.add_parser("credentials", help="create or rotate the device's broker account "
                       "(its secret is shown once)")
    p.add_argument("dev_id", type=dev_id_arg)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_credentials)
