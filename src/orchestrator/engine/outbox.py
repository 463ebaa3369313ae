"""Commands go out through ``ota.outbox``: written in the transaction that records the
decision, published right after it commits, and deleted only once the broker has them.

So a device can never report progress for a command the database does not know of yet, a
crash after the commit leaves the command for any replica to publish (at-least-once), and
``FOR UPDATE SKIP LOCKED`` keeps two publishers off the same row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiomqtt
import orjson

from orchestrator.mqtt.publisher import Publisher


class OutboxNotSent(Exception):
    """The broker did not take the batch; it stays queued."""


async def enqueue(conn: Any, commands: Sequence[tuple[int, dict[str, Any]]]) -> list[int]:
    """Queue commands; each payload is encoded once here and published as stored."""
    if not commands:
        return []
    rows = await conn.fetch(
        "INSERT INTO ota.outbox (dev_id, payload)"
        " SELECT d, p::jsonb FROM unnest($1::bigint[], $2::text[]) AS u(d, p) RETURNING id",
        [c[0] for c in commands], [orjson.dumps(c[1]).decode() for c in commands])
    return [r["id"] for r in rows]


async def _send(conn: Any, publisher: Publisher, rows: Sequence[Any]) -> int:
    if not rows:
        return 0
    try:
        await publisher.publish_many([(r["dev_id"], r["payload"]) for r in rows])
    except aiomqtt.MqttError as exc:
        # leaving the transaction by an exception rolls the DELETE back
        raise OutboxNotSent(str(exc)) from exc
    return len(rows)


async def send(pool: Any, publisher: Publisher, ids: Sequence[int]) -> int:
    """Publish these queued commands now (those another publisher holds are skipped)."""
    if not ids:
        return 0
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM ota.outbox WHERE id IN (SELECT id FROM ota.outbox WHERE id = ANY($1)"
            " ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING dev_id, payload::text", list(ids))
        return await _send(conn, publisher, rows)


async def drain(pool: Any, publisher: Publisher, batch: int = 500) -> int:
    """Publish whatever is queued (cancels, and commands a crashed replica left)."""
    sent = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM ota.outbox WHERE id IN (SELECT id FROM ota.outbox ORDER BY id"
                " LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING dev_id, payload::text", batch)
            if not rows:
                return sent
            sent += await _send(conn, publisher, rows)
