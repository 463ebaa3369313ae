"""asyncpg pool and connection set-up."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def _init(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Any:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init,
                                     command_timeout=60)


async def connect(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    await _init(conn)
    return conn
