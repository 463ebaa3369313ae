"""The ingest sink: one transaction per batch, one statement per kind of message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.domain.engine import Policy
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.store import devices, progress
from orchestrator.store.db import with_retries
from orchestrator.store.progress import Relay


class PgSink:
    def __init__(self, pool: Any, policy: Policy | None = None,
                 relay: Callable[[Sequence[Relay]], None] | None = None) -> None:
        self.pool = pool
        self.policy = policy or Policy()
        self.relay = relay

    async def apply(
        self, statuses: Sequence[StatusReport], reports: Sequence[ProgressReport]
    ) -> Sequence[Rejection]:
        async def write(conn: Any) -> tuple[list[Rejection], list[Relay]]:
            rejected: list[Rejection] = []
            relays: list[Relay] = []
            # progress first: a device's 201 and its new version often share a batch, and
            # the step is the more precise record
            if reports:
                rejected, relays = await progress.apply_progress(conn, reports, self.policy)
            if statuses:
                await devices.upsert_status(conn, statuses)
                await progress.complete_by_version(conn, statuses)
            return rejected, relays

        rejected, relays = await with_retries(self.pool, write)
        if relays and self.relay is not None:
            self.relay(relays)
        return rejected
