"""The ports the workers depend on: typed database access, the command publisher, the
check client, the ingest sink. Adapters (``store``, ``mqtt``, ``onenet``) implement them;
workers import this module and the domain, never an adapter.

Errors cross the boundary as the types below, so no worker needs to know asyncpg's or
aiomqtt's exceptions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

from orchestrator.domain.campaign import Campaign, Claimed, Member, RunningCampaign, Write
from orchestrator.domain.onenet import CheckOutcome, CheckRequest
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.domain.rollout import Counts

T = TypeVar("T")
Key = tuple[int, int]


class DatabaseUnavailable(Exception):
    """Transient: the database is restarting, failing over, overloaded or unreachable.
    Nothing was committed; the same work may be tried again later."""


class DataRejected(Exception):
    """The database refused the statement on its content: trying again will not help."""


class PublishFailed(Exception):
    """The broker did not take (or acknowledge) the commands; they stay queued."""


class Tx(Protocol):
    """One open transaction: everything done through it commits or rolls back together."""

    # campaigns
    async def running_campaigns(self) -> list[RunningCampaign]: ...
    async def get_campaign(self, campaign_id: int) -> Campaign | None: ...
    async def set_status(self, campaign_id: int, action: str, *, actor: str,
                         reason: str | None = None) -> Campaign: ...
    async def set_wave(self, campaign_id: int, wave: int) -> None: ...
    async def enroll_late(self, campaign: Campaign) -> int: ...
    async def event(self, kind: str, reason: str, *, campaign_id: int | None = None,
                    dev_id: int | None = None, from_state: str | None = None,
                    to_state: str | None = None, actor: str = "orchestrator",
                    detail: dict[str, Any] | None = None) -> None: ...
    async def take_rate(self, campaign_id: int) -> tuple[float, float]: ...
    async def put_rate(self, campaign_id: int, tokens: float) -> None: ...
    # membership
    async def claim(self, campaign_id: int, current_wave: int, limit: int, lease: float,
                    owner: str) -> list[Claimed]: ...
    async def lock_members(self, keys: Sequence[Key]) -> dict[Key, Member]: ...
    async def write_members(self, writes: Sequence[Write], actor: str, *,
                            locked: bool = False) -> set[Key]: ...
    async def members_reaching_target(self, statuses: Sequence[StatusReport]
                                      ) -> list[Key]: ...
    async def count_checks(self, counts: Counter[Key]) -> None: ...
    # registry
    async def upsert_status(self, reports: Sequence[StatusReport]) -> int: ...
    # counts and the controller
    async def try_controller_lock(self) -> bool: ...
    async def fold_counts(self) -> None: ...
    async def counts_by_wave(self, campaign_id: int) -> dict[int, Counts]: ...
    async def due_backlog(self) -> tuple[int, float]: ...
    # outbox
    async def enqueue(self, commands: Sequence[tuple[int, dict[str, Any]]]) -> list[int]: ...
    async def take_outbox(self, ids: Sequence[int] | None,
                          limit: int) -> list[tuple[int, str]]: ...


class Database(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction; database errors leave it as DatabaseUnavailable/DataRejected."""
        ...

    async def run(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """``fn`` in a transaction, run again after a deadlock or serialization failure."""
        ...


class CommandPublisher(Protocol):
    async def publish_many(self, commands: Sequence[tuple[int, str]]) -> None:
        """Publish at QoS 1; return once the broker acknowledged all (else PublishFailed)."""
        ...


class CheckClient(Protocol):
    def breaker_open(self) -> bool: ...
    async def check(self, req: CheckRequest) -> CheckOutcome: ...
    async def report_progress(self, token: str, dev_id: int, step: int) -> int | None: ...


class IngestSink(Protocol):
    async def apply(self, statuses: Sequence[StatusReport],
                    progress: Sequence[ProgressReport]) -> Sequence[Rejection]:
        """Write one batch in one transaction; return messages refused by state."""
        ...
