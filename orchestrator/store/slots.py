"""A replica's slot: the lowest number no other replica of the same host name holds, held as
a PostgreSQL advisory lock for as long as the replica lives. It names the replica's MQTT
client id (``orchestrator-<host>-<slot>``) without configuration: two replicas on one host
never share one (they would take each other's session over and over), and a replica that
restarts takes its old slot, and with it its persistent session, back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import structlog

from orchestrator.store.db import Connection, connect
from orchestrator.store.queries import q

log = structlog.get_logger(__name__)
MAX_SLOTS = 4096


class SlotLost(RuntimeError):
    """Another replica took our slot while the database was away."""


def _key(base: str) -> int:
    return int.from_bytes(hashlib.sha256(b"ota-slot:" + base.encode()).digest()[:4], "big",
                          signed=True)


class Slot:
    def __init__(self, dsn: str, base: str) -> None:
        self.dsn = dsn
        self.base = base
        self.key = _key(base)
        self.number: int | None = None
        self.conn: Connection | None = None

    @property
    def name(self) -> str:
        assert self.number is not None
        return f"{self.base}-{self.number}"

    async def acquire(self) -> str:
        self.conn = await connect(self.dsn)
        for n in range(MAX_SLOTS):
            if await self.conn.fetchval(q("slot_try"), self.key, n):
                self.number = n
                return self.name
        raise RuntimeError(f"all {MAX_SLOTS} client id slots of {self.base} are taken")

    async def hold(self, stop: asyncio.Event, every: float = 5.0) -> None:
        """Keep the lock's connection alive; after losing it, take the same slot again (or
        raise SlotLost: the replica must restart to get a client id of its own)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
                break
            except TimeoutError:
                pass
            try:
                assert self.conn is not None
                await self.conn.fetchval("SELECT 1", timeout=every)
                continue
            except Exception as exc:  # the connection is gone: take the slot again
                log.warning("client id slot: database connection lost", error=str(exc)[:200])
            await self._retake(stop, every)

    async def _retake(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            try:
                if self.conn is not None:
                    self.conn.terminate()
                self.conn = await connect(self.dsn)
                if await self.conn.fetchval(q("slot_try"), self.key, self.number):
                    log.info("client id slot held again", client_id=self.name)
                    return
                raise SlotLost(f"client id {self.name} was taken by another replica while "
                               "the database was away: this replica stops, so that both do "
                               "not take each other's MQTT session")
            except SlotLost:
                raise
            except Exception as exc:
                log.warning("client id slot: database unavailable", error=str(exc)[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)

    async def release(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close(timeout=2)
            except Exception:   # a closing connection: nothing to keep
                self.conn.terminate()
            self.conn = None
