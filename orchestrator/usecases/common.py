"""What every use case and its callers share: a database connection, and database errors
as the port's two kinds (classified once, in ``store.database``): ``DatabaseUnavailable``
(not now: a 503, or 'cannot connect') and ``DataRejected`` (refused on its content)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

from orchestrator.ports import DatabaseUnavailable, DataRejected
from orchestrator.store.database import translate
from orchestrator.store.db import Connection, Pool, connect, create_pool
from orchestrator.store.migrate import migrate

__all__ = ["Connection", "DataRejected", "DatabaseUnavailable", "Pool", "acquire",
           "connection", "create_pool", "database_error", "iso", "migrate", "ping"]


def database_error(exc: BaseException) -> DatabaseUnavailable | DataRejected | None:
    """The port's error for a database error (None: not one)."""
    ported = translate(exc)
    return ported if isinstance(ported, DatabaseUnavailable | DataRejected) else None


def _reraise(exc: Exception) -> NoReturn:
    """Raise ``exc`` again, as the port's database error when it is one."""
    ported = database_error(exc)
    if ported is None:
        raise exc
    raise ported from exc


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[Connection]:
    """One connection for one command; database errors leave as the port's."""
    try:
        conn = await connect(dsn)
    except Exception as exc:
        _reraise(exc)
    try:
        yield conn
    except Exception as exc:
        _reraise(exc)
    finally:
        try:
            await conn.close(timeout=5)
        except Exception:   # a broken connection: nothing left to close cleanly
            conn.terminate()


@asynccontextmanager
async def acquire(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection; database errors leave as the port's."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except Exception as exc:
        _reraise(exc)


async def ping(pool: Pool) -> bool:
    """Does the database answer? (False: unavailable; any other error is raised.)"""
    try:
        async with acquire(pool) as conn:
            await conn.fetchval("SELECT 1")
        return True
    except DatabaseUnavailable:
        return False


def iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def iso_datetime(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).isoformat()
