"""The ingest sink: one transaction per batch, one statement per kind of message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.store import devices, progress


class PgSink:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def apply(
        self, statuses: Sequence[StatusReport], reports: Sequence[ProgressReport]
    ) -> Sequence[Rejection]:
        rejected: list[Rejection] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if statuses:
                await devices.upsert_status(conn, statuses)
                await progress.complete_by_version(conn, statuses)
            if reports:
                rejected = await progress.apply_progress(conn, reports)
        return rejected
