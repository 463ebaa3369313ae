"""``bench enroll``: a campaign over a large registry, beside the database's own bulk
INSERT ... SELECT of as many rows into a copy of the membership table."""

from __future__ import annotations

import datetime as dt
import resource
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import Campaign, CampaignSpec
from orchestrator.store import counts, devices
from orchestrator.store.campaigns import db_now, enroll_late, get_campaign
from orchestrator.store.db import Connection, connect
from orchestrator.tools.bench.common import Say, report, scratch_database
from orchestrator.usecases.campaigns import create as create_campaign
from orchestrator.usecases.common import database_error


async def checkpoint(conn: Connection) -> None:
    """Start each timed step with no checkpoint pending from the previous one's WAL."""
    try:
        await conn.execute("CHECKPOINT")
    except Exception as exc:   # not allowed to (a managed database): measure without
        if database_error(exc) is None:
            raise


async def raw_enrolment(conn: Connection, n: int) -> float:
    """Seconds PostgreSQL takes to INSERT ... SELECT ``n`` rows into a table of the
    membership's shape (its indexes too): the raw limit of an enrolment."""
    await conn.execute("CREATE TABLE bench_raw (LIKE ota.campaign_devices INCLUDING ALL)")
    await checkpoint(conn)
    started = time.perf_counter()
    await conn.execute("INSERT INTO bench_raw (campaign_id, dev_id, wave, next_attempt_at,"
                       " from_version) SELECT 1, g, 0, now(), '1.0'"
                       " FROM generate_series(1, $1::bigint) g", n)
    seconds = time.perf_counter() - started
    await conn.execute("DROP TABLE bench_raw")
    return seconds


async def continuous_passes(conn: Connection, campaign: Campaign, n: int,
                      say: Say) -> tuple[float, float, float]:
    """A continuous campaign's enrolment passes at ``n`` registered devices: the full
    (reconciling) pass, a pass from the watermark with nothing new, and one with 1,000 new
    devices. Each in its own transaction, rolled back where it enrolled anything."""
    async def timed(since: dt.datetime | None) -> float:
        started = time.perf_counter()
        async with conn.transaction():
            await enroll_late(conn, campaign, since)
        return 1000 * (time.perf_counter() - started)

    full = sorted([await timed(None) for _ in range(3)])[1]
    watermark = await db_now(conn) - dt.timedelta(seconds=60)
    idle = sorted([await timed(watermark) for _ in range(21)])[10]
    say(f"  continuous campaign, nothing new: full pass {full:.0f} ms, from the watermark "
        f"{idle:.2f} ms")
    await conn.execute(
        "INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,"
        " status_at, last_seen) SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80, now(),"
        " now() FROM generate_series($1::bigint + 1, $1::bigint + 1000) g", n)
    started = time.perf_counter()
    async with conn.transaction():
        added = await enroll_late(conn, campaign, watermark)
    late = 1000 * (time.perf_counter() - started)
    assert added == 1000, added
    say(f"  ... 1,000 new devices enrolled from the watermark in {late:.1f} ms")
    return full, idle, late


async def bench_enroll(settings: Settings, say: Say, n: int = 1_000_000) -> dict[str, Any]:
    say(f"enroll: a campaign over {n:,} registered devices")
    async with scratch_database(settings) as dsn:
        conn = await connect(dsn)
        try:
            await devices.seed(conn, n)
            # a registry that grew over time: the devices are not all a second old
            await conn.execute("UPDATE ota.devices SET created_at = now() - interval '1 day'")
            await conn.execute("VACUUM ANALYZE ota.devices")
            raw_s = await raw_enrolment(conn, n)
            say(f"  raw INSERT ... SELECT generate_series: {raw_s:.2f} s")
            await checkpoint(conn)
            started = time.perf_counter()
            cid = await create_campaign(conn, CampaignSpec(
                "bench", "fota", "1.3", all_devices=True, waves=(1, 10, 50, 100),
                continuous=True), start=True)
            ours_s = time.perf_counter() - started
            say(f"  orchestrator enrolment (selector, waves, counts): {ours_s:.2f} s")
            await counts.fold(conn)
            timings = []
            for _ in range(20):
                t = time.perf_counter()
                campaign = await get_campaign(conn, cid)
                timings.append(time.perf_counter() - t)
            assert campaign is not None and campaign.counts.total == n, campaign
            timings.sort()
            full_ms, since_ms, late_ms = await continuous_passes(conn, campaign, n, say)
        finally:
            await conn.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report("enroll", "devices/s", n / ours_s, n / raw_s,
                  {"devices": n, "seconds": round(ours_s, 2), "raw_seconds": round(raw_s, 2),
                   "campaign_progress_ms_p50": round(1000 * timings[len(timings) // 2], 2),
                   "campaign_progress_ms_max": round(1000 * timings[-1], 2),
                   "continuous_full_pass_ms": round(full_ms, 1),
                   "continuous_idle_pass_ms": round(since_ms, 2),
                   "continuous_pass_1000_new_ms": round(late_ms, 1),
                   "process_max_rss_mb": round(rss_mb, 1)}, say)


