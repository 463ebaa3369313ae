"""The progress relay against a real PostgreSQL and the OneNET simulator over HTTP: a step
OneNET does not answer waits and is tried again; on its last allowed try it is dropped,
logged and counted, never kept forever and never lost without a count."""

from __future__ import annotations

from typing import Any

from conftest import SIM_KEY
from orchestrator.config import Settings
from orchestrator.domain.progress import RELAY_GIVE_UP_AFTER, Relay
from orchestrator.metrics import Metrics
from orchestrator.onenet.client import OneNetClient
from orchestrator.sim.scenario import Faults
from orchestrator.store.database import PgDatabase
from orchestrator.workers.relay import Relayer


def outcome(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value("orch_relays_total", {"outcome": name})
    return value or 0.0


async def test_unanswered_steps_are_retried_then_dropped_and_counted(pool: Any,
                                                                     start_sim: Any) -> None:
    srv = await start_sim({})
    srv.sim.set_faults(Faults(drop_rate=1.0))     # every call: connection reset
    db = PgDatabase(pool)
    async with db.transaction() as tx:
        await tx.add_relays([Relay("tok-new", 1, 50), Relay("tok-old", 2, 100)])
    async with pool.acquire() as conn:
        # the second has failed every try but its last
        await conn.execute("UPDATE ota.relays SET attempts = $1 WHERE token = 'tok-old'",
                           RELAY_GIVE_UP_AFTER - 1)
    metrics = Metrics()
    s = Settings(onenet_url=srv.url, onenet_product_id="123123", onenet_access_key=SIM_KEY)
    async with OneNetClient(s) as client:
        relayer = Relayer(db, client, metrics)
        await relayer.tick()
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT token, attempts, lease_until > now() AS later"
                                    " FROM ota.relays")
        assert [(r["token"], r["attempts"], r["later"]) for r in rows] == [("tok-new", 1, True)]
        assert (outcome(metrics, "retried"), outcome(metrics, "dropped")) == (1, 1)
        assert outcome(metrics, "sent") == 0

        # not due yet: nothing is tried
        await relayer.tick()
        assert outcome(metrics, "retried") == 1

        # OneNET answers again (any errno is an answer: the step leaves the table)
        srv.sim.set_faults(Faults())
        async with pool.acquire() as conn:
            await conn.execute("UPDATE ota.relays SET lease_until = NULL")
        await relayer.tick()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM ota.relays") == 0
        assert outcome(metrics, "sent") == 1 and outcome(metrics, "dropped") == 1
        assert srv.sim.progress_reports == []      # unknown token: answered, not applied


async def test_a_garbage_answer_is_no_answer_the_step_waits(pool: Any,
                                                            bad_server: Any) -> None:
    """An endpoint answering 200 with bytes that are not JSON: not an answer; the step
    stays, retried later."""
    m, url = bad_server
    db = PgDatabase(pool)
    async with db.transaction() as tx:
        await tx.add_relays([Relay("tok", 1, 100)])
    metrics = Metrics()
    s = Settings(onenet_url=url, onenet_product_id="123123", onenet_access_key=SIM_KEY)
    async with OneNetClient(s) as client:
        await Relayer(db, client, metrics).tick()
    assert m.calls == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT attempts, lease_until > now() AS later FROM ota.relays")
    assert (row["attempts"], row["later"]) == (1, True)
    assert (outcome(metrics, "retried"), outcome(metrics, "sent")) == (1, 0)
