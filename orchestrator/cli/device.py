"""``orchestrator device ...``: import, list, show the registry."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.cli.common import UsageError, print_json, table, with_conn
from orchestrator.config import Settings
from orchestrator.domain.accounts import Issued, parse_ids
from orchestrator.domain.payloads import parse_dev_id
from orchestrator.domain.registry import parse_csv
from orchestrator.usecases import credentials, devices

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

    count = asyncio.run(with_conn(settings, lambda c: devices.import_rows(c, plan.rows)))
    print(f"imported {count} device(s)" + (f", skipped {len(plan.errors)} bad row(s)"
                                            if plan.errors else ""))
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    found = asyncio.run(with_conn(settings, lambda c: devices.listing(
        c, manuf=args.manuf, model=args.model, after=args.after, limit=args.limit)))
    rows = [d.to_json() for d in found]
    if args.json:
        print_json(rows)
    else:
        print(table(rows, DEVICE_COLUMNS))
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    device, memberships = asyncio.run(with_conn(settings, lambda c: devices.show(
        c, args.dev_id)))
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


def _read_ids(args: argparse.Namespace) -> tuple[int, ...] | None:
    """The ids of the command line and of ``--file`` (``-``: stdin), or None for none."""
    ids: list[int] = list(args.dev_ids)
    if args.file is not None:
        name = "stdin" if args.file == "-" else args.file
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(
                encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{name}: cannot read ({exc})") from None
        parsed = parse_ids(text)
        if parsed.errors:
            for line, message in parsed.errors:
                print(f"{name}:{line}: {message}", file=sys.stderr)
            raise UsageError(f"{name}: {len(parsed.errors)} bad line(s); nothing done")
        if not parsed.ids:
            raise UsageError(f"{name}: no device ids in it")
        ids += parsed.ids
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise UsageError(f"devices: given twice: {', '.join(map(str, twice[:10]))}")
    return tuple(ids) if ids else None


class _Secrets:
    """Where the secrets go while the transaction runs: a 0600 file beside the destination
    (or a private temporary file for stdout), published only once it committed."""

    def __init__(self, out: str | None, as_json: bool) -> None:
        self.dest = Path(out) if out else None
        if self.dest is not None and self.dest.exists():
            raise UsageError(f"--out {self.dest}: exists (secrets are never overwritten)")
        directory = self.dest.parent if self.dest else None
        fd, name = tempfile.mkstemp(dir=directory, prefix=".credentials-", suffix=".tmp")
        os.fchmod(fd, 0o600)
        self.path = Path(name)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.json = as_json
        self.n = 0
        self.file.write("[" if as_json else "dev_id,username,password\n")

    def add(self, issued: Sequence[Issued]) -> None:
        if self.json:
            self.file.write("".join(
                ("," if self.n + k else "") + "\n  " + json.dumps(
                    {"dev_id": i.dev_id, "username": i.username, "password": i.secret})
                for k, i in enumerate(issued)))
        else:
            self.file.write("".join(f"{i.dev_id},{i.username},{i.secret}\n" for i in issued))
        self.n += len(issued)

    def publish(self) -> None:
        self.file.write("\n]\n" if self.json else "")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.dest is not None:
            os.link(self.path, self.dest)        # fails rather than overwrite
            self.path.unlink()
        else:
            with open(self.path, encoding="utf-8") as f:
                shutil.copyfileobj(f, sys.stdout)
            sys.stdout.flush()
            self.path.unlink()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


def cmd_credentials(args: argparse.Namespace, settings: Settings) -> int:
    """Broker accounts for many devices at once: the secrets are shown once (CSV or JSON,
    stdout or a 0600 file), stored only hashed in PostgreSQL; ``broker sync`` loads them
    into Mosquitto, EMQX reads them at once."""
    selection = credentials.Selection(_read_ids(args), args.all_registered, args.manuf,
                                      args.model)
    secrets_out = _Secrets(args.out, args.json)
    started = time.monotonic()
    tty = sys.stderr.isatty()

    def progress(done: int) -> None:
        if tty or done % 100_000 < credentials.CHUNK:
            print(f"\r{done:,} account(s) hashed and stored ({time.monotonic() - started:.0f} s)",
                  end="" if tty else "\n", file=sys.stderr, flush=True)

    try:
        outcome = asyncio.run(with_conn(settings, lambda c: credentials.provision(
            c, selection, rotate=args.rotate, sink=secrets_out.add, progress=progress)))
    except BaseException:
        secrets_out.discard()
        raise
    if tty:
        print(file=sys.stderr)
    secrets_out.publish()
    where = f" in {args.out} (0600)" if args.out else " above"
    print(f"{outcome.created} account(s) created, {outcome.rotated} rotated in "
          f"{time.monotonic() - started:.1f} s; the secrets are shown once{where}. Mosquitto: "
          "'orchestrator broker sync' loads them; EMQX reads them at once.", file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    ids = _read_ids(args)
    if ids is None:
        raise UsageError("devices: give ids or --file")
    result = asyncio.run(with_conn(settings, lambda c: credentials.revoke(c, ids)))
    print(f"{len(result.revoked)} account(s) revoked" + (
        f"; {result.without_account} had no active account" if result.without_account
        else "") + ". Mosquitto refuses them after 'orchestrator broker sync'; EMQX at once.")
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
    p = dev.add_parser("credentials", help="create broker accounts for many devices (the "
                       "secrets are shown once); --rotate renews existing ones")
    _id_args(p)
    p.add_argument("--all-registered", action="store_true",
                   help="every registered device (without an account, unless --rotate)")
    p.add_argument("--manuf", help="with --all-registered: only this manufacturer")
    p.add_argument("--model", help="with --all-registered: only this module")
    p.add_argument("--rotate", action="store_true",
                   help="new secrets for devices that have an account (the old stop working)")
    p.add_argument("--out", metavar="FILE", help="write the secrets to this new file (0600) "
                   "instead of stdout")
    p.add_argument("--json", action="store_true", help="a JSON array instead of CSV")
    p.set_defaults(handler=cmd_credentials)
    p = dev.add_parser("revoke", help="revoke devices' broker accounts")
    _id_args(p)
    p.set_defaults(handler=cmd_revoke)


def _id_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dev_ids", nargs="*", type=dev_id_arg, metavar="ID")
    p.add_argument("--file", metavar="FILE", help="ids one a line, or a CSV with a dev_id "
                   "column; - reads stdin")
