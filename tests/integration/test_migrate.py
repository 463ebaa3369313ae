import asyncio
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg

from orchestrator.store.migrate import load_migrations, migrate

VIEW_COLUMNS = {
    "campaign_progress": ["campaign_id", "name", "status", "type", "target_version", "total",
                          "pending", "in_progress", "succeeded", "failed", "no_task",
                          "cancelled", "started_at", "finished_at",
                          # 008 (views only gain columns, at the end)
                          "unreachable", "remaining", "rate_per_min", "eta_at", "in_flight",
                          # 012
                          "status_reason", "current_wave", "waves_total", "eta_note"],
    "device_progress": ["campaign_id", "dev_id", "state", "attempts", "last_errno", "last_step",
                        "next_attempt_at", "updated_at", "reason"],
    "check_outcomes": ["campaign_id", "errno", "calls", "meaning"],
}


async def view_columns(dsn: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'ota' AND table_name = ANY($1) ORDER BY ordinal_position",
            list(VIEW_COLUMNS))
    finally:
        await conn.close()
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["table_name"], []).append(r["column_name"])
    return out


async def test_migrate_twice_is_idempotent(empty_database: str) -> None:
    first = await migrate(empty_database)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    assert await migrate(empty_database) == []
    assert await view_columns(empty_database) == VIEW_COLUMNS


async def test_migrate_from_two_processes_at_once(empty_database: str) -> None:
    env = {"ORCH_DATABASE_URL": empty_database, "ORCH_LOG_FORMAT": "json", "PATH": "/usr/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "migrate"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [await asyncio.to_thread(p.communicate, timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    applied = [o for o, _ in outs if "applied 001_init" in o]
    assert len(applied) == 1, outs
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ota.schema_migrations") == len(
            load_migrations())
    finally:
        await conn.close()


async def test_views_are_empty_until_campaigns_exist(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        for view in VIEW_COLUMNS:
            assert await conn.fetchval(f"SELECT count(*) FROM ota.{view}") == 0
    finally:
        await conn.close()


def test_sql_ships_inside_the_wheel(tmp_path: Path) -> None:
    """``pip install .`` must still migrate: the top-level sql/ is packed as
    orchestrator/sql, and the loader finds it there."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(root)], check=True, timeout=120)
    wheel = next(tmp_path.glob("orchestrator-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sql = {p.name for p in (root / "sql").iterdir() if p.suffix == ".sql"}
    assert {"001_init.sql", "queries.sql"} <= sql
    assert {f"orchestrator/sql/{n}" for n in sql} <= names, sorted(names)
