"""The operator's registry use cases: import a CSV (all or nothing, or the good rows), list,
show a device with its campaigns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.registry import Device
from orchestrator.store import campaigns as campaign_store
from orchestrator.store.db import Connection
from orchestrator.store.devices import get_device, import_devices, list_devices

__all__ = ["Device", "import_rows", "listing", "show"]


async def import_rows(conn: Connection, rows: Sequence[StatusReport]) -> int:
    """Insert or update registry rows in one transaction (what a device reported itself
    wins over the file)."""
    async with conn.transaction():
        return await import_devices(conn, rows)


async def listing(conn: Connection, *, manuf: str | None = None, model: str | None = None,
                  after: int = 0, limit: int = 100) -> list[Device]:
    return await list_devices(conn, manuf=manuf, model=model, after=after, limit=limit)


async def show(conn: Connection, dev_id: int) -> tuple[Device | None, list[dict[str, Any]]]:
    """The device (None: not registered) and its campaigns, newest first."""
    device = await get_device(conn, dev_id)
    return device, (await campaign_store.of_device(conn, dev_id) if device else [])
