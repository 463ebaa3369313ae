"""``orchestrator broker init | sync``: Mosquitto for a fleet, its accounts from PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from orchestrator import runtime
from orchestrator.cli.common import UsageError, with_conn
from orchestrator.config import Settings
from orchestrator.domain.accounts import mosquitto_conf
from orchestrator.usecases import broker


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port")
    return int(text)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """The orchestrator's account in PostgreSQL, a Mosquitto configuration for a fleet and
    the files it reads: one command, then start (or reload) Mosquitto."""
    directory = Path(args.dir).resolve()
    conf = directory / "mosquitto.conf"
    if conf.exists() and not args.force:
        raise UsageError(f"{conf}: exists (--force writes it again and gives the "
                         f"orchestrator's account {args.user!r} a new secret)")
    if args.devices_port == args.orchestrator_port:
        raise UsageError("--port and --orchestrator-port: two listeners, two ports")

    secret = None
    if args.secret_env:
        secret = args.environ.get(args.secret_env, "")
        if len(secret) < 16 or not secret.isascii() or any(c in secret for c in ":@/ "):
            raise UsageError(f"--secret-env {args.secret_env}: that variable must hold the "
                             "account's secret, 16 or more ASCII characters without : @ / "
                             "or space")

    async def go(conn: Any) -> tuple[Any, broker.Synced]:
        issued = await broker.service_account(conn, args.user, rotate=args.force,
                                              secret=secret)
        return issued, await broker.write_files(conn, directory, settings.mqtt_topic_prefix)

    issued, synced = asyncio.run(with_conn(settings, go))
    conf.write_text(mosquitto_conf(str(directory), devices_port=args.devices_port,
                                   orchestrator_port=args.orchestrator_port, bind=args.bind,
                                   data_dir=args.data_dir, run_as=args.broker_user,
                                   log_stdout=args.log_stdout, pid_file=args.broker_pid_file))
    conf.chmod(0o644)
    host = args.bind or settings.mqtt_url.host
    print(f"wrote {conf} and its files ({synced.devices} device account(s)); devices connect "
          f"on port {args.devices_port}, the orchestrator on {args.orchestrator_port}. Its "
          "account's secret is shown once:", file=sys.stderr)
    shown = f"${{{args.secret_env}}}" if args.secret_env else issued.secret
    print(f"ORCH_MQTT_URL=mqtt://{args.user}:{shown}@{host}:{args.orchestrator_port}")
    return 0


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    """Write the broker's files from PostgreSQL and make it reload them; with --watch, again
    whenever accounts change."""
    directory = Path(args.dir)
    pid_file = Path(args.pid_file) if args.pid_file else None
    dsn = settings.require_database()

    def reloaded(synced: broker.Synced) -> None:
        pid = broker.reload(pid_file, args.pid)
        print(f"wrote {synced.devices} device and {synced.orchestrators} orchestrator "
              f"account(s) in {synced.seconds:.2f} s" + (f"; broker {pid} reloads them"
                                                         if pid else ""), flush=True)

    if not args.watch:
        async def once(conn: Any) -> broker.Synced:
            return await broker.write_files(conn, directory, settings.mqtt_topic_prefix)

        synced = asyncio.run(with_conn(settings, once))
        try:
            reloaded(synced)
        except broker.ReloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if pid_file is None and args.pid is None:
            print("no --pid-file or --pid: reload the broker yourself (SIGHUP, or "
                  "'systemctl reload mosquitto')", file=sys.stderr)
        return 0

    async def watch() -> None:
        stop = asyncio.Event()
        runtime.stop_on_signals(stop, "signal received, stopping")
        await broker.watch(dsn, directory, settings.mqtt_topic_prefix,
                           reloaded, stop)

    runtime.run(watch())
    return 0


def register(sub: Any) -> None:
    group = sub.add_parser("broker", help="Mosquitto for a fleet: its configuration and "
                           "accounts").add_subparsers(dest="broker_command", required=True,
                                                      metavar="ACTION")
    p = group.add_parser("init", help="the orchestrator's account, a Mosquitto configuration "
                         "and its files in DIR")
    p.add_argument("--dir", required=True, help="where mosquitto.conf and its files go, e.g. "
                   "/etc/mosquitto/orchestrator")
    p.add_argument("--port", dest="devices_port", type=_port, default=1883,
                   help="the devices' listener (default 1883)")
    p.add_argument("--orchestrator-port", type=_port, default=1884,
                   help="the orchestrator replicas' listener (default 1884)")
    p.add_argument("--bind", help="listen on this address only (default: every address)")
    p.add_argument("--data-dir", help="keep sessions and queued messages here across "
                   "restarts (Mosquitto's persistence)")
    p.add_argument("--broker-user", help="the user Mosquitto runs as when started as root "
                   "(default: its own, mosquitto, which can read the files: they belong to "
                   "its group)")
    p.add_argument("--user", default="orchestrator", help="the orchestrator's account name")
    p.add_argument("--secret-env", metavar="VAR", help="take the account's secret from this "
                   "environment variable instead of making one (compose, Kubernetes)")
    p.add_argument("--log-stdout", action="store_true", help="Mosquitto logs to stdout "
                   "(containers)")
    p.add_argument("--broker-pid-file", metavar="PATH", help="Mosquitto writes its pid here, "
                   "for a 'broker sync' beside it (containers)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(handler=cmd_init)
    p = group.add_parser("sync", help="write the broker's password and ACL files from "
                         "PostgreSQL and make it reload them")
    p.add_argument("--dir", required=True, help="the directory broker init wrote")
    p.add_argument("--pid-file", help="the broker's pid file (Debian: "
                   "/run/mosquitto/mosquitto.pid), signalled to reload")
    p.add_argument("--pid", type=int, help="the broker's pid, signalled to reload")
    p.add_argument("--watch", action="store_true",
                   help="keep running: sync again whenever accounts change")
    p.set_defaults(handler=cmd_sync)
