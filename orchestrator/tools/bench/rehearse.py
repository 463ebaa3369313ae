"""``bench rehearse``: a campaign rehearsed over a registry of a fleet's size (1,000,000 by
default: ``bench scale``'s registry, its modules, versions, radio profiles and cells), with
the history of a past campaign over the same fleet (refusals, transient errors, failed
installs, silent devices, upgrade times). Beside it, in the same run, the raw limits: the
same rows read by COPY (the fastest way out of PostgreSQL), and a bare heap of as many
timed events as the rehearsal queued (the machine's floor for an event loop in Python)."""

from __future__ import annotations

import heapq
import random
import resource
import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.store.campaigns import copy_rehearse_selection
from orchestrator.store.db import Connection, connect
from orchestrator.tools.bench.common import Say, report, scratch_database
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
                                abort_failure_pct=20.0, abort_min_finished=1000)
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
