"""The whole system in one test's event loop: simulator, service, fleet — all real."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from typing import Any

import asyncpg

from conftest import SIM_KEY, orchestrator_env
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.service import Service
from orchestrator.sim.fleet import Fleet, FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign


class Stack:
    def __init__(self, settings: Settings, sim: Any, devices: list[SimDevice],
                 fleet_config: FleetConfig | None = None) -> None:
        self.settings = dataclasses.replace(
            settings, onenet_url=sim.url, onenet_product_id="123123",
            onenet_access_key=SIM_KEY, api_listen="127.0.0.1:0",
            scheduler_poll_interval=0.1, ingest_flush_interval=0.02)
        self.sim = sim
        self.fleet = Fleet(self.settings.mqtt_url, self.settings.mqtt_topic_prefix, devices,
                           fleet_config or FleetConfig(status_interval=3600, install_time=0.05),
                           client_id=f"fleet-{self.settings.mqtt_topic_prefix}")
        self.stop = asyncio.Event()
        self.fleet_stop = asyncio.Event()
        self.service: Service | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    async def start_service(self) -> Service:
        self.service = Service(self.settings)
        self.stop = asyncio.Event()
        self.service.stop = self.stop
        self.tasks.append(asyncio.create_task(self.service.run()))
        await asyncio.wait_for(self.service.ready.wait(), 15)
        assert self.service.ingest is not None
        await asyncio.wait_for(self.service.ingest.connected.wait(), 15)
        return self.service

    async def start_fleet(self) -> None:
        self.tasks.append(asyncio.create_task(self.fleet.run(self.fleet_stop)))
        await asyncio.wait_for(self.fleet.connected.wait(), 15)

    async def __aenter__(self) -> Stack:
        await self.start_service()
        await self.start_fleet()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        self.fleet_stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def start_campaign(self, spec: CampaignSpec) -> int:
        """Create and start a campaign; its id."""
        conn = await connect(self.settings.database_url or "")
        try:
            return await create_campaign(conn, spec, start=True)
        finally:
            await conn.close()

    async def wait_devices(self, n: int, timeout: float = 20) -> None:
        await until(lambda: self.fetchval("SELECT count(*) >= $1 FROM ota.devices"
                                          " WHERE fota_version IS NOT NULL", n), timeout)

    async def wait_status(self, campaign_id: int, *statuses: str, timeout: float = 60) -> Any:
        await until(lambda: self.fetchval(
            "SELECT status = ANY($2) FROM ota.campaigns WHERE campaign_id = $1",
            campaign_id, list(statuses)), timeout)
        return (await self.fetch("SELECT * FROM ota.campaign_progress WHERE campaign_id = $1",
                                 campaign_id))[0]


async def until(predicate: Any, timeout: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting {what or predicate}")
        await asyncio.sleep(0.1)


async def start_run(env: dict[str, str], name: str | None) -> subprocess.Popen[str]:
    """``orchestrator run`` once its ingest subscribed; ``name``: its client id (None: the
    default, a free slot of this host)."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run"],
                            env={**env, "ORCH_MQTT_CLIENT_ID": name} if name else env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, f"{name} exited early"
        if "mqtt ingest subscribed" in line:
            break
    # keep draining output so the process never blocks on a full pipe
    asyncio.get_running_loop().run_in_executor(None, proc.stdout.read)
    return proc


async def wait_registered(dsn: str, n: int) -> None:
    async def ok() -> bool:
        conn = await connect(dsn)
        try:
            return bool(await conn.fetchval("SELECT count(*) = $1 FROM ota.devices", n))
        finally:
            await conn.close()
    await until(ok, 30, "devices registered")


def env_for(settings: Settings, sim_url: str, **extra: str) -> dict[str, str]:
    s = dataclasses.replace(settings, onenet_url=sim_url, onenet_product_id="123123",
                            onenet_access_key=SIM_KEY)
    env = orchestrator_env(s)
    env.update({"ORCH_SCHEDULER_POLL_INTERVAL": "0.1", "ORCH_SCHEDULER_BATCH_SIZE": "20",
                **extra})
    return env


async def stop_runs(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every `orchestrator run` process, then wait for each."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        await asyncio.to_thread(p.wait, 30)
