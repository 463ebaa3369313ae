"""The ingest sink against a real database: a step 201 that names the version updates the
registry at once (a status need not follow), and a status whose module OneNET's tables do
not know registers the device, noted, and leaves it out of campaigns."""

from __future__ import annotations

import time
from typing import Any

from orchestrator.domain.campaign import CampaignSpec, Write
from orchestrator.domain.device import DeviceRow
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import ProgressReport, StatusReport
from orchestrator.store import devices, members
from orchestrator.store.database import PgDatabase
from orchestrator.usecases.campaigns import create
from orchestrator.workers.progress import ProgressSink

TASK = Task("1.3", "tok", 100, 0, 0, 3, 60, "m" * 32, 1)


async def test_a_201_with_its_version_updates_the_registry(pool: Any) -> None:
    async with pool.acquire() as conn:
        await devices.upsert_status(conn, [StatusReport(5, "China Mobile", "M5310", "1.2")])
        cid = await create(conn, CampaignSpec("r", "fota", "1.3", all_devices=True), start=True)
        locked = await members.lock(conn, [(cid, 5)])
        m = locked[(cid, 5)]
        row = DeviceRow(state="downloading", task=TASK, attempt="a1", dispatched_at=time.time(),
                        heard_at=time.time(), next_attempt_at=time.time() + 600)
        await members.write(conn, [Write(cid, 5, m.rev, m.row.state, row, "test")], "test")
    sink = ProgressSink(PgDatabase(pool))
    refused = await sink.apply([], [ProgressReport(5, cid, 201, "1.3", "a1")])
    assert list(refused) == []
    async with pool.acquire() as conn:
        device = await devices.get_device(conn, 5)
        state = await conn.fetchval("SELECT state FROM ota.campaign_devices WHERE dev_id = 5")
    assert device is not None and device.fota_version == "1.3" and state == "succeeded"


async def test_an_unknown_module_registers_noted_and_stays_out_of_campaigns(pool: Any) -> None:
    sink = ProgressSink(PgDatabase(pool))
    notes = await sink.apply([StatusReport(7, "China Mobile", "M5310A", "1.2"),
                              StatusReport(8, "001", "00107", "1.2")], [])
    assert [(n.reason, n.applied) for n in notes] == [("unknown_module", True)]
    async with pool.acquire() as conn:
        seven, eight = await devices.get_device(conn, 7), await devices.get_device(conn, 8)
        cid = await create(conn, CampaignSpec("m", "fota", "1.3", all_devices=True))
        enrolled = {r[0] for r in await conn.fetch(
            "SELECT dev_id FROM ota.campaign_devices WHERE campaign_id = $1", cid)}
    assert seven is not None and seven.model == "M5310A"
    assert eight is not None and (eight.manuf, eight.model) == ("China Mobile", "M5310")
    assert enrolled == {8}
