"""Broker accounts in PostgreSQL: bulk creation and rotation through COPY, revocation, the
pages of registered devices to provision, and the password-file lines a broker reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.domain.accounts import ITERATIONS, Issued
from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def active(conn: Connection, dev_ids: Sequence[int]) -> set[int]:
    """Those of these devices that have an account not revoked."""
    return {r[0] for r in await conn.fetch(q("accounts_active"), list(dev_ids))}


async def stage(conn: Connection) -> None:
    """Open the staging table (inside the caller's transaction)."""
    await conn.execute(q("accounts_stage"))


async def add_to_stage(conn: Connection, issued: Sequence[Issued], role: str) -> None:
    await conn.copy_records_to_table(
        "account_stage", records=[(i.username, i.dev_id, role, i.salt, i.digest)
                                  for i in issued])


async def save_stage(conn: Connection) -> tuple[int, int]:
    """Move the staged accounts in: (created, rotated)."""
    row = await conn.fetchrow(q("accounts_from_stage"), ITERATIONS)
    assert row is not None
    return int(row["created"]), int(row["rotated"])


async def service_exists(conn: Connection, username: str) -> bool:
    return bool(await conn.fetchval(q("accounts_service_exists"), username))


async def revoke(conn: Connection, dev_ids: Sequence[int]) -> list[int]:
    return sorted(r[0] for r in await conn.fetch(q("accounts_revoke"), list(dev_ids)))


async def registered(conn: Connection, after: int, limit: int, *, manuf: str | None = None,
                     model: str | None = None, with_account: bool = False) -> list[int]:
    """A page of registered device ids after ``after``; only those without an active account
    unless ``with_account``."""
    return [r[0] for r in await conn.fetch(q("accounts_registered"), after, limit, manuf,
                                           model, with_account)]


async def lines(conn: Connection, role: str) -> bytes:
    """Every active account of ``role`` as password-file lines."""
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(bytes(data))

    await conn.copy_from_query(q("accounts_lines"), role, output=sink)
    return b"".join(chunks)


async def changed(conn: Connection, lo: int, hi: int) -> list[dict[str, Any]]:
    """The accounts of change numbers ``lo``..``hi`` as they are now."""
    return [dict(r.items()) for r in await conn.fetch(q("accounts_changed"), lo, hi)]


async def counts(conn: Connection) -> dict[str, int]:
    row = await conn.fetchrow(q("accounts_count"))
    assert row is not None
    return {k: int(v) for k, v in row.items()}
