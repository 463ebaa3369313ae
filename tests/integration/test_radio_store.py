"""The radio profile's one rule in two places: ingest updates it in SQL (``ota.radio_add``,
in the status upsert), the domain reads it and rehearses with ``radio.update``. Hypothesis
holds them to the same arithmetic over a real PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.domain import radio
from orchestrator.domain.campaign import CampaignSpec, Write
from orchestrator.domain.device import DeviceRow
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import StatusReport
from orchestrator.store import devices, members
from orchestrator.store.campaigns import profile_of
from orchestrator.store.database import PgDatabase
from orchestrator.usecases.campaigns import create
from orchestrator.workers.progress import ProgressSink

TASK = Task("1.3", "tok", 100, 10, 20, 3, 60, "m" * 32, 1)

reports = st.lists(st.tuples(st.integers(0, radio.SLOTS - 1), st.integers(-200, 200),
                             st.integers(0, 100)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reports)
async def test_sql_and_python_keep_the_same_profile(pool: Any,
                                                    seq: list[tuple[int, int, int]]) -> None:
    async with pool.acquire() as conn:
        sql: list[int] | None = None
        for slot, sig, pow_ in seq:
            sql = list(await conn.fetchval("SELECT ota.radio_add($1::smallint[], $2, $3, $4)",
                                           sql, slot, sig, pow_))
    py: list[int] | None = None
    for slot, sig, pow_ in seq:
        py = radio.update(py, slot, sig, pow_)
    assert sql == py


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.none(), st.lists(st.one_of(st.integers(-32768, 32767), st.none()),
                                     max_size=130)))
async def test_a_profile_read_in_its_wire_form_is_the_stored_one(
        pool: Any, values: list[int | None] | None) -> None:
    """The rehearsal reads profiles as ``array_send`` sends them (one bytes object a device,
    not 120 ints): decoded, the stored values, nulls read as 0, none as none."""
    async with pool.acquire() as conn:
        sent = await conn.fetchval("SELECT array_send($1::smallint[])", values)
    got = profile_of(sent)
    if not values:
        assert got is None
    else:
        assert got is not None and got.typecode == "h"
        assert got.tolist() == [0 if v is None else v for v in values]


async def test_ingest_keeps_the_profile_and_the_radio_keys(pool: Any) -> None:
    async with pool.acquire() as conn:
        await devices.upsert_status(conn, [StatusReport(1, "China Mobile", "M5310", "1.2",
                                                        signal=20, power=80, cell="c-17",
                                                        rsrp=-101, ce_level=1)])
        await devices.upsert_status(conn, [StatusReport(1, signal=22, power=70)])
        await devices.upsert_status(conn, [StatusReport(1, fota_version="1.3")])
        row = await conn.fetchrow("SELECT radio, cell, rsrp, ce_level FROM ota.devices")
    assert (row["cell"], row["rsrp"], row["ce_level"]) == ("c-17", -101, 1)
    profile = list(row["radio"])
    filled = [s for s in range(radio.SLOTS) if profile[s * radio.FIELDS]]
    assert sum(profile[s * radio.FIELDS] for s in filled) == 2     # the version alone: none


async def test_a_passing_report_wakes_a_gated_device_through_ingest(pool: Any) -> None:
    """Ingest's own write: a gated device (its task's gate failed at a check) whose fresh
    report now passes that gate is due at once, with the reason in its event; one whose
    report still fails keeps its next check."""
    async with pool.acquire() as conn:
        await devices.upsert_status(conn, [StatusReport(d, "China Mobile", "M5310", "1.2",
                                                        signal=5, power=80) for d in (1, 2)])
        cid = await create(conn, CampaignSpec("w", "fota", "1.3", all_devices=True),
                           start=True)
        locked = await members.lock(conn, [(cid, 1), (cid, 2)])
        later = time.time() + 6 * 3600
        await members.write(conn, [
            Write(cid, d, locked[(cid, d)].rev, "pending",
                  DeviceRow(state="gated", task=TASK, next_attempt_at=later, attempts=1),
                  "gate: low_signal") for d in (1, 2)], "test")
    sink = ProgressSink(PgDatabase(pool))
    await sink.apply([StatusReport(1, signal=15, power=80), StatusReport(2, signal=6,
                                                                          power=80)], [])
    async with pool.acquire() as conn:
        due = {r["dev_id"]: r["next_attempt_at"].timestamp() for r in await conn.fetch(
            "SELECT dev_id, next_attempt_at FROM ota.campaign_devices WHERE campaign_id = $1",
            cid)}
        reason = await conn.fetchval("SELECT reason FROM ota.events WHERE campaign_id = $1"
                                     " AND dev_id = 1 ORDER BY event_id DESC LIMIT 1", cid)
    assert due[1] <= time.time() + 1 and abs(due[2] - later) < 1, due
    assert reason.startswith("woken: a report passes the gate (signal 15 > 10"), reason
