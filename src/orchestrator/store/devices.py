"""Device registry queries. Rows become typed values here and nowhere else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.domain.payloads import StatusReport


@dataclass(frozen=True, slots=True)
class Device:
    dev_id: int
    manuf: str | None
    model: str | None
    fota_version: str | None
    sota_version: str | None
    signal: int | None
    power: int | None
    status_at: dt.datetime | None
    last_seen: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("status_at", "last_seen"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


_COLUMNS = "dev_id, manuf, model, fota_version, sota_version, signal, power, status_at, last_seen"


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
            )
    return [merged[k] for k in sorted(merged)]


UPSERT_STATUS = """
INSERT INTO ota.devices AS d
    (dev_id, manuf, model, fota_version, sota_version, signal, power, status_at, last_seen)
SELECT u.dev_id, u.manuf, u.model, u.fota, u.sota, u.signal, u.power,
       CASE WHEN u.signal IS NOT NULL OR u.power IS NOT NULL THEN now() END, now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::int[], $7::int[]) AS u(dev_id, manuf, model, fota, sota, signal, power)
ORDER BY u.dev_id
ON CONFLICT (dev_id) DO UPDATE SET
    manuf = coalesce(EXCLUDED.manuf, d.manuf),
    model = coalesce(EXCLUDED.model, d.model),
    fota_version = coalesce(EXCLUDED.fota_version, d.fota_version),
    sota_version = coalesce(EXCLUDED.sota_version, d.sota_version),
    signal = coalesce(EXCLUDED.signal, d.signal),
    power = coalesce(EXCLUDED.power, d.power),
    status_at = coalesce(EXCLUDED.status_at, d.status_at),
    last_seen = EXCLUDED.last_seen,
    updated_at = now()
"""


def status_columns(rows: Sequence[StatusReport]) -> list[list[Any]]:
    return [
        [r.dev_id for r in rows],
        [r.manuf for r in rows],
        [r.model for r in rows],
        [r.fota_version for r in rows],
        [r.sota_version for r in rows],
        [r.signal for r in rows],
        [r.power for r in rows],
    ]


async def upsert_status(conn: Any, reports: Iterable[StatusReport]) -> int:
    rows = merge_reports(reports)
    if rows:
        await conn.execute(UPSERT_STATUS, *status_columns(rows))
    return len(rows)


def _device(row: Any) -> Device:
    return Device(**dict(row))


async def get_device(conn: Any, dev_id: int) -> Device | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM ota.devices WHERE dev_id = $1", dev_id)
    return _device(row) if row else None


async def list_devices(
    conn: Any,
    *,
    manuf: str | None = None,
    model: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[Device]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM ota.devices"
        " WHERE dev_id > $1 AND ($2::text IS NULL OR manuf = $2)"
        " AND ($3::text IS NULL OR model = $3) ORDER BY dev_id LIMIT $4",
        after, manuf, model, limit,
    )
    return [_device(r) for r in rows]


async def import_devices(conn: Any, rows: Sequence[StatusReport]) -> int:
    """Insert or update registry rows (no status time: an import is not a report)."""
    rows = merge_reports(rows)
    if not rows:
        return 0
    await conn.execute(
        """
        INSERT INTO ota.devices AS d (dev_id, manuf, model, fota_version, sota_version,
                                      signal, power)
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::int[], $7::int[]) ORDER BY 1
        ON CONFLICT (dev_id) DO UPDATE SET
            manuf = coalesce(EXCLUDED.manuf, d.manuf),
            model = coalesce(EXCLUDED.model, d.model),
            fota_version = coalesce(EXCLUDED.fota_version, d.fota_version),
            sota_version = coalesce(EXCLUDED.sota_version, d.sota_version),
            updated_at = now()
        """,
        *status_columns(rows),
    )
    return len(rows)
