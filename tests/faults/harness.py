"""Real processes for the fault suite: a private PostgreSQL cluster (initdb/pg_ctl) it can
restart or stall, a private Mosquitto it can restart, ``orchestrator run`` replicas it can
SIGKILL or stop, the OneNET simulator it can take away, and a fleet. Everything bounded
in time; everything it starts, it stops."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import Mosquitto, free_port
from orchestrator.config import parse_mqtt_url
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.sim.onenet import Simulator, serve
from orchestrator.sim.scenario import parse_scenario
from orchestrator.store.migrate import migrate

PRODUCT = "123123"
TARGET = "1.3"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or \
        ([shutil.which(name)] if shutil.which(name) else [])
    if not found:
        pytest.skip(f"{name} not installed (the PostgreSQL server package)")
    return str(found[-1])


class PgCluster:
    """A throw-away cluster. As root, PostgreSQL runs as the ``postgres`` user."""

    def __init__(self) -> None:
        # its own folder under /tmp: pytest's are private to the user running the tests
        self.root = Path(tempfile.mkdtemp(prefix="orch-pg-", dir="/tmp"))
        self.dir = self.root / "data"
        self.port = free_port()
        self.log = self.root / "pg.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user")
            self.user = "postgres"
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._run(pg_bin("initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust",
                  "--no-sync")
        with open(self.dir / "postgresql.conf", "a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    "unix_socket_directories = ''\nfsync = off\nmax_connections = 100\n"
                    "shared_buffers = 64MB\n")

    def ctl(self, *args: str) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w",
                  "-t", "60", *args)

    def start(self) -> None:
        self.ctl("start")

    def restart(self, mode: str = "fast") -> None:
        self.ctl("restart", "-m", mode)

    def stop(self, mode: str = "fast") -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.dir), "-w", "-t", "60", "stop", "-m", mode,
                  check=False)


@dataclasses.dataclass
class Replica:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    peak_rss_kb: int = 0
    exits: list[int] = dataclasses.field(default_factory=list)

    def start(self, logdir: Path) -> None:
        out = open(logdir / f"{self.name}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run"],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def sample_rss(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))

    def kill(self) -> None:
        assert self.proc is not None
        self.sample_rss()
        self.proc.kill()
        self.exits.append(self.proc.wait(10))

    def stop(self) -> int:
        """SIGTERM: drains and exits 0."""
        assert self.proc is not None
        self.sample_rss()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.exits.append(code)
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class World:
    """Everything of one fault scenario."""

    def __init__(self, workdir: Path, devices: int, *, replicas: int = 2) -> None:
        self.workdir = workdir
        self.pg = PgCluster()
        self.broker = Mosquitto(workdir)
        self.n = devices
        self.prefix = f"f{os.getpid()}x{int(time.time()) % 100000}"
        self.replica_count = replicas
        self.replicas: list[Replica] = []
        self.sim: Simulator | None = None
        self.sim_runner: Any = None
        self.sim_port = free_port()
        self.fleet: Fleet | None = None
        self.fleet_stop = asyncio.Event()
        self.fleet_task: asyncio.Task[None] | None = None
        self.devices: list[SimDevice] = []
        self.started = time.monotonic()

    @property
    def dsn(self) -> str:
        return self.pg.url

    async def start(self, **fleet: Any) -> None:
        await asyncio.to_thread(self.pg.init)
        await asyncio.to_thread(self.pg.start)
        self.broker.conf.write_text(self.broker.conf.read_text().replace(
            "max_inflight_messages 0\n", "max_inflight_messages 0\nmessage_size_limit 262144\n"))
        self.broker.start()
        await migrate(self.dsn)
        self.sim = Simulator(parse_scenario({
            "credentials": {"product_id": PRODUCT, "access_key": DEMO_ACCESS_KEY},
            "server": {"auto_register": True},
            "packages": [{"id": "p", "version": TARGET, "size": 4096}],
            "strategies": [{"type": "fota", "package": "p", "signal": 0, "power": 0,
                            "retry": 2, "interval": 5}]}))
        await self.onenet_up()
        env = {**os.environ,
               "ORCH_DATABASE_URL": self.dsn, "ORCH_MQTT_URL": self.broker.url,
               "ORCH_MQTT_TOPIC_PREFIX": self.prefix, "ORCH_LOG_FORMAT": "json",
               "ORCH_API_LISTEN": "127.0.0.1:0", "ORCH_LOG_LEVEL": "info",
               "ORCH_ONENET_URL": f"http://127.0.0.1:{self.sim_port}",
               "ORCH_ONENET_PRODUCT_ID": PRODUCT, "ORCH_ONENET_ACCESS_KEY": DEMO_ACCESS_KEY,
               "ORCH_DISPATCH_TIMEOUT": "15", "ORCH_CLAIM_LEASE": "10",
               "ORCH_STATUS_MAX_AGE": "600", "ORCH_SCHEDULER_POLL_INTERVAL": "0.2",
               "ORCH_ONENET_TIMEOUT": "3"}
        # no client id: each replica takes a free slot of this host (orchestrator-<host>-N),
        # as replicas left on defaults do, and a restarted one takes its own back
        for i in range(self.replica_count):
            r = Replica(f"r{i + 1}", dict(env))
            r.start(self.workdir)
            self.replicas.append(r)
        await self.wait_replicas()
        self.devices = [SimDevice(i, signal=25, power=90, drift=False)
                        for i in range(1, self.n + 1)]
        self.fleet = Fleet(parse_mqtt_url(self.broker.url), self.prefix, self.devices,
                           FleetConfig(**{"status_interval": 10.0, "install_time": 1.0,
                                          "bandwidth": 2048, "progress_every": 25,
                                          **fleet}),
                           client_id=f"fleet-{self.prefix}")
        self.fleet_task = asyncio.create_task(self.fleet.run(self.fleet_stop))
        await asyncio.wait_for(self.fleet.connected.wait(), 30)

    async def wait_replicas(self) -> None:
        async def subscribed() -> bool:
            count = 0
            for r in self.replicas:
                log = (self.workdir / f"{r.name}.log").read_text(errors="replace")
                count += log.count("mqtt ingest subscribed") > 0
            return count >= len([r for r in self.replicas if r.alive()])
        await until(subscribed, 60, "replicas subscribed")

    async def onenet_up(self) -> None:
        assert self.sim is not None
        self.sim_runner = await serve(self.sim, "127.0.0.1", self.sim_port)

    async def onenet_down(self) -> None:
        await self.sim_runner.cleanup()

    async def sql(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def val(self, query: str, *args: Any) -> Any:
        return (await self.sql(query, *args))[0][0]

    async def wait_registered(self) -> None:
        async def ok() -> bool:
            return bool(await self.val(
                "SELECT count(*) = $1 FROM ota.devices WHERE fota_version = '1.2'", self.n))
        await until(ok, 60, "fleet registered")

    async def campaign(self) -> int:
        out = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "orchestrator", "campaign", "create", "--name", "fault",
            "--type", "fota", "--target", TARGET, "--model", "M5310", "--start",
            # 150 devices/s: the campaign lasts long enough for the faults to land in it
            "--max-per-minute", "9000"],
            env=self.replicas[0].env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    async def finished(self, cid: int, timeout: float) -> dict[str, Any]:
        async def done() -> bool:
            for r in self.replicas:
                r.sample_rss()
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return bool(await self.val(
                    "SELECT status = 'completed' FROM ota.campaigns WHERE campaign_id = $1",
                    cid))
            return False
        try:
            await until(done, timeout, "campaign completed")
        except AssertionError:
            states = await self.sql("SELECT state, last_error, count(*) FROM ota.campaign_devices"
                                    " WHERE campaign_id = $1 GROUP BY 1, 2", cid)
            fleet = dict(self.fleet.stats) if self.fleet else {}
            raise AssertionError(f"campaign {cid} not completed: "
                                 f"{[tuple(r) for r in states]}; fleet {fleet}") from None
        row = (await self.sql("SELECT * FROM ota.campaign_progress WHERE campaign_id = $1",
                              cid))[0]
        return dict(row)

    async def budget_spent(self, cid: int) -> int:
        return int(await self.val(
            "SELECT coalesce(sum(attempts), 0) FROM ota.campaign_devices"
            " WHERE campaign_id = $1", cid))

    async def lost_reports(self) -> int:
        """Devices whose last reported status (version, signal) is not the registry's."""
        rows = await self.sql("SELECT dev_id, fota_version, signal FROM ota.devices")
        have = {r["dev_id"]: (r["fota_version"], r["signal"]) for r in rows}
        return sum(1 for d in self.devices if have.get(d.dev_id) != (d.fota_version, d.signal))

    async def settle(self) -> None:
        """Every device reports once more (as devices do periodically), then ingest drains."""
        assert self.fleet is not None
        await asyncio.wait_for(self.fleet.report_all(), 60)
        await asyncio.sleep(2.0)

    async def close(self) -> None:
        self.fleet_stop.set()
        if self.fleet_task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.fleet_task, 30)
        for r in self.replicas:
            if r.alive():
                with contextlib.suppress(Exception):
                    r.stop()
        with contextlib.suppress(Exception):
            await self.sim_runner.cleanup()
        self.broker.stop()
        await asyncio.to_thread(self.pg.stop, "immediate")
        self.pg.remove()

    def client_ids(self, replica: Replica) -> list[str]:
        """The MQTT client ids the replica took, one per start, from its log."""
        text = (self.workdir / f"{replica.name}.log").read_text(errors="replace")
        return [json.loads(line)["client_id"] for line in text.splitlines()
                if "mqtt client id from this host's free slot" in line]

    def felt(self, *needles: str) -> int:
        """How many replica log lines show the fault (so a scenario cannot pass by missing
        it)."""
        n = 0
        for r in self.replicas:
            text = (self.workdir / f"{r.name}.log").read_text(errors="replace")
            n += sum(text.count(x) for x in needles)
        return n

    def results(self, name: str, cid_row: dict[str, Any], lost: int, spent: int) -> str:
        line = {"fault": name, "devices": self.n, "succeeded": cid_row["succeeded"],
                "lost": lost, "budget_spent": spent,
                "seconds": round(time.monotonic() - self.started, 1),
                "peak_rss_mb": round(max(r.peak_rss_kb for r in self.replicas) / 1024, 1)}
        out = json.dumps(line)
        with open(Path(os.environ.get("ORCH_TEST_FAULT_RESULTS", "/tmp/orch-faults.jsonl")),
                  "a") as f:
            f.write(out + "\n")
        return out


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float,
                what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {what}")
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def world(tmp_path: Path, devices: int, **kw: Any) -> AsyncIterator[World]:
    w = World(tmp_path, devices, **kw)
    try:
        yield w
    finally:
        await w.close()
