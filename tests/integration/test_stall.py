"""A stalled database (a lock held, not a connection lost) is our side's outage too: what
devices said meanwhile was not recorded, so no dispatch timeout that overlaps it spends a
device's retry budget. Real PostgreSQL, a real lock."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import asyncpg
from test_members_store import seeded

from conftest import SIM_KEY
from orchestrator.config import Settings
from orchestrator.domain.campaign import Write
from orchestrator.domain.device import DeviceRow
from orchestrator.domain.onenet import Task
from orchestrator.metrics import Metrics
from orchestrator.onenet.client import OneNetClient
from orchestrator.store import members
from orchestrator.store.database import PgDatabase
from orchestrator.workers.scheduler import WAITING_STATES, Scheduler

TASK = Task("1.3", "tok", 2048, 0, 0, 3, 60, "0" * 32, 1, None)
STALL = 1.0                     # PgDatabase(stall_after=...): the 5 s default, shortened


async def hold(dsn: str, table: str, seconds: float, taken: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            taken.set()
            await asyncio.sleep(seconds)
    finally:
        await conn.close()


async def gap_end(db: PgDatabase) -> float:
    async with db.transaction() as tx:
        return await tx.gap_end()


async def test_a_transaction_that_waited_out_a_lock_marks_the_gap(pool: Any,
                                                                 database: str) -> None:
    db = PgDatabase(pool, stall_after=STALL)
    before = await gap_end(db)
    async with db.transaction() as tx:          # quick: no gap
        await tx.running_campaigns()
    assert await gap_end(db) == before
    taken = asyncio.Event()
    holder = asyncio.create_task(hold(database, "ota.campaigns", 1.5, taken))
    await taken.wait()
    async with db.transaction() as tx:          # waits for the lock
        await tx.running_campaigns()
    released = time.time()
    await holder
    assert abs(await gap_end(db) - released) < 1.0


async def test_a_claim_that_waited_out_a_stall_charges_no_dispatch_timeout(
        pool: Any, database: str, start_sim: Any) -> None:
    """A device in flight, heard from since its command, whose dispatch timeout falls due
    while ota.devices is locked: the claim waits out the lock and the device is checked
    again for free. It was charged before (the gap was read before the claim)."""
    srv = await start_sim({})                   # every check: errno 1, no command to publish
    now = time.time()
    async with pool.acquire() as conn:
        cid = await seeded(conn, 1)
        async with conn.transaction():
            claimed = await members.claim(conn, cid, 0, 10, 60.0, "t", WAITING_STATES)
            await members.write(conn, [members_write(cid, claimed[0].rev, now)], "t")
        await conn.execute("UPDATE ota.devices SET last_seen = now()")   # not silent
        # healthy for the last hour: a timeout now is the device's, unless the stall counts
        await conn.execute("UPDATE ota.health SET gap_end = now() - interval '1 hour'")
    taken = asyncio.Event()
    holder = asyncio.create_task(hold(database, "ota.devices", 2.0, taken))
    await taken.wait()
    s = Settings(onenet_url=srv.url, onenet_product_id="123123", onenet_access_key=SIM_KEY)
    async with OneNetClient(s) as client:
        scheduler = Scheduler(s, PgDatabase(pool, stall_after=STALL), client,
                              cast(Any, None), Metrics(), "t")
        assert await scheduler.tick() == 1
    await holder
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT attempts, state FROM ota.campaign_devices")
        reasons = [r[0] for r in await conn.fetch(
            "SELECT reason FROM ota.events WHERE kind = 'transition' ORDER BY event_id")]
    assert row["attempts"] == 0, reasons
    assert any("dispatch_timeout_during_our_outage" in r for r in reasons), reasons


def members_write(cid: int, rev: int, now: float) -> Write:
    row = DeviceRow("dispatched", task=TASK, next_attempt_at=now - 1.0,
                    dispatched_at=now - 60.0, heard_at=now - 60.0, token_expires_at=now + 86_400)
    return Write(cid, 1, rev, "checking", row, "dispatched")
