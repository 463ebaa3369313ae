"""Shared fixtures: a real PostgreSQL and a real MQTT broker.

Defaults are the local services on their standard ports; ``ORCH_TEST_DATABASE_URL`` and
``ORCH_TEST_MQTT_URL`` point elsewhere. A template database is migrated once per session
and every test gets its own database created from it, and its own topic prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web

from orchestrator.cli import main
from orchestrator.config import Settings, parse_mqtt_url
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.sim.onenet import Simulator, serve
from orchestrator.sim.scenario import parse_scenario
from orchestrator.store.db import create_pool
from orchestrator.store.migrate import migrate

# Hermetic: the service's settings a user exported for their own deployment (as the README
# shows) never reach the code under test, nor the processes the tests start; only the
# tests' own ORCH_TEST_* (and where the fault suite writes its results) are kept.
for _name in [n for n in os.environ if n.startswith("ORCH_")]:
    if not _name.startswith("ORCH_TEST_") and _name != "ORCH_TEST_FAULT_RESULTS":
        del os.environ[_name]

ADMIN_URL = os.environ.get("ORCH_TEST_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_URL = os.environ.get("ORCH_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def db_url(name: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path="/" + name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"orch_tmpl_{os.getpid()}"

    async def setup() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await migrate(db_url(name))

    async def teardown() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


async def _create_db(template: str | None) -> str:
    name = f"orch_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        tmpl = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
    finally:
        await conn.close()
    return name


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database(template_db: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database of this test's own."""
    name = await _create_db(template_db)
    yield db_url(name)
    await _drop_db(name)


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """DSN of a fresh database with no schema."""
    name = await _create_db(None)
    yield db_url(name)
    await _drop_db(name)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database, max_size=6)
    yield p
    await p.close()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database: str, prefix: str) -> Settings:
    return Settings(
        database_url=database,
        mqtt_url=parse_mqtt_url(MQTT_URL),
        mqtt_topic_prefix=prefix,
        mqtt_client_id=f"orch-{prefix}",
        ingest_flush_interval=0.02,
        log_format="json",
    )


def orchestrator_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ORCH_DATABASE_URL": settings.database_url or "",
        "ORCH_MQTT_URL": f"mqtt://{settings.mqtt_url.host}:{settings.mqtt_url.port}",
        "ORCH_MQTT_TOPIC_PREFIX": settings.mqtt_topic_prefix,
        "ORCH_MQTT_CLIENT_ID": settings.mqtt_client_id,
        "ORCH_LOG_FORMAT": "json",
        "ORCH_API_LISTEN": "127.0.0.1:0",
        "ORCH_ONENET_URL": settings.onenet_url,
    })
    for key in ("onenet_product_id", "onenet_access_key", "onenet_authorization"):
        value = getattr(settings, key)
        if value:
            env["ORCH_" + key.upper()] = value
    return env


# commands whose process is what a test looks at (signals, long-running services, the
# package's entry point) run as processes; the rest run in this process
PROCESS_COMMANDS = frozenset({"run", "demo", "simulate", "bench"})


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 60, process: bool = False) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGS`` with this environment: in this process (a thread of its own,
    stdin/stdout/stderr captured, as a process would see them: 0.05 s instead of 0.8 s of
    interpreter start-up), or as a process for the commands where the process matters."""
    if process or (args and args[0] in PROCESS_COMMANDS) or "--watch" in args:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, input=input)
    return _run_in_process(list(args), env if env is not None else dict(os.environ), input,
                           timeout)


def _run_in_process(args: list[str], env: dict[str, str], stdin: str | None,
                    timeout: float) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    failure: list[BaseException] = []
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def go() -> None:
        try:
            result.append(main(args, environ=env))
        except BaseException as exc:   # a crash is a test failure, with its traceback
            failure.append(exc)

    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            worker = threading.Thread(target=go, name="cli")
            worker.start()
            worker.join(timeout)
    finally:
        sys.stdin = saved_stdin
        root.handlers[:], root.level = handlers, level
    if worker.is_alive():
        raise subprocess.TimeoutExpired(args, timeout)
    if failure:
        raise failure[0]
    return subprocess.CompletedProcess(args, result[0], out.getvalue(), err.getvalue())


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    """Mosquitto with this configuration, once it answers on ``port``."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not start with {conf}")


class Mosquitto:
    """A private Mosquitto broker with persistence, for tests that restart the broker."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        # as root, mosquitto drops to the mosquitto user, who cannot write our temp dir
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            user + f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nmax_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_mosquitto(self.conf, self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto binary not installed")
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


SIM_KEY = DEMO_ACCESS_KEY


class SimServer:
    """The OneNET simulator, served on a free local port by this test's event loop."""

    def __init__(self, sim: object, runner: object, url: str) -> None:
        self.sim = sim
        self.runner = runner
        self.url = url


@pytest.fixture
async def start_sim() -> AsyncIterator[object]:
    runners = []

    async def start(data: dict | None = None, **kwargs: object) -> SimServer:
        data = dict(data or {})
        data.setdefault("credentials", {"product_id": "123123", "access_key": SIM_KEY})
        sim = Simulator(parse_scenario(data), **kwargs)  # type: ignore[arg-type]
        runner = await serve(sim, "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return SimServer(sim, runner, f"http://{host}:{port}")

    yield start
    for r in runners:
        await r.cleanup()


# --- a misbehaving OneNET endpoint ---------------------------------------------------------

class Misbehaving:
    """A OneNET endpoint answering every call by ``mode``: garbage, errors, silence."""

    def __init__(self) -> None:
        self.mode = "garbage"
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        if self.mode == "garbage":
            return web.Response(body=b"\x00\xffnot json")
        if self.mode == "500":
            return web.Response(status=500, text="oops")
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "close":
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        if self.mode == "wrong_types":
            return web.json_response({"errno": 0, "error": "succ",
                                      "data": {"target": 13, "token": None}})
        if self.mode == "html":
            return web.Response(status=403, text="<html>forbidden</html>")
        if self.mode == "nul_error":
            return web.json_response({"errno": 1, "error": "no\u0000such device" * 40})
        return web.json_response({"errno": 11, "error": "no task"})


@pytest.fixture
async def bad_server() -> Any:
    m = Misbehaving()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", m.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield m, f"http://127.0.0.1:{port}"
    await runner.cleanup()
