"""The command outbox: commands written in the transaction that decides them, taken by one
publisher at a time (SKIP LOCKED) and gone once that transaction commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def enqueue(conn: Connection, commands: Sequence[tuple[int, dict[str, Any]]]) -> list[int]:
    """Queue commands; each payload is encoded once here and published as stored."""
    if not commands:
        return []
    rows = await conn.fetch(q("outbox_insert"), [c[0] for c in commands],
                            [orjson.dumps(c[1]).decode() for c in commands])
    return [r["id"] for r in rows]


async def take(conn: Connection, ids: Sequence[int] | None, limit: int) -> list[tuple[int, str]]:
    """These queued commands (or the oldest ``limit``), skipping those another publisher
    holds; deleted when the transaction commits."""
    if ids is not None:
        if not ids:
            return []
        rows = await conn.fetch(q("outbox_take_ids"), list(ids))
    else:
        rows = await conn.fetch(q("outbox_take"), limit)
    return [(r["dev_id"], r["payload"]) for r in rows]
