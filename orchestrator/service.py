"""The composition root of ``orchestrator run``: builds the adapters (pool, MQTT, OneNET
client, API) and hands them to the workers (ingest, scheduler, controller) through their
ports; ``stop`` drains them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

import structlog
from aiohttp import web

from orchestrator.api.app import ApiState, build_app
from orchestrator.config import Settings, client_id_base
from orchestrator.metrics import Metrics
from orchestrator.mqtt.ingest import Ingest
from orchestrator.mqtt.publisher import Publisher
from orchestrator.onenet.client import OneNetClient
from orchestrator.runtime import stop_on_signals
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import Pool, create_pool
from orchestrator.store.migrate import pending
from orchestrator.store.slots import Slot
from orchestrator.workers.controller import Controller
from orchestrator.workers.progress import ProgressSink
from orchestrator.workers.relay import Relayer
from orchestrator.workers.scheduler import Scheduler, policy_from

log = structlog.get_logger(__name__)


class Service:
    """Owns the pool, the clients and the long-running tasks; ``stop`` drains them."""

    def __init__(self, settings: Settings, *, api: bool = True) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.max_in_flight.set(settings.max_in_flight or 0)
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.api = api
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.pool: Pool | None = None
        self.db: PgDatabase | None = None
        self.ingest: Ingest | None = None
        self.scheduler: Scheduler | None = None
        self.controller: Controller | None = None
        self.client: OneNetClient | None = None
        self.api_port: int | None = None
        self.relayer: Relayer | None = None

    async def run(self) -> None:
        dsn = self.settings.require_database()
        slot: Slot | None = None
        if self.settings.mqtt_client_id is None:
            slot = Slot(dsn, client_id_base())
            client_id = await slot.acquire()
            self.settings = dataclasses.replace(self.settings, mqtt_client_id=client_id)
            log.info("mqtt client id from this host's free slot", client_id=client_id)
        try:
            await self._run(dsn, slot)
        finally:
            if slot is not None:
                await slot.release()

    async def _run(self, dsn: str, slot: Slot | None) -> None:
        s = self.settings
        assert s.mqtt_client_id is not None
        self.pool = pool = await create_pool(dsn, max_size=10)
        self.db = db = PgDatabase(pool)
        runner: web.AppRunner | None = None
        publisher = Publisher(s, f"{s.mqtt_client_id}-cmd-{os.getpid()}")
        self.client = OneNetClient(s)
        try:
            async with pool.acquire() as conn:
                todo = await pending(conn)
            if todo:
                raise RuntimeError(
                    f"database needs {len(todo)} migration(s): run 'orchestrator migrate'")
            policy = policy_from(s)
            sink = ProgressSink(db, policy, relay=s.onenet_progress_relay,
                                require_attempt=s.progress_require_attempt)
            self.ingest = Ingest(s, sink, self.metrics)
            self.scheduler = Scheduler(s, db, self.client, publisher, self.metrics,
                                       self.owner, policy)
            self.controller = Controller(
                db, publisher, self.metrics, owner=s.mqtt_client_id,
                ingest_ok=self.ingest.connected.is_set,
                session_expiry=s.mqtt_session_expiry,
                event_retention_days=s.event_retention_days, max_in_flight=s.max_in_flight)
            self.relayer = Relayer(db, self.client, self.metrics)
            if self.api:
                runner = web.AppRunner(build_app(ApiState(s, pool, self.metrics,
                                                          self._ready_checks)),
                                       access_log=None)
                await runner.setup()
                await web.TCPSite(runner, s.api_host, s.api_port).start()
                self.api_port = runner.addresses[0][1]
                log.info("ops API listening", address=f"{s.api_host}:{self.api_port}")
            tasks = [
                asyncio.create_task(self.ingest.run(self.stop), name="ingest"),
                asyncio.create_task(self.scheduler.run(self.stop), name="scheduler"),
                asyncio.create_task(self.controller.run(self.stop), name="controller"),
                asyncio.create_task(self.relayer.run(self.stop), name="relay"),
            ]
            if slot is not None:
                tasks.append(asyncio.create_task(slot.hold(self.stop), name="client-id-slot"))
            if not (s.onenet_authorization or (s.onenet_product_id and s.onenet_access_key)):
                log.warning("no OneNET credentials: set ORCH_ONENET_PRODUCT_ID and "
                            "ORCH_ONENET_ACCESS_KEY (or ORCH_ONENET_AUTHORIZATION); the "
                            "platform will refuse every check (errno 1)",
                            onenet=s.onenet_url)
            self.ready.set()
            log.info("orchestrator running", mqtt=repr(s.mqtt_url), onenet=s.onenet_url)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        finally:
            if runner is not None:
                await runner.cleanup()
            await publisher.close()
            await self.client.close()
            await pool.close()
            log.info("orchestrator stopped")

    def _ready_checks(self) -> dict[str, bool]:
        return {
            "mqtt": bool(self.ingest and self.ingest.connected.is_set()),
            "onenet_breaker_closed": not (self.client and self.client.breaker_open()),
        }


async def run_service(settings: Settings) -> None:
    service = Service(settings)
    stop_on_signals(service.stop, "signal received, draining")
    await service.run()
