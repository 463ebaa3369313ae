"""Numbered SQL migrations, applied under an advisory lock (safe from many replicas)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import structlog

from orchestrator.domain.catalogue import MODULES
from orchestrator.store.db import Connection, connect
from orchestrator.store.queries import q, sql_dir

log = structlog.get_logger(__name__)

# pg_advisory_lock key: the bytes "ota-migr" as a signed 64-bit integer
LOCK_KEY = int.from_bytes(b"ota-migr", "big", signed=True)
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    out = []
    for entry in sorted(sql_dir().iterdir()):
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {versions}")
    return out


async def migrate(dsn: str) -> list[Migration]:
    """Apply pending migrations; return those applied by this call."""
    applied_now: list[Migration] = []
    conn = await connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS ota;"
                "CREATE TABLE IF NOT EXISTS ota.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"]: r["checksum"] for r in
                    await conn.fetch("SELECT version, checksum FROM ota.schema_migrations")}
            for m in load_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version:03d}_{m.name} changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO ota.schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)", m.version, m.name, m.checksum)
                log.debug("migration applied", version=m.version, name=m.name)
                applied_now.append(m)
            await _modules(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()
    return applied_now


async def _modules(conn: Connection) -> None:
    """OneNET's module table into ``ota.modules``, from the domain's copy (the one source):
    every name pair and every code pair a device may report."""
    pairs = sorted({(m.manuf, m.model) for m in MODULES}
                   | {(m.manuf_code, m.model_code) for m in MODULES})
    await conn.execute(q("modules_sync"), [list(p) for p in pairs])


async def pending(conn: Connection) -> list[Migration]:
    exists = await conn.fetchval("SELECT to_regclass('ota.schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {r["version"] for r in await conn.fetch("SELECT version FROM ota.schema_migrations")}
    return [m for m in load_migrations() if m.version not in done]
