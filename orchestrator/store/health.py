"""Our own health, shared by the replicas: heartbeats, and the end of our last outage."""

from __future__ import annotations

from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def gap_end(conn: Connection) -> float:
    """Our side has been healthy since this time (epoch seconds), at best."""
    return float(await conn.fetchval(q("health_gap_end")))


async def mark_gap(conn: Connection) -> None:
    await conn.execute(q("health_mark_gap"))


async def beat(conn: Connection, owner: str, ingest_ok: bool,
               max_in_flight: int | None = None) -> None:
    """A replica's heartbeat, with its ingest's health and its ORCH_MAX_IN_FLIGHT."""
    await conn.execute(q("replica_beat"), owner, ingest_ok, max_in_flight)


async def gone(conn: Connection, owner: str) -> None:
    await conn.execute(q("replica_gone"), owner)


async def unhealthy(conn: Connection, stale_after: float) -> list[str]:
    rows = await conn.fetch(q("replicas_unhealthy"), stale_after)
    return [r["owner"] for r in rows]


async def forget(conn: Connection, silent_for: float) -> list[str]:
    return [r["owner"] for r in await conn.fetch(q("replicas_forget"), silent_for)]


async def event_partitions(conn: Connection, keep_days: int) -> tuple[int, int]:
    """Make the next days' event partitions; drop those past retention: (made, dropped)."""
    made = int(await conn.fetchval(q("events_partitions")))
    dropped = int(await conn.fetchval(q("events_retention"), keep_days))
    return made, dropped


async def checks_total(conn: Connection) -> int:
    """Check calls made so far, over every campaign (the controller samples it)."""
    return int(await conn.fetchval(q("checks_total")))


async def set_check_rate(conn: Connection, per_minute: float) -> None:
    await conn.execute(q("health_check_rate_set"), per_minute)


async def check_rate(conn: Connection) -> float | None:
    """The fleet's check rate per minute, measured in the last day, if any."""
    value = await conn.fetchval(q("health_check_rate"))
    return None if value is None else float(value)
