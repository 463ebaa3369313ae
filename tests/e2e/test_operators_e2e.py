"""Nothing stuck, nothing hidden, end to end (real PostgreSQL, broker, simulator, fleet,
service): one device loses its upgrade command and holds its wave; the operator sees what
the campaign waits on and until when, gets no ETA while it stalls or is paused, and moves
it; a lost command is seen for what it is from the device's own status; a 201 carrying the
version updates the registry."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from conftest import orchestrator_env, run_cli
from orchestrator.config import Settings
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.sim.fleet import FleetConfig, SimDevice
from orchestrator.usecases import campaigns
from orchestrator.usecases.common import connection
from stack import Stack, until

M = {"manuf": "China Mobile", "model": "M5310"}
LOSER = 4


def scenario(n: int) -> dict[str, Any]:
    return {"devices": [{"dev_id": i, **M, "fota_version": "1.2"} for i in range(1, n + 1)],
            "packages": [{"id": "p", "version": "1.3", "size": 2000}],
            "tasks": [{"type": "fota", "package": "p", "signal": 0, "power": 0,
                       "retry": 3, "interval": 1}]}


async def progress(stack: Stack, cid: int) -> dict[str, Any]:
    rows = await stack.fetch("SELECT * FROM ota.campaign_progress WHERE campaign_id = $1", cid)
    return dict(rows[0])


async def test_a_lost_command_holds_its_wave_until_the_operator_moves_it(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario(10))
    devices = [SimDevice(i, **M, drift=False) for i in range(1, 11)]
    devices[LOSER - 1].drop_commands = 1       # it never receives its first command
    # no status from the devices on their own (the lost-command path is the other test's)
    async with Stack(settings, sim, devices,
                     FleetConfig(status_interval=3600, install_time=0.05)) as stack:
        assert stack.service is not None and stack.service.controller is not None
        stack.service.controller.stall_after = 2.0
        await stack.wait_devices(10)
        spec = CampaignSpec("stall", "fota", "1.3", all_devices=True, waves=(50, 100),
                            dispatch_timeout=3600.0)
        cid = await stack.start_campaign(spec)
        wave1 = {r[0] for r in await stack.fetch(
            "SELECT dev_id FROM ota.campaign_devices WHERE campaign_id = $1 AND wave = 0", cid)}
        assert LOSER in wave1, "the hash puts device 4 in wave 1"

        async def held() -> bool:
            async with connection(stack.settings.database_url or "") as conn:
                w = await campaigns.waits(conn, cid)
            return w["devices"] == 1 and w["longest"][0]["dev_id"] == LOSER

        await until(held, 30, "wave 1 waits on the device that lost its command")
        async with connection(stack.settings.database_url or "") as conn:
            said = campaigns.describe_waits(await campaigns.waits(conn, cid))
        assert said is not None and said.startswith("wave 1/2 waits on 1 device(s) before "
                                                    "wave 2; longest: device 4 (dispatched")
        env = {**orchestrator_env(stack.settings)}
        shown = run_cli("campaign", "show", str(cid), env=env)
        assert "waits on" in shown.stdout and "device 4 (dispatched, until" in shown.stdout
        api = json.loads(run_cli("campaign", "show", str(cid), "--json", env=env).stdout)
        assert api["current_wave"] == 1 and api["waits"]["longest"][0]["dev_id"] == LOSER

        async def stalled() -> bool:
            p = await progress(stack, cid)
            return p["eta_at"] is None and (p["eta_note"] or "").startswith(
                "nothing finished for")

        await until(stalled, 20, "no ETA while nothing finishes")
        assert (await progress(stack, cid))["current_wave"] == 1
        out = run_cli("campaign", "pause", str(cid), "--reason", "look", env=env)
        assert out.returncode == 0, out.stderr
        p = await progress(stack, cid)
        assert (p["eta_at"], p["eta_note"], p["status_reason"]) == (None, "paused", "look")
        assert run_cli("campaign", "resume", str(cid), env=env).returncode == 0
        # the operator shortens the dispatch timeout: the device already in flight follows
        out = run_cli("campaign", "update", str(cid), "--dispatch-timeout", "1", env=env)
        assert out.returncode == 0 and "dispatch_timeout 1" in out.stdout, out
        row = await stack.wait_status(cid, "completed", timeout=40)
        assert row["succeeded"] == 10
        reasons = [r[0] for r in await stack.fetch(
            "SELECT reason FROM ota.events WHERE campaign_id = $1 AND dev_id = $2"
            " ORDER BY event_id", cid, LOSER)]
        assert any("dispatch timeout now 1 s" in r for r in reasons), reasons
        assert stack.fleet.stats["commands_lost"] == 1


async def test_a_status_on_the_old_version_says_the_command_was_lost(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario(6))
    devices = [SimDevice(i, **M, drift=False) for i in range(1, 7)]
    devices[LOSER - 1].drop_commands = 1
    settings = dataclasses.replace(settings, lost_command_grace=1.0)
    async with Stack(settings, sim, devices,
                     FleetConfig(status_interval=1.0, install_time=0.05)) as stack:
        await stack.wait_devices(6)
        cid = await stack.start_campaign(CampaignSpec("lost", "fota", "1.3", all_devices=True,
                                                      dispatch_timeout=3600.0))
        row = await stack.wait_status(cid, "completed", timeout=40)
        assert row["succeeded"] == 6
        events = await stack.fetch(
            "SELECT reason FROM ota.events WHERE campaign_id = $1 AND dev_id = $2"
            " AND reason LIKE 'lost command%'", cid, LOSER)
        assert len(events) == 1
        attempts = await stack.fetchval("SELECT attempts FROM ota.campaign_devices"
                                        " WHERE campaign_id = $1 AND dev_id = $2", cid, LOSER)
        assert attempts == 0                   # no budget spent on our side's loss
        # the 201 named the version: the registry has it whatever the statuses said
        versions = {r[0] for r in await stack.fetch("SELECT fota_version FROM ota.devices")}
        assert versions == {"1.3"}


async def test_the_operator_re_commands_in_flight_devices(
        settings: Settings, start_sim: Any) -> None:
    sim = await start_sim(scenario(4))
    devices = [SimDevice(i, **M, drift=False) for i in range(1, 5)]
    devices[LOSER - 1].drop_commands = 1
    async with Stack(settings, sim, devices,
                     FleetConfig(status_interval=3600, install_time=0.05)) as stack:
        await stack.wait_devices(4)
        cid = await stack.start_campaign(CampaignSpec("retry", "fota", "1.3", all_devices=True,
                                                      dispatch_timeout=3600.0))

        async def three_left() -> bool:
            return bool(await stack.fetchval(
                "SELECT count(*) = 3 FROM ota.campaign_devices WHERE campaign_id = $1"
                " AND state = 'succeeded'", cid))

        await until(three_left, 30, "three succeeded, one holding")
        env = orchestrator_env(stack.settings)
        out = run_cli("campaign", "retry", str(cid), "--state", "dispatched", "--reason",
                      "lost command", env=env)
        assert out.returncode == 0 and "1 device(s) retried" in out.stdout, out
        row = await stack.wait_status(cid, "completed", timeout=30)
        assert row["succeeded"] == 4
        assert await stack.fetchval("SELECT attempts FROM ota.campaign_devices"
                                    " WHERE campaign_id = $1 AND dev_id = $2", cid, LOSER) == 0
