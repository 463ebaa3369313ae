"""Kept counts: deltas folded by the controller, read per wave, the due backlog."""

from __future__ import annotations

from orchestrator.domain.device import DUE_STATES
from orchestrator.domain.rollout import Counts
from orchestrator.store.db import Connection
from orchestrator.store.queries import q


async def fold(conn: Connection) -> None:
    """Move pending count deltas into campaign_counts, and finished minutes of transition
    deltas into transition_minutes."""
    await conn.execute(q("counts_fold"))
    await conn.execute(q("transitions_fold"))


async def by_wave(conn: Connection, campaign_id: int) -> dict[int, Counts]:
    by: dict[int, dict[str, int]] = {}
    for r in await conn.fetch(q("counts_by_wave"), campaign_id):
        by.setdefault(r["wave"], {})[r["state"]] = int(r["n"])
    return {w: Counts.from_states(states) for w, states in by.items()}


async def due_backlog(conn: Connection) -> tuple[int, float]:
    """(devices due now in running campaigns, up to 10,000; the oldest one's lag in s)."""
    row = await conn.fetchrow(q("due_backlog"), list(DUE_STATES))
    assert row is not None
    return int(row["n"]), float(row["lag"])
