"""The shipped secure broker, as an operator sets it up: ``broker init`` (the orchestrator's
account in PostgreSQL, a Mosquitto configuration with a listener for devices and one for
the orchestrator), ``device credentials`` for many devices, ``broker sync``, then Mosquitto
started on that configuration as Debian's package starts it (as root it drops to the
``mosquitto`` user, who reads the files through their group). Every probe of a hostile
device, and the orchestrator on its defaults, against that broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
import yaml

from conftest import free_port, run_cli, start_mosquitto
from orchestrator.config import Settings, parse_mqtt_url
from orchestrator.domain.accounts import FILES, mosquitto_conf
from orchestrator.domain.device import Policy
from orchestrator.metrics import Metrics
from orchestrator.mqtt.ingest import Ingest
from orchestrator.sim import mqttlite
from orchestrator.store.database import PgDatabase
from orchestrator.workers.progress import ProgressSink
from stack import start_run, stop_runs

REPO = Path(__file__).resolve().parents[2]
A, B, C = 6523, 6524, 6525


@dataclass
class Secure:
    dir: Path
    devices_port: int
    orch_port: int
    orch_url: str
    env: dict[str, str]
    secrets: dict[int, str]
    proc: subprocess.Popen[bytes] | None = None
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def orch(self) -> tuple[str, str]:
        u = parse_mqtt_url(self.orch_url)
        assert u.username and u.password
        return u.username, u.password

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, input=stdin)

    def sync(self) -> None:
        assert self.proc is not None
        out = self.cli("broker", "sync", "--dir", str(self.dir), "--pid", str(self.proc.pid))
        assert out.returncode == 0, out.stderr
        time.sleep(0.3)     # Mosquitto reads the files again on SIGHUP

    async def device(self, dev_id: int, *, client_id: str | None = None,
                     secret: str | None = None, clean: bool = True,
                     got: list[tuple[str, bytes]] | None = None,
                     will: tuple[str, bytes] | None = None,
                     port: int | None = None) -> mqttlite.Connection:
        sink = got if got is not None else []
        return await mqttlite.connect(
            "127.0.0.1", port or self.devices_port, client_id or str(dev_id),
            lambda t, p: sink.append((t, p)), username=str(dev_id),
            password=secret or self.secrets[dev_id], clean=clean, will=will)


def _mosquitto() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.skip("mosquitto is not installed")
    return binary


@pytest.fixture
async def secure(database: str, prefix: str) -> AsyncIterator[Secure]:
    _mosquitto()
    conn = await asyncpg.connect(database)
    await conn.execute("INSERT INTO ota.devices (dev_id, manuf, model, fota_version) "
                       "SELECT g, 'China Mobile', 'M5310', '1.2' FROM unnest($1::bigint[]) g",
                       [A, B, C])
    await conn.close()
    # a directory the broker's own user can enter (pytest's are private to root)
    directory = Path(tempfile.mkdtemp(prefix="orch-broker-", dir="/tmp"))
    directory.chmod(0o755)
    env = {**os.environ, "ORCH_DATABASE_URL": database, "ORCH_MQTT_TOPIC_PREFIX": prefix,
           "ORCH_LOG_FORMAT": "json"}
    dport, oport = free_port(), free_port()
    init = run_cli("broker", "init", "--dir", str(directory), "--port", str(dport),
                   "--orchestrator-port", str(oport), "--bind", "127.0.0.1", env=env)
    assert init.returncode == 0, init.stderr
    url = init.stdout.strip().split("=", 1)[1]
    issued = run_cli("device", "credentials", str(A), str(B), str(C), "--json", env=env)
    assert issued.returncode == 0, issued.stderr
    secrets = {int(r["dev_id"]): r["password"] for r in json.loads(issued.stdout)}
    s = Secure(directory, dport, oport, url, env, secrets)
    synced = run_cli("broker", "sync", "--dir", str(directory), env=env)
    assert synced.returncode == 0, synced.stderr
    s.proc = start_mosquitto(directory / "mosquitto.conf", dport)
    try:
        yield s
    finally:
        s.proc.terminate()
        s.proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def observer(s: Secure, prefix: str) -> AsyncIterator[aiomqtt.Client]:
    user, password = s.orch
    async with aiomqtt.Client("127.0.0.1", s.orch_port, username=user, password=password,
                              identifier=f"observer-{prefix}",
                              protocol=aiomqtt.ProtocolVersion.V5) as o:
        # through a shared subscription, as ingest subscribes by default
        await o.subscribe(f"$share/orchestrators/{prefix}/+/status", qos=1)
        await o.subscribe(f"{prefix}/+/progress", qos=1)

        async def collect() -> None:
            async for m in o.messages:
                s.seen.append((m.topic.value, bytes(m.payload)))  # type: ignore[arg-type]

        task = asyncio.create_task(collect())
        try:
            yield o
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_the_shipped_configuration_is_what_broker_init_writes_in_compose() -> None:
    """deploy/mosquitto.conf is what compose's broker-init writes (the same template the
    tests start Mosquitto on), and every file it names is one broker sync writes."""
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    cmd = compose["services"]["broker-init"]["command"]

    def flag(name: str) -> str:
        return str(cmd[cmd.index(name) + 1])

    assert cmd[:2] == ["broker", "init"] and "--log-stdout" in cmd
    shipped = (REPO / "deploy" / "mosquitto.conf").read_text()
    assert shipped == mosquitto_conf(flag("--dir"), data_dir=flag("--data-dir"),
                                     log_stdout=True, pid_file=flag("--broker-pid-file"))
    sync = compose["services"]["broker-sync"]["command"]
    assert sync[sync.index("--pid-file") + 1] == flag("--broker-pid-file")
    named = {ln.split()[1].rsplit("/", 1)[1] for ln in shipped.splitlines()
             if ln.startswith(("password_file", "acl_file"))}
    assert named == set(FILES)


async def test_a_device_speaks_only_for_itself(secure: Secure, prefix: str) -> None:
    s = secure
    status_b, command_b = f"{prefix}/{B}/status", f"{prefix}/{B}/command"
    got_a: list[tuple[str, bytes]] = []
    got_b: list[tuple[str, bytes]] = []
    async with observer(s, prefix) as orch:
        # B subscribes to its commands on a persistent session, then goes offline, and the
        # orchestrator queues an upgrade command for it
        b = await s.device(B, clean=False, got=got_b)
        assert await b.subscribe(command_b) == 1
        await b.close()
        await orch.publish(command_b, b'{"op":"upgrade"}', qos=1)

        # A, with its own valid secret, claims B's client id and leaves a will on B's topic
        a = await s.device(A, client_id=str(B), got=got_a, will=(status_b, b"forged will"))
        await a.publish(status_b, b"forged")                                 # 1 speak for B
        await a.publish(f"{prefix}/{B}/progress", b'{"campaign":1,"step":201}')
        for pattern in (f"{prefix}/+/command", "#"):                         # 2 wildcards
            await a.subscribe(pattern)
        await a.publish("$CONTROL/dynamic-security/v1", json.dumps(         # 3 $CONTROL
            {"commands": [{"command": "createClient", "username": "intruder",
                           "password": "intruder"}]}).encode())
        await a.publish(f"{prefix}/{A}/status", b"mine")
        a.abort()                                  # 4 the will fires: on B's topic, denied
        await asyncio.sleep(0.5)

        # 5-7: B's session and queued command survived A's claim, and B stays connected
        # while A connects again with B's client id
        b = await s.device(B, clean=False, got=got_b)
        for _ in range(50):
            if got_b:
                break
            await asyncio.sleep(0.05)
        assert got_b == [(command_b, b'{"op":"upgrade"}')]
        a = await s.device(A, client_id=str(B), got=got_a)
        await asyncio.sleep(0.5)
        assert not b.closed.is_set(), "A's connection took B's session over"
        await orch.publish(command_b, b'{"op":"report"}', qos=1)
        await asyncio.sleep(0.5)
        assert got_b[-1] == (command_b, b'{"op":"report"}')
        assert got_a == [], "A read B's commands"
        await a.close()
        await b.close()
    assert s.seen == [(f"{prefix}/{A}/status", b"mine")]
    # nobody acted on $CONTROL: the account A asked for does not exist
    with pytest.raises(mqttlite.Refused):
        await mqttlite.connect("127.0.0.1", s.devices_port, "intruder", lambda *_: None,
                               username="intruder", password="intruder")


async def test_who_is_refused(secure: Secure) -> None:
    s = secure
    with pytest.raises(mqttlite.Refused):                   # a wrong secret
        await s.device(A, secret="guess")
    with pytest.raises(mqttlite.Refused):                   # a device on the orchestrator's
        await s.device(A, port=s.orch_port)
    with pytest.raises(mqttlite.Refused):                   # anonymous
        await mqttlite.connect("127.0.0.1", s.devices_port, "x", lambda *_: None)
    user, password = s.orch                                 # the orchestrator as a device
    with pytest.raises(mqttlite.Refused):
        await mqttlite.connect("127.0.0.1", s.devices_port, user, lambda *_: None,
                               username=user, password=password)


async def test_revoked_rotated_and_removed_devices_are_refused_after_a_sync(
        secure: Secure, database: str) -> None:
    s = secure
    old_b = s.secrets[B]
    out = s.cli("device", "revoke", str(A))
    assert out.returncode == 0 and "1 account(s) revoked" in out.stdout, out.stderr
    out = s.cli("device", "credentials", str(B), "--rotate")
    assert out.returncode == 0, out.stderr
    new_b = out.stdout.splitlines()[1].split(",")[2]
    conn = await asyncpg.connect(database)
    await conn.execute("DELETE FROM ota.devices WHERE dev_id = $1", C)
    assert await conn.fetchval("SELECT count(*) FROM ota.mqtt_accounts WHERE dev_id = $1",
                               C) == 0
    await conn.close()
    # until the sync the broker still knows them; after it, it does not
    (await s.device(A)).abort()
    s.sync()
    for dev_id, secret in ((A, None), (B, old_b), (C, None)):
        with pytest.raises(mqttlite.Refused):
            await s.device(dev_id, secret=secret)
    await (await s.device(B, secret=new_b)).close()


async def test_the_orchestrator_on_its_defaults_ingests_through_the_secure_broker(
        secure: Secure, prefix: str, database: str) -> None:
    """``orchestrator run`` with nothing but the database and the URL broker init printed:
    default shared group, a client id of its own per replica (two on this host)."""
    s = secure
    env = {**s.env, "ORCH_MQTT_URL": s.orch_url, "ORCH_API_LISTEN": "127.0.0.1:0"}
    env.pop("ORCH_MQTT_CLIENT_ID", None)
    procs = [await start_run(env, None), await start_run(env, None)]
    try:
        dev = await s.device(A)
        await dev.publish(f"{prefix}/{A}/status", json.dumps(
            {"manuf": "China Mobile", "model": "M5310", "fota_version": "1.2.7",
             "signal": 21, "power": 77}).encode())
        await dev.close()
        conn = await asyncpg.connect(database)
        try:
            for _ in range(100):
                row = await conn.fetchrow("SELECT fota_version, signal FROM ota.devices "
                                          "WHERE dev_id = $1", A)
                if row and row["fota_version"] == "1.2.7":
                    break
                await asyncio.sleep(0.1)
            assert row is not None and tuple(row) == ("1.2.7", 21)
            for _ in range(100):
                owners = {r[0] for r in await conn.fetch("SELECT owner FROM ota.replicas")}
                if len(owners) == 2:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        assert len(owners) == 2 and all(o.startswith("orchestrator-") for o in owners), owners
        assert {o.rsplit("-", 1)[1] for o in owners} == {"0", "1"}
    finally:
        await stop_runs(procs)


async def test_a_refused_subscription_is_an_error_not_a_silent_loss(
        settings: Settings, pool: Any, tmp_path: Path) -> None:
    """What the dynamic security plugin did to the default shared subscription: the broker
    answers the SUBACK with 'Not authorized'. Ingest logs it, counts it, stays not ready
    (so /readyz says so) and tries again."""
    plugin = next(iter(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")
                       + glob.glob("/usr/lib/mosquitto_dynamic_security.so")), None)
    if plugin is None:
        pytest.skip("Mosquitto's dynamic security plugin is not installed")
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101, 64)
    (tmp_path / "dynsec.json").write_text(json.dumps({
        "clients": [{"username": "orch", "password": base64.b64encode(digest).decode(),
                     "salt": base64.b64encode(salt).decode(), "iterations": 101}],
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True}}))
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(("user root\n" if os.geteuid() == 0 else "")
                    + f"listener {port} 127.0.0.1\nallow_anonymous false\nplugin {plugin}\n"
                    f"plugin_opt_config_file {tmp_path}/dynsec.json\n")
    proc = start_mosquitto(conf, port)
    metrics = Metrics()
    s = dataclasses.replace(settings, mqtt_url=parse_mqtt_url(f"mqtt://orch:pw@127.0.0.1:{port}"))
    ingest = Ingest(s, ProgressSink(PgDatabase(pool), Policy()), metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        for _ in range(100):
            if metrics.registry.get_sample_value("orch_mqtt_subscribe_refused_total",
                                                 {"topic": ingest.subscriptions()[0]}):
                break
            await asyncio.sleep(0.05)
        assert metrics.registry.get_sample_value(
            "orch_mqtt_subscribe_refused_total", {"topic": ingest.subscriptions()[0]}) == 1
        assert ingest.subscriptions()[0].startswith("$share/orchestrators/")
        await asyncio.sleep(0.5)
        assert not ingest.connected.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        proc.terminate()
        proc.wait(10)


async def test_broker_sync_watch_follows_every_change(secure: Secure, database: str) -> None:
    """``broker sync --watch`` beside the broker: a new account connects within seconds, a
    revoked or deleted one is refused, with no command run by hand."""
    s = secure
    assert s.proc is not None
    watch = subprocess.Popen([sys.executable, "-m", "orchestrator", "broker", "sync", "--dir",
                              str(s.dir), "--watch", "--pid", str(s.proc.pid)], env=s.env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    conn = await asyncpg.connect(database)

    async def connects(dev_id: int, secret: str | None = None, within: float = 20.0) -> bool:
        deadline = time.monotonic() + within
        while True:
            try:
                await (await s.device(dev_id, secret=secret)).close()
                return True
            except mqttlite.Refused:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.1)

    async def refused(dev_id: int, within: float = 20.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                await (await s.device(dev_id)).close()
                await asyncio.sleep(0.1)
            except mqttlite.Refused:
                return True
        return False

    try:
        await conn.execute("INSERT INTO ota.devices (dev_id) VALUES (7001)")
        out = await asyncio.to_thread(s.cli, "device", "credentials", "7001")
        assert out.returncode == 0, out.stderr
        ok = [await connects(7001, out.stdout.splitlines()[1].split(",")[2])]
        assert (await asyncio.to_thread(s.cli, "device", "revoke", str(A))).returncode == 0
        ok.append(await refused(A))
        await conn.execute("DELETE FROM ota.devices WHERE dev_id = $1", B)
        ok += [await refused(B), await connects(C)]
    finally:
        await conn.close()
        watch.send_signal(signal.SIGTERM)
        text, _ = await asyncio.to_thread(watch.communicate, timeout=20)
    assert ok == [True] * 4, (ok, text)
    assert watch.returncode == 0, text
    writes = [ln for ln in text.splitlines() if "account(s) in" in ln]
    assert len(writes) >= 3 and writes[-1].startswith("wrote 2 device and 1 orchestrator"), text
