"""Campaigns end to end: real PostgreSQL, broker, simulator, fleet and service."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import orchestrator_env, run_cli
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec, Selector
from orchestrator.sim.auth import verify_authorization
from orchestrator.sim.fleet import FleetConfig, SimDevice
from orchestrator.sim.scenario import Faults
from orchestrator.store.campaigns import set_status
from orchestrator.store.db import connect
from orchestrator.usecases.campaigns import create as create_campaign
from stack import Stack, until

M = {"manuf": "China Mobile", "model": "M5310"}


def six_devices_scenario() -> dict[str, Any]:
    return {
        "devices": [
            {"dev_id": 1, **M, "fota_version": "1.2"},
            {"dev_id": 2, **M, "fota_version": "1.2"},
            {"dev_id": 3, "manuf": "China Mobile", "model": "M5311", "fota_version": "1.2"},
            {"dev_id": 4, **M, "fota_version": "1.2"},
            {"dev_id": 5, **M, "fota_version": "1.2"},
            {"dev_id": 6, **M, "fota_version": "1.2"},
        ],
        "packages": [{"id": "p13", "version": "1.3", "size": 20000}],
        "tasks": [{"type": "fota", "package": "p13", "devices": [1, 3, 4, 5, 6],
                   "signal": 10, "power": 20, "retry": 3, "interval": 1}],
        "script": {"4": [7, 7]},
    }


def ten_devices_no_retry() -> dict[str, Any]:
    return {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in range(1, 11)],
            "packages": [{"id": "p", "version": "1.3", "size": 1000}],
            "tasks": [{"type": "fota", "package": "p", "retry": 0, "interval": 1}]}


async def create(settings: Settings, **kw: Any) -> int:
    conn = await connect(settings.database_url or "")
    try:
        kw.setdefault("all_devices", True)
        spec = CampaignSpec(name=kw.pop("name", "test"), type="fota", target="1.3", **kw)
        return await create_campaign(conn, spec, start=True)
    finally:
        await conn.close()


async def test_six_devices_end_as_the_seed_says(settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(six_devices_scenario())
    devices = [SimDevice(i, **M) for i in range(1, 7)]
    devices[4].signal = 5                       # device 5: below the task's threshold
    devices[4].drift = False
    devices[5].install_failures = [205]         # device 6: first install fails
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(6)
        cid = await create(stack.settings, selector=Selector(manuf="China Mobile"))

        async def five_gated() -> bool:
            return bool(await stack.fetchval(
                "SELECT attempts >= 1 AND state = 'gated' FROM ota.campaign_devices"
                " WHERE campaign_id = $1 AND dev_id = 5", cid))

        await until(five_gated, 30, "device 5 gated")
        assert not [c for d, c in stack.fleet.commands if d == 5 and c["op"] == "upgrade"]
        devices[4].signal = 18                  # the signal rises and is reported
        await stack.fleet.report_status(devices[4])
        row = await stack.wait_status(cid, "completed", timeout=60)
        assert (row["total"], row["succeeded"], row["failed"], row["no_task"]) == (6, 4, 1, 1)
        states = {r["dev_id"]: (r["state"], r["last_errno"]) for r in await stack.fetch(
            "SELECT * FROM ota.device_progress WHERE campaign_id = $1", cid)}
        assert states[2] == ("no_task", 11)
        assert states[3] == ("failed", 8)
        for dev in (1, 4, 5, 6):
            assert states[dev][0] == "succeeded", (dev, states)
        outcomes = {r["errno"]: r["calls"] for r in await stack.fetch(
            "SELECT errno, calls FROM ota.check_outcomes WHERE campaign_id = $1", cid)}
        assert outcomes[7] == 2
        assert outcomes[11] == 1 and outcomes[8] == 1
        # device 6 was retried after its failed install; device 5 only after the rise
        attempts = {r["dev_id"]: r["attempts"] for r in await stack.fetch(
            "SELECT dev_id, attempts FROM ota.device_progress WHERE campaign_id = $1", cid)}
        assert attempts[6] == 1 and attempts[5] >= 1
        assert devices[5].fota_version == "1.3" and devices[0].fota_version == "1.3"
        # every check carried the device's signals and powers (and a valid token: the
        # simulator answers errno 1 otherwise)
        assert all("signals" in b and "powers" in b for b in sim.sim.check_bodies)
        assert sim.sim.checks[1] == 0
        # every transition is in the event log with its reason
        n = await stack.fetchval("SELECT count(*) FROM ota.events WHERE campaign_id = $1"
                                 " AND kind = 'transition' AND reason IS NOT NULL", cid)
        assert n >= 6 * 2


async def test_token_the_orchestrator_sends_is_valid(settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(six_devices_scenario())
    seen: list[bool] = []
    original = sim.sim.authorized

    def spy(request: Any) -> bool:
        seen.append(verify_authorization(request.headers.get("Authorization"), "123123",
                                         sim.sim.access_key, sim.sim.clock()))
        return bool(original(request))

    sim.sim.authorized = spy
    async with Stack(settings, sim, [SimDevice(1, **M)]) as stack:
        await stack.wait_devices(1)
        cid = await create(stack.settings, selector=Selector(manuf="China Mobile"))
        await stack.wait_status(cid, "completed")
    assert seen and all(seen)


async def test_waves_open_in_turn(settings: Settings, start_sim: Any) -> None:
    scenario = {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in range(1, 21)],
                "packages": [{"id": "p", "version": "1.3", "size": 1000}],
                "tasks": [{"type": "fota", "package": "p", "signal": 0, "power": 0}]}
    sim = await start_sim(scenario)
    devices = [SimDevice(i, **M) for i in range(1, 21)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(20)
        cid = await create(stack.settings, waves=(10, 50, 100), wave_success_pct=90)
        row = await stack.wait_status(cid, "completed")
        assert row["succeeded"] == 20
        waves = await stack.fetch(
            "SELECT wave, count(*) AS n, min(updated_at) AS first, max(updated_at) AS last"
            " FROM ota.campaign_devices WHERE campaign_id = $1 GROUP BY wave ORDER BY wave",
            cid)
        assert [w["n"] for w in waves] == [2, 8, 10]
        # a wave's devices finish before the next wave's start
        assert waves[0]["last"] <= waves[1]["first"] and waves[1]["last"] <= waves[2]["first"]
        opened = await stack.fetchval("SELECT count(*) FROM ota.events WHERE campaign_id = $1"
                                      " AND kind = 'wave_opened'", cid)
        assert opened == 2


async def test_abort_rule_pauses_the_campaign(settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(ten_devices_no_retry())
    devices = [SimDevice(i, **M, install_failures=[206]) for i in range(1, 11)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(10)
        cid = await create(stack.settings, abort_failure_pct=20, abort_min_finished=3)
        await stack.wait_status(cid, "paused")
        reason = await stack.fetchval(
            "SELECT status_reason FROM ota.campaigns WHERE campaign_id = $1", cid)
        assert reason.startswith("abort rule:")
        failed = await stack.fetchval(
            "SELECT failed FROM ota.campaign_progress WHERE campaign_id = $1", cid)
        assert failed >= 3


async def test_pause_resume_cancel(settings: Settings, start_sim: Any) -> None:
    scenario = {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in range(1, 7)],
                "packages": [{"id": "p", "version": "1.3", "size": 400_000}],
                "tasks": [{"type": "fota", "package": "p"}]}
    sim = await start_sim(scenario)
    devices = [SimDevice(i, **M) for i in range(1, 7)]

    cfg = FleetConfig(status_interval=3600, bandwidth=100_000, install_time=0.05)
    async with Stack(settings, sim, devices, cfg) as stack:
        await stack.wait_devices(6)
        conn = await connect(stack.settings.database_url or "")
        try:
            cid = await create(stack.settings, max_per_minute=120)
            await set_status(conn, cid, "pause")
            await asyncio.sleep(1.0)
            before = await stack.fetchval(
                "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND kind = 'transition'"
                " AND to_state = 'checking'", cid)
            await asyncio.sleep(1.0)
            after = await stack.fetchval(
                "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND kind = 'transition'"
                " AND to_state = 'checking'", cid)
            assert before == after          # paused: nothing claimed
            await set_status(conn, cid, "resume")

            async def some_in_flight() -> bool:
                return bool(await stack.fetchval(
                    "SELECT count(*) > 0 FROM ota.campaign_devices WHERE campaign_id = $1"
                    " AND state IN ('dispatched', 'downloading')", cid))

            await until(some_in_flight, 30, "a device downloading")
            await set_status(conn, cid, "cancel")
        finally:
            await conn.close()
        row = await stack.wait_status(cid, "cancelled")
        assert row["cancelled"] >= 1
        assert row["pending"] == 0 and row["in_progress"] == 0

        async def cancel_sent() -> bool:
            return any(c["op"] == "cancel" for _, c in stack.fleet.commands)

        await until(cancel_sent, 10, "cancel command")

        async def outbox_empty() -> bool:
            return bool(await stack.fetchval("SELECT count(*) = 0 FROM ota.outbox"))

        await until(outbox_empty, 10, "outbox drained")


async def test_terminal_errno_paths(settings: Settings, start_sim: Any) -> None:
    bc = {"manuf": "Quectel Wireless Solutions Co., Ltd.", "model": "BC28"}
    scenario = {
        "devices": [
            {"dev_id": 2, **bc, "fota_version": "1.9"},      # 9: diff for 2.0 only
            {"dev_id": 3, **bc},                              # 32: never reported
        ],
        "packages": [{"id": "d", "version": "2.1", "type": "diff", "from_version": "2.0",
                      "size": 100}],
        "tasks": [{"type": "fota", "package": "d", "devices": [2, 3]}],
    }
    sim = await start_sim(scenario)
    devices = [SimDevice(1, **M, fota_version="1.0"),             # 1: unknown to OneNET
               SimDevice(2, **bc, fota_version="1.9"),
               SimDevice(3, **bc, fota_version="1.8"),
               SimDevice(4, manuf="Nokia", model="3310", fota_version="1.0")]  # not checkable
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(4)
        conn = await connect(stack.settings.database_url or "")
        try:
            cid = await create_campaign(conn, CampaignSpec("e", "fota", "2.1",
                                                       all_devices=True), start=True)
        finally:
            await conn.close()
        row = await stack.wait_status(cid, "completed")
        assert row["failed"] == 3
        errnos = {r["dev_id"]: r["last_errno"] for r in await stack.fetch(
            "SELECT dev_id, last_errno FROM ota.device_progress WHERE campaign_id = $1", cid)}
        assert errnos == {1: 1, 2: 9, 3: 32}
        # device 4's module is not in OneNET's tables: left out, and the campaign says so
        created = await stack.fetchval("SELECT reason FROM ota.events WHERE campaign_id = $1"
                                       " AND kind = 'campaign_created'", cid)
        assert "1 left out: their module is not in OneNET's tables" in created
        outcomes = {r["errno"]: r["calls"] for r in await stack.fetch(
            "SELECT errno, calls FROM ota.check_outcomes WHERE campaign_id = $1", cid)}
        assert outcomes == {1: 1, 9: 1, 32: 1}


async def test_endpoint_outage_retries_without_burning_budgets(
        settings: Settings, start_sim: Any) -> None:

    scenario = {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in (1, 2)],
                "packages": [{"id": "p", "version": "1.3", "size": 100}],
                "tasks": [{"type": "fota", "package": "p", "retry": 0}]}
    sim = await start_sim(scenario)
    sim.sim.set_faults(Faults(drop_rate=1.0))
    async with Stack(settings, sim, [SimDevice(1, **M), SimDevice(2, **M)]) as stack:
        await stack.wait_devices(2)
        cid = await create(stack.settings)

        async def retried() -> bool:
            return bool(await stack.fetchval(
                "SELECT min(transient_errors) >= 1 FROM ota.campaign_devices"
                " WHERE campaign_id = $1", cid))

        await until(retried, 30, "transient retries")
        assert await stack.fetchval(
            "SELECT max(attempts) FROM ota.campaign_devices WHERE campaign_id = $1", cid) == 0
        sim.sim.set_faults(Faults())
        row = await stack.wait_status(cid, "completed", timeout=60)
        assert row["succeeded"] == 2
        assert await stack.fetchval(
            "SELECT calls FROM ota.check_outcomes WHERE campaign_id = $1 AND errno = -1",
            cid) >= 2


async def test_rate_limit_holds(settings: Settings, start_sim: Any) -> None:
    n = 30
    scenario = {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in range(1, n + 1)],
                "packages": [{"id": "p", "version": "1.3", "size": 100}],
                "tasks": [{"type": "fota", "package": "p"}]}
    sim = await start_sim(scenario)
    async with Stack(settings, sim, [SimDevice(i, **M) for i in range(1, n + 1)]) as stack:
        await stack.wait_devices(n)
        cid = await create(stack.settings, max_per_minute=120)   # 2/s, a bucket of 10
        await asyncio.sleep(3.0)
        checked = await stack.fetchval(
            "SELECT count(DISTINCT dev_id) FROM ota.events WHERE campaign_id = $1"
            " AND kind = 'transition' AND to_state <> 'checking'", cid)
        # the first bucket (10) plus 2 a second: never the whole campaign at once
        assert 5 <= checked <= 10 + 2 * 3 + 2, checked
        calls = sum(sim.sim.checks.values())
        assert calls <= 10 + 2 * 3 + 2


async def test_continuous_campaign_takes_late_devices(settings: Settings, start_sim: Any
                                                      ) -> None:
    scenario = {"server": {"auto_register": True},
                "packages": [{"id": "p", "version": "1.3", "size": 100}],
                "strategies": [{"type": "fota", "package": "p"}]}
    sim = await start_sim(scenario)
    late = SimDevice(50, **M)
    async with Stack(settings, sim, [SimDevice(1, **M)]) as stack:
        await stack.wait_devices(1)
        cid = await create(stack.settings, continuous=True)

        async def first_done() -> bool:
            return bool(await stack.fetchval(
                "SELECT succeeded = 1 FROM ota.campaign_progress WHERE campaign_id = $1", cid))

        await until(first_done, 30, "first device upgraded")
        stack.fleet.devices[late.dev_id] = late            # a device registers later
        await stack.fleet.report_status(late)

        async def late_done() -> bool:
            return bool(await stack.fetchval(
                "SELECT succeeded = 2 FROM ota.campaign_progress WHERE campaign_id = $1", cid))

        await until(late_done, 30, "late device upgraded")
        assert late.fota_version == "1.3"
        assert await stack.fetchval(
            "SELECT status FROM ota.campaigns WHERE campaign_id = $1", cid) == "running"
        # the simulator saw the device's progress relayed to its progress endpoint
        async def relayed() -> bool:
            return (50, 201) in sim.sim.progress_reports

        await until(relayed, 10, "progress relayed (ota.relays, sent by the relay worker)")


async def test_resume_after_the_abort_rule_goes_on_to_completion(
        settings: Settings, start_sim: Any) -> None:
    """Half the devices fail their install once with retry 0: the abort rule pauses; the
    operator resumes through the CLI; the rule does not fire again on the same failures
    and the campaign completes."""
    sim = await start_sim(ten_devices_no_retry())
    devices = [SimDevice(i, **M, install_failures=[206] if i <= 4 else [])
               for i in range(1, 11)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(10)
        cid = await create(stack.settings, abort_failure_pct=20, abort_min_finished=10)
        await stack.wait_status(cid, "paused")
        env = orchestrator_env(stack.settings)
        out = await asyncio.to_thread(run_cli, "campaign", "resume", str(cid), "--reason",
                                      "4 known-bad units; accepted", env=env)
        assert out.returncode == 0, out.stderr
        row = await stack.wait_status(cid, "completed", "paused", timeout=30)
        assert row["status"] == "completed", dict(row)
        assert (row["succeeded"], row["failed"]) == (6, 4)
        actor, reason = (await stack.fetch(
            "SELECT actor, reason FROM ota.events WHERE campaign_id = $1"
            " AND kind = 'campaign_resume'", cid))[0]
        assert (actor, reason) == ("cli", "4 known-bad units; accepted")


async def test_an_abort_rule_with_action_abort_aborts(settings: Settings,
                                                     start_sim: Any) -> None:
    sim = await start_sim(ten_devices_no_retry())
    devices = [SimDevice(i, **M, install_failures=[206]) for i in range(1, 11)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(10)
        cid = await create(stack.settings, abort_failure_pct=20, abort_min_finished=3,
                           abort_action="abort")
        row = await stack.wait_status(cid, "aborted")
        assert row["finished_at"] is not None
        assert await stack.fetchval(
            "SELECT count(*) FROM ota.campaign_devices WHERE campaign_id = $1"
            " AND state NOT IN ('succeeded', 'failed', 'no_task', 'cancelled')", cid) == 0


async def test_retry_gives_failed_devices_a_fresh_budget(settings: Settings,
                                                        start_sim: Any) -> None:
    """Four devices fail the gate (signal 5 <= the task's 10, no retries); the campaign
    completes; their signal improves; 'campaign retry' (CLI) reopens the campaign for
    them and they are upgraded."""
    scenario = {**ten_devices_no_retry(), "tasks": [
        {"type": "fota", "package": "p", "retry": 0, "interval": 1, "signal": 10}]}
    sim = await start_sim(scenario)
    devices = [SimDevice(i, **M, signal=5 if i <= 4 else 25, drift=False)
               for i in range(1, 11)]
    async with Stack(settings, sim, devices) as stack:
        await stack.wait_devices(10)
        cid = await create(stack.settings)
        row = await stack.wait_status(cid, "completed")
        assert (row["succeeded"], row["failed"]) == (6, 4)
        for d in devices[:4]:
            d.signal = 25
            await stack.fleet.report_status(d)
        await asyncio.sleep(0.5)
        env = orchestrator_env(stack.settings)
        out = await asyncio.to_thread(run_cli, "campaign", "retry", str(cid), "--reason",
                                      "coverage fixed", env=env)
        assert out.returncode == 0, out.stderr
        assert "4 device(s) retried" in out.stdout
        await until(lambda: stack.fetchval(
            "SELECT status = 'completed' AND succeeded = 10 FROM ota.campaign_progress"
            " WHERE campaign_id = $1", cid), 30, "retried devices upgraded")
        events = await stack.fetchval(
            "SELECT count(*) FROM ota.events WHERE campaign_id = $1 AND kind = 'transition'"
            " AND reason LIKE 'retried by the operator: coverage fixed%'", cid)
        assert events == 4
        bad = await asyncio.to_thread(run_cli, "campaign", "retry", str(cid), "--state",
                                      "succeeded", env=env)
        assert bad.returncode == 2 and "cannot be retried" in bad.stderr
        # where the operator looks: the device's own history, and the device's campaigns
        out = await asyncio.to_thread(run_cli, "campaign", "events", str(cid), "--device",
                                      "1", "--json", env=env)
        assert out.returncode == 0, out.stderr
        history = [json.loads(x) for x in out.stdout.splitlines()]
        assert {e["dev_id"] for e in history} == {1}
        reasons = [e["reason"] for e in history]
        assert any("retries spent" in r for r in reasons), reasons
        assert any(r.startswith("retried by the operator") for r in reasons), reasons
        assert history[-1]["to_state"] == "succeeded"
        out = await asyncio.to_thread(run_cli, "device", "show", "1", "--json", env=env)
        shown = json.loads(out.stdout)
        assert shown["campaigns"][0]["campaign_id"] == cid
        assert shown["campaigns"][0]["state"] == "succeeded"
        assert shown["campaigns"][0]["last_event"]
