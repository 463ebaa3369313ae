"""asyncpg pools and connections, typed at the boundary: the store's functions take a
:class:`Connection` (the part of asyncpg's API they use), never ``Any``."""

from __future__ import annotations

import operator
from collections.abc import AsyncIterable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg
import orjson


class Record(Protocol):
    def __getitem__(self, key: str | int | slice) -> Any: ...
    def keys(self) -> Any: ...
    def items(self) -> Any: ...


class Connection(Protocol):
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...
    async def fetch(self, query: str, *args: Any,
                    timeout: float | None = None) -> list[Record]: ...
    async def fetchrow(self, query: str, *args: Any,
                       timeout: float | None = None) -> Record | None: ...
    async def fetchval(self, query: str, *args: Any, column: int = 0,
                       timeout: float | None = None) -> Any: ...
    async def executemany(self, command: str, args: Sequence[Sequence[Any]], *,
                          timeout: float | None = None) -> None: ...
    async def copy_records_to_table(self, table_name: str, *, records: Any,
                                    columns: Sequence[str] | None = None,
                                    schema_name: str | None = None,
                                    timeout: float | None = None) -> str: ...
    async def copy_from_query(self, query: str, *args: Any, output: Any,
                              timeout: float | None = None, format: str | None = None
                              ) -> str: ...
    async def add_listener(self, channel: str, callback: Any) -> None: ...
    def cursor(self, query: str, *args: Any, prefetch: int | None = None,
               timeout: float | None = None) -> AsyncIterable[Record]: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def close(self, *, timeout: float | None = None) -> None: ...
    def terminate(self) -> None: ...


class Pool(Protocol):
    def acquire(self) -> AbstractAsyncContextManager[Connection]: ...
    async def close(self) -> None: ...


def picker(record: Record, names: Sequence[str]) -> Callable[[Record], tuple[Any, ...]]:
    """Read these columns by name at the cost of reading them by position: their positions
    are looked up once, in the first row of a result, and every row is read through one
    ``itemgetter`` (a statement's columns may move without a reader noticing wrong data)."""
    keys = list(record.keys())
    missing = [n for n in names if n not in keys]
    if missing:
        raise KeyError(f"columns not in the result: {missing}")
    positions = [keys.index(n) for n in names]
    first = positions[0]
    if positions == list(range(first, first + len(positions))):
        return operator.itemgetter(slice(first, first + len(positions)))  # one slice: faster
    return operator.itemgetter(*positions)


async def _init(conn: Connection) -> None:
    for kind in ("jsonb", "json"):
        await conn.set_type_codec(kind, encoder=_dumps, decoder=orjson.loads,  # type: ignore[attr-defined]
                                  schema="pg_catalog")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    pool: Pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                           init=_init, command_timeout=60)
    return pool


async def connect(dsn: str) -> Connection:
    conn: Connection = await asyncpg.connect(dsn)
    await _init(conn)
    return conn
