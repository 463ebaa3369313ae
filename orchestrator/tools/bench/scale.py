"""``bench scale``: one PostgreSQL at a fleet's real size (10,000,000 devices by default).
A registry with a realistic spread of modules and versions and a radio profile per device;
then, at that size: the dry-run plan and the enrolment of every device (beside PostgreSQL's
own INSERT ... SELECT of as many rows), sustained status ingest (beside a bare UPDATE of the
same rows), every dashboard query while the scheduler claims from the campaign, the
continuous campaign's passes, bytes per device and the process's memory."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import random
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain import radio
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.catalogue import MODULES
from orchestrator.domain.payloads import StatusReport
from orchestrator.metrics import Metrics
from orchestrator.mqtt.publisher import Publisher
from orchestrator.onenet.client import OneNetClient
from orchestrator.sim import DEMO_ACCESS_KEY, fast
from orchestrator.sim.fleet import PATTERNS as DAILY
from orchestrator.store.campaigns import get_campaign
from orchestrator.store.database import PgDatabase
from orchestrator.store.db import Connection, connect, create_pool
from orchestrator.tools import grafana
from orchestrator.tools.bench.common import (
    PRODUCT_ID,
    Say,
    checks_scenario,
    report,
    scratch_database,
    simulator_process,
)
from orchestrator.tools.bench.enroll import checkpoint, continuous_passes, raw_enrolment
from orchestrator.usecases import campaigns
from orchestrator.usecases.status import page_data
from orchestrator.workers.progress import ProgressSink
from orchestrator.workers.scheduler import Scheduler

CHUNK = 1_000_000           # registry rows per statement (progress is shown between them)
BATCH = 5_000               # reports per ingest batch: each a different device (no merging)
WRITERS = 2                 # ingest batches in flight at once (two replicas)
GROUPS = 8                  # modules of the fleet, from OneNET's tables
# the share of the fleet on each FOTA version, and the radio patterns' shares
VERSIONS = (("1.2", 70), ("1.1", 20), ("1.0", 10))
PATTERNS = (("steady", 60), ("weak_by_day", 20), ("charging_at_night", 15),
            ("always_weak", 5))
BIG = ("devices", "campaign_devices", "events")     # tables that grow with the fleet

REGISTRY = """
INSERT INTO ota.devices (dev_id, manuf, model, fota_version, sota_version, signal, power,
                         status_at, last_seen, created_at, radio, cell, ce_level)
SELECT g, m.manuf, m.model, v.version, 'app-1', 12 + g % 20, 40 + g % 60,
       now() - (g % 900) * interval '1 second', now() - (g % 900) * interval '1 second',
       now() - interval '30 days', p.radio, 'cell-' || (g % $3::bigint), (g % 20 = 0)::int
FROM generate_series($1::bigint, $2::bigint) g
JOIN bench_modules m ON m.k = g % $4::int
JOIN bench_versions v ON v.k = (g / $4::int) % 100
JOIN bench_profiles p ON p.k = (g / 7) % 100
"""


def _profiles() -> list[list[int]]:
    """A profile per pattern, from two weeks of quarter-hourly reports (the simulator's own
    daily patterns)."""
    out = []
    for name, _ in PATTERNS:
        p: list[int] | None = None
        for step in range(14 * 96):
            signal, power = DAILY[name]((step % 96) / 96, step)
            p = radio.update(p, (step % 96) // 4, signal, power)
        assert p is not None
        out.append(p)
    return out


def _hundredths(shares: tuple[tuple[Any, int], ...]) -> list[int]:
    """Which of ``shares`` each of 100 buckets takes."""
    return [i for i, (_, w) in enumerate(shares) for _ in range(w)]


async def build_registry(conn: Connection, n: int, say: Say) -> float:
    modules = MODULES[:GROUPS]
    await conn.execute("CREATE TEMP TABLE bench_modules (k int, manuf text, model text)")
    await conn.executemany("INSERT INTO bench_modules VALUES ($1, $2, $3)",
                           [(i, m.manuf, m.model) for i, m in enumerate(modules)])
    await conn.execute("CREATE TEMP TABLE bench_versions (k int, version text)")
    await conn.executemany("INSERT INTO bench_versions VALUES ($1, $2)",
                           [(k, VERSIONS[i][0]) for k, i in enumerate(_hundredths(VERSIONS))])
    await conn.execute("CREATE TEMP TABLE bench_profiles (k int, radio smallint[])")
    profiles = _profiles()
    await conn.executemany("INSERT INTO bench_profiles VALUES ($1, $2)",
                           [(k, profiles[i]) for k, i in enumerate(_hundredths(PATTERNS))])
    await conn.execute("ANALYZE bench_modules, bench_versions, bench_profiles")
    started = time.perf_counter()
    cells = max(1, n // 500)                     # ~500 devices per cell
    for first in range(1, n + 1, CHUNK):
        last = min(n, first + CHUNK - 1)
        await conn.execute(REGISTRY, first, last, cells, len(modules))
        say(f"  registry: {last:,} of {n:,} devices ({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def _table_stats(conn: Connection) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count, autoanalyze_count,"
        " pg_total_relation_size('ota.devices') AS bytes FROM pg_stat_user_tables"
        " WHERE relid = 'ota.devices'::regclass")
    assert row is not None
    return dict(row.items())


async def sustained_ingest(dsn: str, n: int, seconds: float, say: Say,
                           bare: bool = False) -> tuple[float, int]:
    """Reports per second through ingest's own write (``ProgressSink.apply``: the status
    upsert with the radio fold, the membership lookups), ``WRITERS`` batches at once, each
    batch ``BATCH`` different devices drawn from the whole fleet; with ``bare``, the
    database's floor: a plain UPDATE of the same columns by key."""
    pool = await create_pool(dsn, min_size=WRITERS, max_size=WRITERS)
    sink = ProgressSink(PgDatabase(pool))
    done = 0
    stop_at = time.perf_counter() + seconds
    rng = random.Random(7)

    async def writer() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            ids = rng.sample(range(1, n + 1), BATCH) if n > BATCH else list(range(1, n + 1))
            ids.sort()
            if bare:
                doc = [(i, rng.randint(0, 31), rng.randint(0, 100)) for i in ids]
                async with pool.acquire() as c:
                    await c.execute(
                        "UPDATE ota.devices d SET signal = (e->>1)::int, power = (e->>2)::int,"
                        " status_at = now(), last_seen = now()"
                        " FROM jsonb_array_elements($1::jsonb) e"
                        " WHERE d.dev_id = (e->>0)::bigint", doc)
            else:
                await sink.apply([StatusReport(i, signal=rng.randint(0, 31),
                                               power=rng.randint(0, 100)) for i in ids], [])
            done += len(ids)

    started = time.perf_counter()
    last = started
    tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.5)
        if time.perf_counter() - last >= 15:
            last = time.perf_counter()
            say(f"    {last - started:4.0f} s: {done / (last - started):,.0f} reports/s")
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await pool.close()
    return done / elapsed, done


def _queries(cid: int) -> dict[str, str]:
    """Every Grafana panel's SQL (the provisioned board, macros expanded as Grafana does)."""
    now = dt.datetime.now(dt.UTC)
    if not grafana.BOARD.exists():           # an installed package: no deploy/ beside it
        return {}
    return {f"grafana: {p['title']}": grafana.grafana_sql(p["targets"][0]["rawSql"], cid,
                                                          now - dt.timedelta(hours=6), now)
            for p in grafana.panels() if p.get("targets")}


async def dashboards_while_claiming(settings: Settings, dsn: str, cid: int, seconds: float,
                                    say: Say) -> tuple[dict[str, list[float]], int]:
    """Each dashboard query timed over and over while a scheduler works through the
    campaign against the OneNET simulator (in its own process); how many it processed."""
    panel_sql = _queries(cid)
    conn = await connect(dsn)

    def fetch(sql: str) -> Callable[[], Awaitable[Any]]:
        return lambda: conn.fetch(sql)

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "ota.campaign_progress": lambda: get_campaign(conn, cid),
        "status page": lambda: page_data(conn),
        "campaign waits": lambda: campaigns.waits(conn, cid),
        "gate outlook": lambda: campaigns.gate_outlook(conn, cid),
        **{name: fetch(sql) for name, sql in panel_sql.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    server = "granian" if fast.available() else "aiohttp"
    async with simulator_process(checks_scenario(), server) as (url, _):
        s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                onenet_product_id=PRODUCT_ID, onenet_access_key=DEMO_ACCESS_KEY,
                                onenet_authorization=None,
                                mqtt_topic_prefix=f"scalebench{os.getpid()}")
        pool = await create_pool(dsn, min_size=4, max_size=4)
        publisher = Publisher(s, f"bench-scale-{os.getpid()}")
        async with OneNetClient(s) as client:
            scheduler = Scheduler(s, PgDatabase(pool), client, publisher, Metrics(), "bench")
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler.run(stop))
            try:
                started = time.perf_counter()
                while time.perf_counter() - started < seconds:
                    for name, call in calls.items():
                        t = time.perf_counter()
                        await call()
                        times[name].append(1000 * (time.perf_counter() - t))
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await task
                await publisher.close()
                await pool.close()
        processed = scheduler.processed
    say(f"  dashboards: {sum(len(v) for v in times.values()):,} queries while the scheduler "
        f"processed {processed:,} devices (the simulator on {server})")
    await conn.close()
    return times, processed


async def _seq_scans(conn: Connection, cid: int) -> list[str]:
    """The dashboard queries whose plan reads a fleet-sized table from end to end."""
    out = []
    for name, sql in _queries(cid).items():
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
        if any(f"Seq Scan on {t} " in plan for t in BIG):
            out.append(name)
    return out


async def bench_scale(settings: Settings, say: Say, n: int = 10_000_000) -> dict[str, Any]:
    big = n >= 1_000_000
    ingest_s, claim_s = (60.0, 30.0) if big else (3.0, 3.0)
    say(f"scale: one PostgreSQL at {n:,} devices ({GROUPS} modules, 3 versions, a radio "
        "profile each)")
    async with scratch_database(settings) as dsn:
        conn = await connect(dsn)
        try:
            registry_s = await build_registry(conn, n, say)
            started = time.perf_counter()
            await conn.execute("VACUUM ANALYZE ota.devices")
            vacuum_s = time.perf_counter() - started
            devices_bytes = await conn.fetchval("SELECT pg_total_relation_size('ota.devices')")
            say(f"  registry built in {registry_s:.0f} s, vacuumed in {vacuum_s:.0f} s: "
                f"{devices_bytes / n:.0f} bytes per device")
            spec = CampaignSpec("scale", "fota", "1.3", all_devices=True,
                                waves=(1, 10, 50, 100), continuous=True)
            await checkpoint(conn)
            started = time.perf_counter()
            plan = await campaigns.plan(conn, spec, assume_signal=10, assume_power=20)
            plan_s = time.perf_counter() - started
            say(f"  dry-run plan of {plan['selected']:,} devices: {plan_s:.1f} s")
            raw_enrol_s = await raw_enrolment(conn, n)
            await checkpoint(conn)
            started = time.perf_counter()
            cid = await campaigns.create(conn, spec, start=True)
            enrol_s = time.perf_counter() - started
            say(f"  enrolment: {enrol_s:.1f} s (PostgreSQL's INSERT ... SELECT of as many "
                f"rows: {raw_enrol_s:.1f} s)")
            await conn.execute("VACUUM ANALYZE ota.campaign_devices")
            members_bytes = await conn.fetchval(
                "SELECT pg_total_relation_size('ota.campaign_devices')")

            say(f"  sustained ingest for {ingest_s:.0f} s, {BATCH:,} different devices a "
                f"batch, {WRITERS} at once")
            before = await _table_stats(conn)
            rate, reports = await sustained_ingest(dsn, n, ingest_s, say)
            await asyncio.sleep(1)                  # the statistics collector catches up
            after = await _table_stats(conn)
            say(f"  ... {rate:,.0f} reports/s; the bare UPDATE of the same rows:")
            raw_rate, _ = await sustained_ingest(dsn, n, ingest_s / 4, say, bare=True)
            say(f"  ... {raw_rate:,.0f} reports/s")
            updates = after["n_tup_upd"] - before["n_tup_upd"]
            hot = after["n_tup_hot_upd"] - before["n_tup_hot_upd"]

            times, processed = await dashboards_while_claiming(settings, dsn, cid, claim_s,
                                                               say)
            seq = await _seq_scans(conn, cid)
            events = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM ota.events WHERE campaign_id = $1) AS n,"
                " (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                "  WHERE inhparent = 'ota.events'::regclass)::bigint AS bytes", cid)
            assert events is not None
            campaign = await get_campaign(conn, cid)
            assert campaign is not None
            full_ms, idle_ms, late_ms = await continuous_passes(conn, campaign, n, say)
        finally:
            await conn.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    all_ms = [t for v in times.values() for t in v]
    worst = max(times, key=lambda k: _pct(times[k], 0.99))
    per_query = {k: {"p50": round(_pct(v, 0.5), 2), "p99": round(_pct(v, 0.99), 2)}
                 for k, v in times.items() if v}
    for name, q in per_query.items():
        say(f"    {name:55} p50 {q['p50']:8.2f} ms  p99 {q['p99']:8.2f} ms")
    return report("scale", "status reports/s", rate, raw_rate, {
        "devices": n,
        "registry_seconds": round(registry_s, 1),
        "devices_bytes_per_device": round(devices_bytes / n, 1),
        "plan_seconds": round(plan_s, 2),
        "enrol_seconds": round(enrol_s, 2),
        "enrol_raw_seconds": round(raw_enrol_s, 2),
        "members_bytes_per_device": round(members_bytes / n, 1),
        "ingest_seconds": ingest_s,
        "ingest_reports": reports,
        "ingest_hot_update_ratio": round(hot / updates, 3) if updates else None,
        "devices_growth_mb": round((after["bytes"] - before["bytes"]) / 2**20, 1),
        "dead_rows_after_ingest": after["n_dead_tup"],
        "autovacuum_runs_during_ingest": after["autovacuum_count"] - before["autovacuum_count"],
        "queries_timed": len(all_ms),
        "query_ms_p50": round(_pct(all_ms, 0.5), 2),
        "query_ms_p99": round(_pct(all_ms, 0.99), 2),
        "slowest_query_p99": f"{worst}: {_pct(times[worst], 0.99):.1f} ms",
        "queries_with_seq_scan_of_fleet_table": seq,
        "scheduler_processed": processed,
        "events_per_processed_device": round(events["n"] / processed, 2) if processed else None,
        "events_bytes_per_row": round(events["bytes"] / events["n"], 1) if events["n"] else None,
        "continuous_full_pass_ms": round(full_ms, 1),
        "continuous_idle_pass_ms": round(idle_ms, 2),
        "continuous_pass_1000_new_ms": round(late_ms, 1),
        "process_max_rss_mb": round(rss_mb, 1),
        "query_ms": per_query,
    }, say)
