"""Guards on query plans: an index that stops being used fails here, not in production."""

from __future__ import annotations

from typing import Any

from orchestrator.domain.campaign import CampaignSpec
from orchestrator.domain.device import NON_TERMINAL
from orchestrator.store.queries import q
from orchestrator.usecases.campaigns import create as create_campaign
from orchestrator.workers.scheduler import IN_FLIGHT_STATES, WAITING_STATES


async def test_claim_and_progress_use_their_indexes(pool: Any) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power)
               SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80
               FROM generate_series(1, 50000) g""")
        for _ in range(3):     # drafts: a device is in one *running* campaign per type
            await create_campaign(conn, CampaignSpec("p", "fota", "1.3", all_devices=True))
        await conn.execute("ANALYZE")
        for states in (WAITING_STATES, IN_FLIGHT_STATES):     # the scheduler's two claims
            claim = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN " + q("members_claim"), 2, list(states), 0, 500, 60.0, "t"))
            # through an index: of open rows (finished ones never read), of in-flight rows
            # (few, fleet-wide), or by due time over the campaign
            assert any(f"campaign_devices_{i}_idx" in claim for i in ("open", "busy", "due")), \
                claim
            # the claimed rows are updated by ctid, never through a hash of the table
            assert "Tid Scan on campaign_devices" in claim, claim
            assert "Seq Scan on campaign_devices" not in claim, claim
        woken = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("members_listening"), [5, 6, 7]))
        # the small partial index of unreachable, dispatched and gated rows, never the table
        assert "campaign_devices_wake_idx" in woken, woken
        assert "Seq Scan on campaign_devices" not in woken, woken
        lock = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("members_lock"), [2, 2, 2], [5, 6, 7]))
        assert "campaign_devices_pkey" in lock, lock
        # the batched writes take their rows as one JSON document: a scheduler's batch of
        # 2,000 must still reach each row by its key
        keys = [(2, d) for d in range(5, 2005)]
        lock = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + q("members_lock_keys"),
                                                         keys))
        assert "campaign_devices_pkey" in lock, lock
        rows = [(2, d, 1, "checking", 0, 0, 1.0, None, None, None, None, None, None, None,
                 None, None, "pending", "claimed") for d in range(5, 2005)]
        write = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + q("members_write"),
                                                          rows, "t"))
        assert "Seq Scan on campaign_devices" not in write, write
        assert "campaign_devices_pkey" in write, write
        # an ingest batch's statuses come as one JSON document too: each row by its key
        statuses = [(d, "1.3", None) for d in range(5, 5005)]
        target = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("members_reaching_target"), statuses, list(NON_TERMINAL)))
        assert "Seq Scan on campaign_devices" not in target, target
        assert "Index Scan using campaign_devices_" in target, target
        known = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("devices_known"), list(range(5, 5005))))
        assert "devices_pkey" in known and "Seq Scan" not in known, known
        by_device = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM ota.campaign_devices WHERE dev_id = ANY($1)",
            [5, 6, 7]))
        assert "campaign_devices_dev_idx" in by_device, by_device
        progress = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN ANALYZE SELECT * FROM ota.campaign_progress WHERE campaign_id = 2"))
        # kept counts: the view never touches the 150,000 membership rows
        assert "campaign_devices" not in progress, progress
        cells = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("cell_busy"), ["cell-1", "cell-2"]))
        # a cell's load from an index of the few in-flight rows, never joined to the devices
        assert any(f"campaign_devices_{i}_idx" in cells for i in ("cell", "busy")), cells
        assert " on devices" not in cells, cells
        outlook = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + q("gate_outlook"), 2))
        assert "campaign_devices_gated_idx" in outlook, outlook
        waits = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("campaign_waits"), 2, 5))
        # what a campaign waits on: kept counts, and the open rows' index read backwards
        assert "campaign_devices_open_idx" in waits and "Backward" in waits, waits
        assert "Seq Scan on campaign_devices" not in waits, waits


async def test_enrolment_leaves_busy_devices_out_without_a_nested_scan(pool: Any) -> None:
    """The one-running-campaign-per-type rule costs a hash anti-join, not a probe per
    device over every membership."""
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ota.devices (dev_id, manuf, model, fota_version)
               SELECT g, 'China Mobile', 'M5310', '1.2' FROM generate_series(1, 50000) g""")
        await create_campaign(conn, CampaignSpec("a", "fota", "1.3", all_devices=True),
                              start=True)
        await conn.execute("ANALYZE")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("enroll_count"), 99, None, None, [], None, "1.3", "fota"))
        assert "Anti Join" in plan, plan


async def test_a_continuous_pass_from_the_watermark_reads_only_new_devices(pool: Any) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO ota.devices (dev_id, manuf, model, fota_version, created_at)
               SELECT g, 'China Mobile', 'M5310', '1.2', now() - interval '1 day'
               FROM generate_series(1, 50000) g""")
        await conn.execute(
            """INSERT INTO ota.devices (dev_id, manuf, model, fota_version)
               SELECT g, 'China Mobile', 'M5310', '1.2' FROM generate_series(50001, 50010) g""")
        cid = await create_campaign(conn, CampaignSpec("c", "fota", "1.3", all_devices=True,
                                                       continuous=True), start=True)
        await conn.execute("ANALYZE")
        args = [cid, None, None, [], None, "1.3", "fota", 0]
        since = await conn.fetchval("SELECT now() - interval '1 minute'")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + q("enroll_late_since"), *args, since))
        assert "devices_created_idx" in plan and "Seq Scan on devices" not in plan, plan
        # the full pass keeps the full plan (a scan is right for the whole registry)
        full = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + q("enroll_late"), *args))
        assert "devices_created_idx" not in full, full
