"""asyncpg pool and connection set-up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import orjson


async def _init(conn: Any) -> None:
    for kind in ("jsonb", "json"):
        await conn.set_type_codec(kind, encoder=_dumps, decoder=orjson.loads,
                                  schema="pg_catalog")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Any:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init,
                                     command_timeout=60)


async def connect(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    await _init(conn)
    return conn


T = TypeVar("T")
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


async def with_retries(pool: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(conn)`` in a transaction, again after a deadlock or serialization failure."""
    for attempt in range(8):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await fn(conn)
        except RETRYABLE:
            await asyncio.sleep(random.uniform(0, 0.02 * 2 ** attempt))
    async with pool.acquire() as conn, conn.transaction():
        return await fn(conn)
