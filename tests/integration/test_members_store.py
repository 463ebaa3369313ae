"""The membership store against a real PostgreSQL: rows travel as JSON documents and come
back by column position, so a row written with every field set must read back equal, and
a stale write must leave both the row and the event log alone."""

from __future__ import annotations

import time
from typing import Any

import orjson

from orchestrator.domain.campaign import CampaignSpec, Write
from orchestrator.domain.device import DeviceRow, Status
from orchestrator.domain.onenet import Task
from orchestrator.domain.payloads import StatusReport
from orchestrator.store import devices, members, outbox
from orchestrator.usecases.campaigns import create as create_campaign
from orchestrator.workers.scheduler import IN_FLIGHT_STATES, WAITING_STATES

TASK = Task("1.3", "tok-é", 2048, 10, 20, 3, 60, "0" * 32, 2, "cdn.example:8080")


async def seeded(conn: Any, n: int) -> int:
    await conn.execute(
        "INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,"
        " status_at, last_seen) SELECT g, 'China Mobile', 'M5310', '1.2', 20 + g, 80,"
        " now(), now() FROM generate_series(1, $1) g", n)
    cid: int = await create_campaign(conn, CampaignSpec("s", "fota", "1.3", all_devices=True),
                                     start=True)
    return cid


async def test_a_row_with_every_field_set_reads_back_equal(pool: Any) -> None:
    now = int(time.time()) + 0.5       # whole microseconds: timestamptz keeps those
    async with pool.acquire() as conn:
        cid = await seeded(conn, 3)
        async with conn.transaction():
            claimed = await members.claim(conn, cid, 0, 10, 60.0, "me", WAITING_STATES)
        assert [c.dev_id for c in claimed] == [1, 2, 3]
        # fresh claims share one row object: they are equal and immutable
        assert claimed[0].row is claimed[1].row and claimed[0].row.state == "checking"
        assert claimed[1].status.signal == 22 and claimed[1].version == "1.2"
        assert abs((claimed[0].status.status_at or 0) - now) < 60
        full = DeviceRow("dispatched", 2, 1, now - 5.25, 0, 57, "a 'quoted' \"error\" ✓",
                         TASK, now + 86_400.5, now - 10.125, now - 20.0, now - 1.0,
                         "0123456789abcdef")
        plain = DeviceRow("gated", next_attempt_at=now - 1.0)
        async with conn.transaction():
            written = await members.write(conn, [
                Write(cid, 1, claimed[0].rev, "checking", full, "gate passed"),
                Write(cid, 2, claimed[1].rev, "checking", plain, "gate: stale", event=False),
                Write(cid, 3, claimed[2].rev - 1, "checking", plain, "stale write")], "me")
        assert written == {(cid, 1), (cid, 2)}           # device 3's revision moved on
        async with conn.transaction():
            locked = await members.lock(conn, [(cid, 3), (cid, 1), (cid, 2)])
        assert locked[(cid, 1)].row == full
        assert locked[(cid, 2)].row == plain
        assert locked[(cid, 3)].row.state == "checking"  # untouched
        assert (locked[(cid, 1)].type, locked[(cid, 1)].target_version) == ("fota", "1.3")
        async with conn.transaction():
            again = await members.claim(conn, cid, 0, 10, 60.0, "me", IN_FLIGHT_STATES)
        # due (next_attempt_at in the past) and in flight: claimed with its task intact
        assert [(c.dev_id, c.row.task, c.row.attempt) for c in again] == \
            [(1, TASK, "0123456789abcdef")]
        assert again[0].status == Status(21, 80, again[0].status.status_at)
        events = await conn.fetch(
            "SELECT dev_id, from_state, to_state, reason, actor, detail FROM ota.events"
            " WHERE kind = 'transition' ORDER BY event_id")
    # one event: device 2 was written without one, device 3 not written at all
    assert [tuple(e) for e in events] == [
        (1, "checking", "dispatched", "gate passed", "me", {"errno": 0, "step": 57})]


async def test_outbox_rows_come_back_leased_in_the_order_the_commands_went_in(
        pool: Any) -> None:
    async with pool.acquire() as conn:
        commands = [(d, {"op": "report", "n": d, "text": "ü\"'"}) for d in (9, 3, 7, 1)]
        queued = await outbox.enqueue(conn, commands, 60.0)
        ids = [i for i, _, _ in queued]
        # leased to the caller: no other publisher takes them while it publishes
        assert await outbox.lease(conn, 10, 60.0) == []
        await outbox.release(conn, ids[:2])
        taken = await outbox.lease(conn, 10, 60.0)
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [dev for _, dev, _ in queued] == [9, 3, 7, 1]
    assert '"text": "ü\\"\'"' in queued[0][2]
    assert orjson.loads(queued[1][2]) == {"op": "report", "n": 3, "text": "ü\"'"}
    assert taken == queued[:2]


async def test_status_documents_keep_text_exact_and_fields_a_report_leaves_out(
        pool: Any) -> None:
    """The registry's statements take a batch as one JSON document: text with quotes,
    backslashes and CJK arrives as sent, and a report's missing fields keep what was known
    (a status time only when it brings signal or power)."""
    manuf = 'Quectel "Q" \\ 移远通信'
    async with pool.acquire() as conn:
        assert await devices.upsert_status(conn, [
            StatusReport(1, manuf, "BC28", "2.0", None, 21, 80),
            StatusReport(2, "China Mobile", "M5310", "1.2"),
        ]) == 2
        first = await devices.get_device(conn, 1)
        await devices.upsert_status(conn, [StatusReport(1, sota_version="s-1"),
                                           StatusReport(2, signal=9)])
        one, two = await devices.get_device(conn, 1), await devices.get_device(conn, 2)
        # an import names what it knows; what a device reported itself wins
        await devices.import_devices(conn, [StatusReport(1, "Other", "BC28", "1.0"),
                                            StatusReport(3, "China Mobile", "M5310", "1.1")])
        after_import = await devices.get_device(conn, 1)
        three = await devices.get_device(conn, 3)
        known = await devices.known(conn, [3, 1, 99])
    assert first is not None and one is not None and two is not None
    assert (one.manuf, one.model, one.fota_version, one.sota_version, one.signal,
            one.power) == (manuf, "BC28", "2.0", "s-1", 21, 80)
    assert one.status_at == first.status_at          # no signal or power: same status time
    assert (two.signal, two.power, two.status_at is not None) == (9, None, True)
    assert after_import is not None and after_import.manuf == manuf
    assert three is not None and (three.fota_version, three.last_seen) == ("1.1", None)
    assert known == {1, 3}
