"""Device registry queries. Rows become typed values here and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.domain import radio
from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.registry import Device
from orchestrator.store.db import Connection, Record
from orchestrator.store.queries import q


def merge_reports(reports: Iterable[StatusReport]) -> list[StatusReport]:
    """Fold reports per device, later fields over earlier ones, sorted by dev_id.

    One row per device lets a batch be one ``INSERT ... ON CONFLICT`` statement, and the
    sort gives concurrent batches the same lock order (no deadlocks).
    """
    merged: dict[int, StatusReport] = {}
    for r in reports:
        old = merged.get(r.dev_id)
        if old is None:
            merged[r.dev_id] = r
        else:
            merged[r.dev_id] = StatusReport(
                r.dev_id,
                r.manuf if r.manuf is not None else old.manuf,
                r.model if r.model is not None else old.model,
                r.fota_version if r.fota_version is not None else old.fota_version,
                r.sota_version if r.sota_version is not None else old.sota_version,
                r.signal if r.signal is not None else old.signal,
                r.power if r.power is not None else old.power,
                r.cell if r.cell is not None else old.cell,
                r.rsrp if r.rsrp is not None else old.rsrp,
                r.ce_level if r.ce_level is not None else old.ce_level,
            )
    return [merged[k] for k in sorted(merged)]


def status_doc(rows: Sequence[StatusReport]) -> list[tuple[Any, ...]]:
    """Rows as the JSON document the registry's statements take."""
    return [(r.dev_id, r.manuf, r.model, r.fota_version, r.sota_version, r.signal, r.power,
             r.cell, r.rsrp, r.ce_level) for r in rows]


async def upsert_status(conn: Connection, reports: Iterable[StatusReport],
                        period: float = radio.DAY) -> int:
    """Batched reports into the registry, each with signal and power into its device's
    radio profile at this moment's slot of a ``period``-second day."""
    rows = merge_reports(reports)
    if rows:
        await conn.execute(q("device_upsert_status"), status_doc(rows),
                           radio.slot_of(time.time(), period))
    return len(rows)


def _device(row: Record) -> Device:
    return Device(**dict(row.items()))


async def get_device(conn: Connection, dev_id: int) -> Device | None:
    row = await conn.fetchrow(q("device_get"), dev_id)
    return _device(row) if row else None


async def list_devices(
    conn: Connection,
    *,
    manuf: str | None = None,
    model: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[Device]:
    rows = await conn.fetch(q("device_list"), after, manuf, model, limit)
    return [_device(r) for r in rows]


async def import_devices(conn: Connection, rows: Sequence[StatusReport]) -> int:
    """Insert or update registry rows (no status time: an import is not a report)."""
    rows = merge_reports(rows)
    if rows:
        await conn.execute(q("device_import"), status_doc(rows))
    return len(rows)


async def missing(conn: Connection, dev_ids: Sequence[int]) -> list[int]:
    """Those of ``dev_ids`` that are not in the registry, sorted."""
    return list(await conn.fetchval(q("devices_missing"), list(dev_ids)) or [])


async def count_reported(conn: Connection, first: int, last: int) -> int:
    """How many of the devices ``first``..``last`` have reported a FOTA version."""
    return int(await conn.fetchval(q("devices_count_reported"), first, last))


async def known(conn: Connection, dev_ids: Sequence[int]) -> set[int]:
    """Those of ``dev_ids`` already in the registry."""
    return {r[0] for r in await conn.fetch(q("devices_known"), list(dev_ids))}


async def seed(conn: Connection, n: int) -> None:
    """Devices 1..n, M5310 on FOTA 1.2 with a fresh status (benchmarks, staging)."""
    await conn.execute(q("devices_seed"), n)
