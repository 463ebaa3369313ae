"""The radio profile's one rule in two places: ingest updates it in SQL (``ota.radio_add``,
in the status upsert), the domain reads it and rehearses with ``radio.update``. Hypothesis
holds them to the same arithmetic over a real PostgreSQL."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.domain import radio
from orchestrator.domain.payloads import StatusReport
from orchestrator.store import devices

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
