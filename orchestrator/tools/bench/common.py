"""What the benchmarks share: the report line, a scratch database, the OneNET simulator in
its own process, bare check POSTs (the raw limits of the check path), other processes' CPU."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from orchestrator.config import MqttUrl, Settings
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.store.db import Connection, connect
from orchestrator.store.migrate import migrate
from orchestrator.tools.demo import free_port

Say = Callable[[str], None]
PRODUCT_ID = "1"


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def report(name: str, unit: str, rate: float, raw: float, table: dict[str, Any],
           say: Say) -> dict[str, Any]:
    result = {"bench": name, "unit": unit, "rate": round(rate, 1), "raw_rate": round(raw, 1),
              "ratio": round(rate / raw, 3) if raw else None, **table,
              "machine": machine()}
    width = max(len(k) for k in result)
    say("")
    for key, value in result.items():
        say(f"  {key:<{width}}  {value}")
    say(json.dumps(result))
    return result


@contextlib.asynccontextmanager
async def scratch_database(settings: Settings) -> AsyncIterator[str]:
    """A fresh, migrated database beside the configured one, dropped afterwards."""
    dsn = settings.require_database()
    name = f"orch_bench_{os.getpid()}_{int(time.time())}"
    admin = await connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(dsn)
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        await migrate(url)
        yield url
    finally:
        admin = await connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# the HTTP clients measured bare against the simulator: ours, and the fastest Python asyncio
# client measured here (pyreqwest, Rust's reqwest underneath; the bench extra)
HTTP_CLIENTS = ("aiohttp", "pyreqwest")


@dataclasses.dataclass(frozen=True)
class RawChecks:
    client: str
    rate: float                 # POSTs per second
    cpu: float                  # seconds of this process's CPU, every thread counted


async def raw_checks(url: str, n: int, concurrency: int, body: Callable[[int], dict[str, Any]],
                     headers: dict[str, str], client: str = "aiohttp") -> RawChecks | None:
    """``n`` bare check POSTs, ``concurrency`` at a time, bodies encoded with orjson as ours
    are. None when the client is not installed."""
    target = f"{url}/ota/south/check"
    headers = {**headers, "Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    started, cpu = time.perf_counter(), time.process_time()
    if client == "aiohttp":
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as http:

            async def one(i: int) -> None:
                async with sem, http.post(target, data=orjson.dumps(body(i)),
                                          headers=headers) as r:
                    await r.read()

            await asyncio.gather(*(one(i) for i in range(n)))
    else:
        try:
            from pyreqwest.client import ClientBuilder  # noqa: PLC0415 (bench extra only)
        except ImportError:
            return None
        async with ClientBuilder().max_connections(concurrency).default_headers(
                headers).build() as rq:

            async def one_rq(i: int) -> None:
                async with sem:
                    r = await rq.post(target).body_bytes(orjson.dumps(body(i))).build().send()
                    await r.bytes()

            started, cpu = time.perf_counter(), time.process_time()   # not its start-up
            await asyncio.gather(*(one_rq(i) for i in range(n)))
    return RawChecks(client, n / (time.perf_counter() - started), time.process_time() - cpu)


async def raw_checks_all(url: str, n: int, concurrency: int,
                         body: Callable[[int], dict[str, Any]], auth: dict[str, str],
                         say: Say) -> list[RawChecks]:
    """Each of :data:`HTTP_CLIENTS` that is installed, measured bare in turn."""
    out = []
    for client in HTTP_CLIENTS:
        raw = await raw_checks(url, n, concurrency, body, auth, client)
        if raw is None:
            say(f"  ({client} is not installed: the bench extra)")
            continue
        say(f"  bare {client} POSTs: {raw.rate:,.0f} checks/s, "
            f"{1e6 * raw.cpu / n:,.0f} ms of CPU per 1,000")
        out.append(raw)
    return out


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (the state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pids: Iterable[int], command: str) -> dict[int, float]:
    """CPU seconds so far of each of ``pids`` whose command line names ``command``, from
    /proc (empty where there is none, or for processes of another machine)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, float] = {}
    for pid in pids:
        try:
            if command.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fields = _stat(pid)
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick      # utime + stime
    return out


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`cpu_seconds`, over the processes in both."""
    return sum(after[p] - before[p] for p in before.keys() & after.keys())


async def server_cpu_seconds(conn: Connection) -> float | None:
    """CPU seconds so far of the whole PostgreSQL server ``conn`` talks to, when it runs on
    this machine: the postmaster, its live children (backends, autovacuum, writers) and
    every child that has exited (the postmaster's cutime and cstime), so backends a pool
    opens and closes meanwhile are counted too. None where /proc does not show it."""
    return _server_cpu(await conn.fetchval("SELECT pg_backend_pid()"))


def _server_cpu(backend: int) -> float | None:
    try:
        postmaster = int(_stat(backend)[1])           # its parent
        total = sum(int(x) for x in _stat(postmaster)[11:15])   # utime stime cutime cstime
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                c = _stat(entry.name)
            except OSError:
                continue                               # gone meanwhile
            if c[1] == str(postmaster):
                total += int(c[11]) + int(c[12])
    except (OSError, ValueError, IndexError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


# the database's processes on a path: the backends of this database (open every pool
# connection first, so all are counted) and its writers, when it runs on this machine
DB_PIDS = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database()
       OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"""


@contextlib.asynccontextmanager
async def simulator_process(scenario: dict[str, Any], server: str = "aiohttp"
                            ) -> AsyncIterator[tuple[str, int]]:
    """The OneNET simulator in a process of its own (``server``: its HTTP server, see
    ``simulate onenet --server``): its URL and pid."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(scenario, f)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "simulate", "onenet",
                             "--port", str(port), "--scenario", f.name, "--server", server],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCH_LOG_LEVEL": "error"})
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(f"{url}/sim/state"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait)
        os.unlink(f.name)


def checks_scenario() -> dict[str, Any]:
    return {"credentials": {"product_id": PRODUCT_ID, "access_key": DEMO_ACCESS_KEY},
            "server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1024}],
            "strategies": [{"type": "fota", "package": "p", "signal": 0, "power": 0}]}


@contextlib.asynccontextmanager
async def private_broker(settings: Settings, say: Say) -> AsyncIterator[Settings]:
    """A Mosquitto of the bench's own with no in-flight cap and a deep queue, so neither side
    loses messages to the broker's defaults and the clients are what is measured; the
    configured broker when no mosquitto binary is installed."""
    exe = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin")
    if exe is None:
        say("  (no mosquitto binary: measuring through ORCH_MQTT_URL's broker)")
        yield settings
        return
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = os.path.join(tmp, "mosquitto.conf")
        await asyncio.to_thread(
            Path(conf).write_text, f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\n")
        proc = await asyncio.create_subprocess_exec(exe, "-c", conf,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            yield dataclasses.replace(settings, mqtt_url=MqttUrl("mqtt", "127.0.0.1", port))
        finally:
            proc.terminate()
            await proc.wait()


def fleet_process(s: Settings, n: int, first: int, *args: str) -> subprocess.Popen[bytes]:
    """``simulate fleet`` in a process of its own: ``n`` devices from ``first`` on ``s``'s
    broker and prefix, a status an hour, fast installs, and these further flags."""
    u = s.mqtt_url
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "simulate", "fleet", "--devices", str(n),
         "--first-id", str(first), "--status-interval", "3600", "--install-time", "0.05",
         "--bandwidth", "10000000", *args],
        env={**os.environ, "ORCH_MQTT_URL": f"mqtt://{u.host}:{u.port}",
             "ORCH_MQTT_TOPIC_PREFIX": s.mqtt_topic_prefix, "ORCH_MQTT_PROTOCOL": s.mqtt_protocol,
             "ORCH_LOG_LEVEL": "error"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
