"""Progress steps to pass on to OneNET, kept in PostgreSQL until OneNET answered them."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.domain.progress import Relay
from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def add(conn: Connection, relays: Sequence[Relay]) -> None:
    if relays:
        await conn.execute(q("relays_insert"), [r.dev_id for r in relays],
                           [r.token for r in relays], [r.step for r in relays])


async def lease(conn: Connection, limit: int, seconds: float) -> list[Relay]:
    """The oldest due relays, held for ``seconds`` (SKIP LOCKED: one replica each)."""
    rows = await conn.fetch(q("relays_lease"), limit)
    if rows:
        await conn.execute(q("relays_hold"), [r["id"] for r in rows], seconds, 0)
    return [Relay(r["token"], r["dev_id"], r["step"], r["id"], r["attempts"]) for r in rows]


async def done(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(q("relays_delete"), list(ids))


async def retry_later(conn: Connection, ids: Sequence[int], seconds: float) -> None:
    await conn.execute(q("relays_hold"), list(ids), seconds, 1)
