"""``bench rehearse``: a campaign rehearsed over a registry of a fleet's size (1,000,000 by
default: ``bench scale``'s registry, its modules, versions, radio profiles and cells), with
the history of a past campaign over the same fleet (refusals, transient errors, failed
installs, silent devices, upgrade times). Beside it, in the same run, the raw limits: the
same rows read by COPY (the fastest way out of PostgreSQL), and a bare heap of as many
timed events as the rehearsal queued (the machine's floor for an event loop in Python)."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import os
import random
import resource
import signal
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.service import Service
from orchestrator.sim import DEMO_ACCESS_KEY
from orchestrator.sim.fleet import make_devices
from orchestrator.store import devices
from orchestrator.store.campaigns import copy_rehearse_selection
from orchestrator.store.db import Connection, connect
from orchestrator.tools.bench.common import (
    PRODUCT_ID,
    Say,
    checks_scenario,
    fleet_process,
    private_broker,
    report,
    scratch_database,
    simulator_process,
)
from orchestrator.tools.bench.scale import build_registry
from orchestrator.usecases import campaigns
from orchestrator.usecases.rehearsals import plan_rehearsal

# what the past campaign did, by share of its members (hundredths of the fleet by id)
HISTORY = """
UPDATE ota.campaign_devices cd SET
    state = CASE WHEN k < 3 THEN 'failed' WHEN k < 5 THEN 'no_task'
                 WHEN k < 7 THEN 'failed' WHEN k = 7 THEN 'unreachable' ELSE 'succeeded' END,
    last_errno = CASE WHEN k < 3 THEN 8 WHEN k < 5 THEN 11 ELSE 0 END,
    last_step = CASE WHEN k IN (5, 6) THEN 204 WHEN k >= 8 THEN 201 END,
    task = CASE WHEN k >= 5 THEN '{"target": "1.2", "token": "t", "size": 100000,
                "signal": 10, "power": 20, "retry": 3, "interval": 90, "md5": "",
                "type": 1}'::jsonb END,
    transient_errors = (k % 4 = 0)::int,
    dispatched_at = CASE WHEN k >= 5 THEN now() - interval '1 day' END,
    updated_at = now() - interval '1 day' + (60 + dev_id % 240) * interval '1 second'
FROM (SELECT dev_id AS d, (hashint8(dev_id) % 100 + 100) % 100 AS k
      FROM ota.campaign_devices WHERE campaign_id = $1) x
WHERE cd.campaign_id = $1 AND cd.dev_id = x.d
"""


async def _history(conn: Connection, n: int, say: Say) -> None:
    """A past campaign over the fleet, finished: its members' outcomes in the shares above.
    Its devices stay on their versions, so the rehearsed campaign selects them again."""
    spec = CampaignSpec("past", "fota", "1.2", all_devices=True)
    cid = await campaigns.create(conn, spec, start=True)
    await conn.execute(HISTORY, cid)
    await conn.execute("UPDATE ota.campaigns SET status = 'completed', finished_at = now()"
                       " WHERE campaign_id = $1", cid)
    say(f"  a past campaign's history: {n:,} members")


async def _copy_seconds(conn: Connection, spec: CampaignSpec) -> float:
    """The rehearsal's selection, read by COPY into nothing: the raw limit of the read."""
    async def sink(_: bytes) -> None:
        return None

    started = time.perf_counter()
    await copy_rehearse_selection(conn, spec, sink)
    return time.perf_counter() - started


def _bare_events(n: int) -> float:
    """Seconds to push and pop ``n`` timed events through a heap, doing nothing else."""
    rng = random.random
    heap: list[tuple[float, int]] = []
    started = time.perf_counter()
    for i in range(n):
        heapq.heappush(heap, (rng(), i))
        if len(heap) > 2000:
            heapq.heappop(heap)
    while heap:
        heapq.heappop(heap)
    return time.perf_counter() - started


async def bench_rehearse(settings: Settings, say: Say, n: int = 1_000_000) -> dict[str, Any]:
    say(f"rehearse: a campaign over {n:,} devices in virtual time, one run")
    async with scratch_database(settings) as dsn:
        conn = await connect(dsn)
        try:
            await build_registry(conn, n, say)
            await conn.execute("VACUUM ANALYZE ota.devices")
            await _history(conn, n, say)
            await conn.execute("VACUUM ANALYZE ota.campaign_devices")
            spec = CampaignSpec("rehearsed", "fota", "1.3", all_devices=True,
                                waves=(1, 10, 50, 100), canary=5, max_per_minute=30_000,
                                max_per_cell=100)
            copy_s = await _copy_seconds(conn, spec)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            result = await plan_rehearsal(conn, [("", spec)], policy=settings.policy(),
                                          runs=1, checks_per_second=1000.0, say=say)
            total_s = time.perf_counter() - started
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        finally:
            await conn.close()
    variant = result["variants"][0]
    events = variant["events"]
    bare_s = _bare_events(events)
    took = result["seconds"]
    median = variant["time_to_finish"]["median_seconds"]
    minutes = None if median is None else round(median / 60, 1)
    say(f"  rehearsed in {total_s:.1f} s (history {took['history']} s, read {took['read']} s"
        f" beside COPY's {copy_s:.1f} s, play {took['play']} s beside a bare heap of "
        f"{events:,} events' {bare_s:.1f} s); the campaign: {variant['ended']}, "
        f"{minutes} min")
    return report("rehearse", "devices/s", n / total_s, n / (copy_s + bare_s),
                  {"devices": n, "seconds": round(total_s, 1),
                   "history_seconds": took["history"], "read_seconds": took["read"],
                   "copy_seconds": round(copy_s, 2), "play_seconds": took["play"],
                   "events": events, "bare_heap_seconds": round(bare_s, 2),
                   "max_rss_mb": round(rss_after, 1),
                   "rss_growth_mb": round(rss_after - rss_before, 1),
                   "bytes_per_device": round((rss_after - rss_before) * 2**20 / n),
                   "predicted": {"ended": variant["ended"], "counts": variant["counts"],
                                 "minutes": minutes}},
                  say)


SEED = 28
MIX = (("China Mobile", "M5310", "1.2", 2.0), ("China Mobile", "M5311", "1.2", 1.0))


async def bench_rehearse_vs_real(settings: Settings, say: Say, n: int = 20_000
                                 ) -> dict[str, Any]:
    async with private_broker(settings, say) as s:
        return await _vs_real(s, say, n)


async def _vs_real(settings: Settings, say: Say, n: int) -> dict[str, Any]:
    """A first campaign over a fifth as many devices gives the history (half the M5311
    group refused with errno 8, one install in ten failing); a campaign of ``n`` others is
    rehearsed, then run against the same simulator and fleet."""
    history = max(1, n // 5)
    total = n + history
    say(f"rehearse-vs-real: {n:,} devices rehearsed, then run; history from {history:,}")
    fleet = make_devices(total, seed=SEED, mix=list(MIX))
    refused = [d.dev_id for d in fleet if d.model == "M5311" and d.dev_id % 2 == 0]
    scenario = {**checks_scenario(), "script": {str(d): [8] for d in refused}}
    async with simulator_process(scenario) as (url, _), scratch_database(settings) as dsn:
        prefix = f"rhbench{os.getpid()}"
        s = dataclasses.replace(settings, database_url=dsn, onenet_url=url,
                                onenet_product_id=PRODUCT_ID,
                                onenet_access_key=DEMO_ACCESS_KEY, onenet_authorization=None,
                                mqtt_topic_prefix=prefix, mqtt_client_id=f"bench-{prefix}",
                                api_listen="127.0.0.1:0", scheduler_poll_interval=0.05)
        mixed = [a for m in MIX for a in ("--mix", f"{m[0]}/{m[1]}/{m[2]}={m[3]:g}")]
        proc = fleet_process(s, total, 1, "--seed", str(SEED), "--install-failure-rate",
                             "0.1", *mixed)
        service = Service(s, api=False)
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.ready.wait(), 30)
            conn = await connect(dsn)
            try:
                async with asyncio.timeout(max(120.0, total / 200)):
                    while await devices.count_reported(conn, 1, total) < total:
                        await asyncio.sleep(0.5)
                await _run(conn, CampaignSpec("history", "fota", "1.3", Selector(
                    devices=tuple(range(1, history + 1)))), say)
                spec = CampaignSpec("rehearsed", "fota", "1.3", Selector(
                    devices=tuple(range(history + 1, total + 1))), waves=(1, 10, 100),
                    canary=5, max_per_minute=12_000)
                predicted = await plan_rehearsal(
                    conn, [("", spec)], policy=s.policy(), batch=s.scheduler_batch_size,
                    poll=s.scheduler_poll_interval, runs=5)
                p = predicted["variants"][0]
                say(f"  predicted: {p['time_to_finish']['median_seconds']} s, {p['counts']}")
                took, actual = await _run(conn, spec, say)
            finally:
                await conn.close()
        finally:
            service.stop.set()
            await task
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait)
    median = p["time_to_finish"]["median_seconds"]
    errors = {k: p["counts"].get(k, 0) - actual.get(k, 0) for k in {*p["counts"], *actual}}
    worst = max(abs(e) for e in errors.values()) / n
    say(f"  actual: {took:.1f} s, {actual}")
    return report("rehearse-vs-real", "seconds", median, took,
                  {"devices": n, "history_devices": history,
                   "predicted_seconds": median,
                   "predicted_p90_seconds": p["time_to_finish"]["p90_seconds"],
                   "actual_seconds": round(took, 1),
                   "time_error_pct": round(100 * (median - took) / took, 1),
                   "predicted_counts": p["counts"], "actual_counts": actual,
                   "worst_count_error_pct_of_selection": round(100 * worst, 2),
                   "rehearsal_seconds": predicted["rehearsed_in_seconds"]}, say)


async def _run(conn: Connection, spec: CampaignSpec, say: Say
               ) -> tuple[float, dict[str, int]]:
    """Create and start a campaign, wait for its end: seconds from start to end, the final
    count per state."""
    cid = await campaigns.create(conn, spec, start=True)
    async with asyncio.timeout(3600):
        while (c := await campaigns.get(conn, cid)).status not in ("completed", "paused",
                                                                   "aborted"):
            await asyncio.sleep(0.2)
    took = await conn.fetchval("SELECT extract(epoch FROM finished_at - started_at)::float8"
                               " FROM ota.campaigns WHERE campaign_id = $1", cid)
    rows = await conn.fetch("SELECT state, count(*) AS n FROM ota.campaign_devices"
                            " WHERE campaign_id = $1 GROUP BY state", cid)
    say(f"  campaign {spec.name!r}: {c.status} in {took:.1f} s")
    return float(took), {r["state"]: int(r["n"]) for r in rows}
