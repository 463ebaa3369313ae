"""``orchestrator simulate onenet``: the OneNET OTA simulator as a standalone server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

from orchestrator import runtime
from orchestrator.cli.common import UsageError
from orchestrator.config import Settings
from orchestrator.domain.accounts import parse_credentials
from orchestrator.domain.catalogue import UnknownModule, resolve
from orchestrator.domain.versions import is_valid_version
from orchestrator.sim import fast
from orchestrator.sim.fleet import (
    BadMix,
    Fleet,
    FleetConfig,
    make_devices,
    parse_mix,
    parse_patterns,
)
from orchestrator.sim.onenet import Simulator, serve
from orchestrator.sim.scenario import Faults, Scenario, ScenarioError, load_scenario


def cmd_simulate_onenet(args: argparse.Namespace, settings: Settings) -> int:
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    changes: dict[str, Any] = {}
    if args.product_id:
        changes["product_id"] = args.product_id
    if args.access_key:
        changes["access_key"] = args.access_key
    if args.no_auth:
        changes["auth"] = False
    if args.auto_register:
        changes["auto_register"] = True
    if args.ip_port:
        changes["ip_port"] = args.ip_port
    scenario = dataclasses.replace(scenario, **changes)
    sim = Simulator(scenario)
    f = scenario.faults
    faults = Faults(
        args.errno7_rate if args.errno7_rate is not None else f.errno7_rate,
        args.latency_ms if args.latency_ms is not None else f.latency_ms,
        args.drop_rate if args.drop_rate is not None else f.drop_rate, f.seed)
    sim.set_faults(faults)
    if args.server == "granian":
        if not fast.available():
            raise UsageError("--server granian needs granian: pip install -e '.[test]'")
        if args.port == 0:
            raise UsageError("--server granian needs a port of its own (not 0)")
        if faults.latency_ms or faults.drop_rate:
            raise UsageError("--server granian injects no latency or dropped connections: "
                             "use the default server for those")

    def announce(host: str, port: int) -> None:
        print(f"OneNET OTA simulator on http://{host}:{port}", flush=True)
        print(f"export ORCH_ONENET_URL=http://{host}:{port} "
              f"ORCH_ONENET_PRODUCT_ID={sim.product_id} "
              f"ORCH_ONENET_ACCESS_KEY={sim.access_key}", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        runtime.stop_on_signals(stop)
        if args.server == "granian":
            async with fast.serving(sim, args.host, args.port):
                announce(args.host, args.port)
                await stop.wait()
            return
        runner = await serve(sim, args.host, args.port)
        announce(*runner.addresses[0][:2])
        await stop.wait()
        await runner.cleanup()

    runtime.run(main())
    return 0


def _rate(text: str) -> float:
    """A share in [0, 1] (argparse type: a wrong value is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:   # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:   # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def register(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="simulators for staging and tests").add_subparsers(
        dest="sim_command", required=True, metavar="WHAT")
    p = sim.add_parser("onenet", help="a faithful simulator of OneNET's OTA southbound API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--scenario", help="scenario file (.toml or .json); see deploy/")
    p.add_argument("--product-id")
    p.add_argument("--access-key", help="base64 key (default: the scenario's, else random)")
    p.add_argument("--no-auth", action="store_true", help="accept any Authorization")
    p.add_argument("--auto-register", action="store_true",
                   help="accept checks from devices the scenario does not list")
    p.add_argument("--ip-port", help="download address announced in tasks (ipPort)")
    p.add_argument("--errno7-rate", type=_rate, help="share of checks answered errno 7")
    p.add_argument("--latency-ms", type=_positive, help="delay added to every call")
    p.add_argument("--drop-rate", type=_rate, help="share of calls whose connection is dropped")
    p.add_argument("--server", choices=("aiohttp", "granian"), default="aiohttp",
                   help="granian: the check endpoint (and /sim/state) only, on a Rust HTTP "
                        "server at about half the CPU per check, for load tests")
    p.set_defaults(handler=cmd_simulate_onenet)
    register_fleet(sim)


def _accounts(path: str) -> dict[int, str]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--credentials {path}: cannot read ({exc})") from None
    accounts, errors = parse_credentials(text)
    for line, message in errors[:20]:
        print(f"{path}:{line}: {message}", file=sys.stderr)
    if errors:
        raise UsageError(f"--credentials {path}: {len(errors)} bad line(s)")
    if not accounts:
        raise UsageError(f"--credentials {path}: no device in it")
    return accounts


def cmd_simulate_fleet(args: argparse.Namespace, settings: Settings) -> int:
    if args.devices <= 0:
        raise UsageError("--devices: at least 1")
    config = FleetConfig(
        status_interval=args.status_interval, bandwidth=args.bandwidth,
        install_time=args.install_time, download_failure_rate=args.download_failure_rate,
        install_failure_rate=args.install_failure_rate, offline_rate=args.offline_rate,
        offline_seconds=args.offline_seconds, seed=args.seed, day=args.day)
    accounts = _accounts(args.credentials) if args.credentials else None
    if args.cells is not None and args.cells <= 0:
        raise UsageError("--cells: at least 1")
    try:
        mix = parse_mix(args.mix) if args.mix else None
        patterns = parse_patterns(args.patterns) if args.patterns else None
    except BadMix as exc:
        raise UsageError(str(exc)) from None
    for manuf, model, version, _ in mix or []:
        if not is_valid_version(version):
            raise UsageError(f"--mix: {version!r} is not a valid version (1-20 of A-Z a-z 0-9 "
                             "_ - .)")
        try:
            resolve(manuf, model)
        except UnknownModule as exc:
            print(f"fleet: {exc}: these devices will be registered and left out of "
                  "campaigns", file=sys.stderr)
    devices = make_devices(args.devices, first_id=args.first_id, seed=args.seed,
                           manuf=args.manuf, model=args.model, fota_version=args.version,
                           ids=sorted(accounts) if accounts else None, mix=mix,
                           patterns=patterns, cells=args.cells)
    if args.scenario:
        try:
            listed = {d.dev_id: d for d in load_scenario(args.scenario).devices}
        except ScenarioError as exc:
            raise UsageError(str(exc)) from None
        for dev in devices:       # faithful to the platform's view of each listed device
            known = listed.get(dev.dev_id)
            if known is not None:
                dev.manuf = known.manuf or dev.manuf
                dev.model = known.model or dev.model
                dev.fota_version = known.fota_version or dev.fota_version
                dev.sota_version = known.sota_version or dev.sota_version
    fleet = Fleet(settings.mqtt_url, settings.mqtt_topic_prefix, devices, config,
                  client_id=None, v5=settings.mqtt_v5, accounts=accounts)

    async def main() -> int:
        stop = asyncio.Event()
        runtime.stop_on_signals(stop)
        task = asyncio.create_task(fleet.run(stop))
        connected = asyncio.create_task(fleet.connected.wait())
        stopped = asyncio.create_task(stop.wait())
        while not fleet.connected.is_set() and not stop.is_set():
            done, _ = await asyncio.wait({connected, stopped}, timeout=5,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                print(f"fleet: cannot reach the broker at {settings.mqtt_url!r} yet; "
                      "retrying (Ctrl-C stops)", file=sys.stderr, flush=True)
        connected.cancel()
        stopped.cancel()
        if not fleet.connected.is_set():
            await task
            print(f"error: ORCH_MQTT_URL: never reached the broker at {settings.mqtt_url!r}",
                  file=sys.stderr)
            return 1
        print(f"{len(devices)} simulated devices ({devices[0].dev_id}..{devices[-1].dev_id}) "
              f"on {settings.mqtt_url!r}, prefix {settings.mqtt_topic_prefix!r}"
              + (", a connection and an account each" if accounts else ""), flush=True)
        if fleet.stats["refused"]:
            print(f"fleet: the broker refused {fleet.stats['refused']} device(s) (a wrong or "
                  "revoked secret, or accounts not yet synced); they keep trying",
                  file=sys.stderr, flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 10)
            print("fleet: " + ", ".join(f"{k}={v}" for k, v in sorted(fleet.stats.items())),
                  flush=True)
        await task
        return 0

    return runtime.run(main())


def register_fleet(sim: Any) -> None:
    p = sim.add_parser("fleet", help="simulated devices speaking the MQTT contract")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--first-id", type=int, default=1)
    p.add_argument("--manuf", default="China Mobile")
    p.add_argument("--model", default="M5310")
    p.add_argument("--version", default="1.2", help="the devices' FOTA version")
    p.add_argument("--scenario", help="take manufacturer, model and versions of the devices "
                                      "it lists from this simulator scenario")
    p.add_argument("--status-interval", type=_positive, default=30.0,
                   help="seconds between status reports")
    p.add_argument("--bandwidth", type=_positive, default=1_000_000,
                   help="download bytes per second per device (0: unlimited)")
    p.add_argument("--install-time", type=_positive, default=0.5)
    p.add_argument("--download-failure-rate", type=_rate, default=0.0)
    p.add_argument("--install-failure-rate", type=_rate, default=0.0)
    p.add_argument("--offline-rate", type=_rate, default=0.0,
                   help="chance per status tick that a device goes offline")
    p.add_argument("--offline-seconds", type=_positive, default=30.0)
    p.add_argument("--seed", type=int, help="for reproducible runs")
    p.add_argument("--mix", action="append", metavar="MANUF/MODEL/VERSION=SHARE",
                   help="a mixed fleet, one group a flag, e.g. --mix 'China Mobile/M5310/1.2=70'"
                        " --mix 'Quectel Wireless Solutions Co., Ltd./BC28/2.0=30' (instead "
                        "of --manuf/--model/--version)")
    p.add_argument("--patterns", metavar="NAME=SHARE,...",
                   help="daily radio patterns instead of drifting signal and power, e.g. "
                        "steady=40,weak_by_day=30,charging_at_night=15,flapping=10,"
                        "always_weak=5")
    p.add_argument("--day", type=_positive, default=86400.0,
                   help="seconds of the day the patterns follow (default 86400)")
    p.add_argument("--cells", type=int, metavar="N",
                   help="spread the devices over N cells, reporting cell and ce_level")
    p.add_argument("--credentials", metavar="FILE", help="the CSV 'device credentials' wrote: "
                   "its devices (instead of --devices/--first-id), each on a connection of "
                   "its own with its own account, to the devices' listener in ORCH_MQTT_URL")
    p.set_defaults(handler=cmd_simulate_fleet)
