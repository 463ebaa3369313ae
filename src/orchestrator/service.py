"""``orchestrator run``: MQTT ingest, the scheduler, the controller and the ops API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from orchestrator.api.app import ApiState, build_app
from orchestrator.config import Settings
from orchestrator.engine.controller import Controller
from orchestrator.engine.scheduler import Scheduler, policy_from
from orchestrator.metrics import Metrics
from orchestrator.mqtt.ingest import Ingest
from orchestrator.mqtt.publisher import Publisher
from orchestrator.onenet.client import OneNetClient
from orchestrator.store.db import create_pool
from orchestrator.store.migrate import pending
from orchestrator.store.progress import Relay
from orchestrator.store.sink import PgSink

log = structlog.get_logger(__name__)


class Service:
    """Owns the pool, the clients and the long-running tasks; ``stop`` drains them."""

    def __init__(self, settings: Settings, *, api: bool = True) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.api = api
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.pool: Any = None
        self.ingest: Ingest | None = None
        self.scheduler: Scheduler | None = None
        self.controller: Controller | None = None
        self.client: OneNetClient | None = None
        self.api_port: int | None = None
        self._relays: set[asyncio.Task[Any]] = set()
        self._relay_sem = asyncio.Semaphore(32)

    def relay(self, relays: Sequence[Relay]) -> None:
        """Pass device progress on to OneNET's progress endpoint, without holding ingest."""
        if not self.settings.onenet_progress_relay or self.client is None:
            return
        for r in relays:
            task = asyncio.create_task(self._relay_one(r))
            self._relays.add(task)
            task.add_done_callback(self._relays.discard)

    async def _relay_one(self, r: Relay) -> None:
        assert self.client is not None
        async with self._relay_sem:
            errno = await self.client.report_progress(r.token, r.dev_id, r.step)
        if errno not in (0, None):
            log.info("progress relay answered", dev_id=r.dev_id, step=r.step, errno=errno)

    async def run(self) -> None:
        s = self.settings
        dsn = s.require_database()
        self.pool = await create_pool(dsn, max_size=10)
        runner: web.AppRunner | None = None
        publisher = Publisher(s, f"{s.mqtt_client_id}-cmd-{os.getpid()}")
        self.client = OneNetClient(s)
        try:
            async with self.pool.acquire() as conn:
                todo = await pending(conn)
            if todo:
                raise RuntimeError(
                    f"database needs {len(todo)} migration(s): run 'orchestrator migrate'")
            policy = policy_from(s)
            self.ingest = Ingest(s, PgSink(self.pool, policy, self.relay), self.metrics)
            self.scheduler = Scheduler(s, self.pool, self.client, publisher, self.metrics,
                                       self.owner, policy)
            self.controller = Controller(self.pool, publisher, self.metrics)
            if self.api:
                runner = web.AppRunner(build_app(ApiState(s, self.pool, self.metrics,
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
            ]
            self.ready.set()
            log.info("orchestrator running", mqtt=repr(s.mqtt_url), onenet=s.onenet_url)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        finally:
            if self._relays:
                await asyncio.wait(self._relays, timeout=5)
            if runner is not None:
                await runner.cleanup()
            await publisher.close()
            await self.client.close()
            await self.pool.close()
            log.info("orchestrator stopped")

    def _ready_checks(self) -> dict[str, bool]:
        return {
            "mqtt": bool(self.ingest and self.ingest.connected.is_set()),
            "onenet_breaker_closed": not (self.client and self.client.breaker_open()),
        }


async def run_service(settings: Settings) -> None:
    service = Service(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _on_signal, service, sig)
    await service.run()


def _on_signal(service: Service, sig: signal.Signals) -> None:
    log.info("signal received, draining", signal=sig.name)
    service.stop.set()
