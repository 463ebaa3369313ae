"""The command outbox: commands written in the transaction that decides them, leased by one
publisher at a time (SKIP LOCKED, committed before publishing, so no transaction stays open
while the broker is slow or gone), deleted once the broker acknowledged them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def enqueue(conn: Connection, commands: Sequence[tuple[int, dict[str, Any]]],
                  seconds: float) -> list[tuple[int, int, str]]:
    """Queue commands leased to the caller for ``seconds``, to publish now: (id, dev_id,
    payload), in the order given. Payloads are encoded once here, with the batch, and
    published as stored."""
    if not commands:
        return []
    rows = await conn.fetch(q("outbox_insert"), commands, seconds)
    return [(r[0], r[1], r[2]) for r in rows]


async def lease(conn: Connection, limit: int, seconds: float) -> list[tuple[int, int, str]]:
    """Lease the oldest ``limit`` queued commands no publisher holds for ``seconds``:
    (id, dev_id, payload)."""
    rows = await conn.fetch(q("outbox_lease"), limit, seconds)
    return [(r["id"], r["dev_id"], r["payload"]) for r in rows]


async def delete(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(q("outbox_delete"), list(ids))


async def release(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(q("outbox_release"), list(ids))


async def backlog(conn: Connection) -> int:
    return int(await conn.fetchval(q("outbox_backlog")))
