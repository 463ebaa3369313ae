"""What the benchmarks share: the report line, a scratch database, the OneNET simulator in
its own process, bare aiohttp checks (the raw limit of the check path)."""

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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from orchestrator.config import MqttUrl, Settings
from orchestrator.sim import DEMO_ACCESS_KEY
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
    admin = await asyncpg.connect(dsn)
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
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def raw_checks(url: str, n: int, concurrency: int, body: Callable[[int], dict[str, Any]],
                     headers: dict[str, str]) -> float:
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as http:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem, http.post(f"{url}/ota/south/check", json=body(i),
                                      headers=headers) as r:
                await r.read()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def simulator_process(scenario: dict[str, Any]) -> AsyncIterator[str]:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(scenario, f)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "simulate", "onenet",
                             "--port", str(port), "--scenario", f.name],
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
        yield url
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
