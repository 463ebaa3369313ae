"""``orchestrator run``: MQTT ingest, the scheduler and the ops API in one process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import structlog

from orchestrator.config import Settings
from orchestrator.metrics import Metrics
from orchestrator.mqtt.ingest import Ingest
from orchestrator.store.db import create_pool
from orchestrator.store.migrate import pending
from orchestrator.store.sink import PgSink

log = structlog.get_logger(__name__)


class Service:
    """Owns the pool and the long-running tasks; ``stop`` drains them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.pool: Any = None
        self.ingest: Ingest | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        dsn = self.settings.require_database()
        self.pool = await create_pool(dsn, max_size=8)
        try:
            async with self.pool.acquire() as conn:
                todo = await pending(conn)
            if todo:
                raise RuntimeError(
                    f"database needs {len(todo)} migration(s): run 'orchestrator migrate'")
            self.ingest = Ingest(self.settings, PgSink(self.pool), self.metrics)
            tasks = [asyncio.create_task(self.ingest.run(self.stop), name="ingest")]
            tasks.extend(await self._extra_tasks())
            self.ready.set()
            log.info("orchestrator running", mqtt=repr(self.settings.mqtt_url))
            _done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        finally:
            await self._close_extra()
            await self.pool.close()
            log.info("orchestrator stopped")

    async def _extra_tasks(self) -> list[asyncio.Task[None]]:
        return []

    async def _close_extra(self) -> None:
        return None


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
