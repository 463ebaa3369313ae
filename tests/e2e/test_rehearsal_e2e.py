"""Issue 28 end to end — a rehearsal against the real run it predicts: real PostgreSQL,
broker, simulator, fleet and service. A first campaign gives the history (one group's
module refused with errno 8 for half its devices, installs that fail one time in ten);
the next campaign, on other devices of the same groups, is rehearsed and then run."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.sim.fleet import FleetConfig, SimDevice
from orchestrator.store.db import connect
from orchestrator.usecases import campaigns
from orchestrator.usecases.rehearsals import plan_rehearsal
from stack import Stack

HISTORY = range(1, 201)          # the first campaign's devices
RUN = range(201, 501)            # the rehearsed one's
TRIP = range(501, 701)           # the one whose abort rule trips


def model(d: int) -> str:
    return "M5311" if d % 3 == 0 else "M5310"


def refused(d: int) -> bool:
    """Half the M5311 group: OneNET answers errno 8."""
    return model(d) == "M5311" and d % 10 < 5


def scenario() -> dict[str, Any]:
    devices = [*HISTORY, *RUN, *TRIP]
    return {"server": {"auto_register": True},
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "tasks": [{"type": "fota", "package": "p", "retry": 1, "interval": 1}],
            "script": {str(d): [8] for d in devices if refused(d)}}


async def rehearse(stack: Stack, spec: CampaignSpec) -> dict[str, Any]:
    conn = await connect(stack.settings.database_url or "")
    try:
        s = stack.settings
        return await plan_rehearsal(conn, [("", spec)], policy=s.policy(),
                                    batch=s.scheduler_batch_size,
                                    poll=s.scheduler_poll_interval, runs=5)
    finally:
        await conn.close()


async def counts(stack: Stack, cid: int) -> dict[str, int]:
    rows = await stack.fetch("SELECT state, count(*) AS n FROM ota.campaign_devices"
                             " WHERE campaign_id = $1 GROUP BY state", cid)
    return {r["state"]: r["n"] for r in rows}


async def test_a_rehearsal_predicts_the_run_and_when_its_abort_rule_trips(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario())
    devices = [SimDevice(d, model=model(d), signal=25, power=90, drift=False)
               for d in [*HISTORY, *RUN, *TRIP]]
    config = FleetConfig(status_interval=3600, install_time=0.05, install_failure_rate=0.1,
                         seed=28)
    async with Stack(settings, sim, devices, config) as stack:
        await stack.wait_devices(len(devices), timeout=60)
        history = await stack.start_campaign(CampaignSpec(
            "history", "fota", "1.3", Selector(devices=tuple(HISTORY))))
        await stack.wait_status(history, "completed", timeout=120)

        # --- predicted, then run: time to finish and the final counts ----------------------
        spec = CampaignSpec("rehearsed", "fota", "1.3", Selector(devices=tuple(RUN)),
                            waves=(20, 100), max_per_minute=600)
        predicted = await rehearse(stack, spec)
        assert predicted["selected"] == len(RUN)
        by_model = {g["model"]: g for g in predicted["groups"]}
        assert 0.4 < by_model["M5311"]["history"]["answers"]["8"] < 0.6   # from history
        assert not by_model["M5311"]["history"]["assumed"]
        p = predicted["variants"][0]
        started = time.monotonic()
        cid = await stack.start_campaign(spec)
        await stack.wait_status(cid, "completed", timeout=180)
        took = await stack.fetchval(
            "SELECT extract(epoch FROM finished_at - started_at) FROM ota.campaigns"
            " WHERE campaign_id = $1", cid)
        actual = await counts(stack, cid)
        median = p["time_to_finish"]["median_seconds"]
        print(f"time to finish: predicted {median} s (p90 "
              f"{p['time_to_finish']['p90_seconds']} s), actual {float(took):.1f} s "
              f"(wall {time.monotonic() - started:.1f} s); counts predicted {p['counts']}, "
              f"actual {actual}")
        assert abs(median - float(took)) <= 0.15 * float(took), (median, took)
        for state in {*p["counts"], *actual}:
            assert abs(p["counts"].get(state, 0) - actual.get(state, 0)) <= 0.05 * len(RUN), \
                (state, p["counts"], actual)

        # --- the abort rule: predicted to trip in the canary wave, and it does -------------
        trip = CampaignSpec("trip", "fota", "1.3", Selector(devices=tuple(TRIP)),
                            waves=(10, 100), canary=10, abort_failure_pct=10.0,
                            abort_min_finished=15, max_per_minute=600)
        predicted = await rehearse(stack, trip)
        acts = predicted["variants"][0]["rule_acts"]
        assert acts is not None and acts["rule"] == "abort", predicted["variants"][0]
        cid = await stack.start_campaign(trip)
        row = await stack.wait_status(cid, "paused", "completed", timeout=120)
        assert row["status"] == "paused" and "abort rule" in row["status_reason"]
        assert row["current_wave"] == acts["wave"], (dict(row), acts)
        # the same fleet without the refused group: neither the rehearsal nor the run trips
        await act(stack, cid, "cancel")
        clean = CampaignSpec("clean", "fota", "1.3", Selector(devices=tuple(
            d for d in TRIP if model(d) == "M5310")), waves=(10, 100), canary=10,
            abort_failure_pct=10.0, abort_min_finished=15, max_per_minute=600)
        predicted = await rehearse(stack, clean)
        assert predicted["variants"][0]["rule_acts"] is None
        assert predicted["variants"][0]["ended"] == {"complete": 5}
        cid = await stack.start_campaign(clean)
        row = await stack.wait_status(cid, "paused", "completed", timeout=120)
        assert row["status"] == "completed", dict(row)


async def act(stack: Stack, cid: int, action: str) -> None:
    conn = await connect(stack.settings.database_url or "")
    try:
        await campaigns.act(conn, cid, action, actor="test")
    finally:
        await conn.close()
