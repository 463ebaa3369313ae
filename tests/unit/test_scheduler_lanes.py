"""The scheduler's check lanes: every request answered in its own slot, local refusals never
sent, and never more calls out at once than the client's concurrency (a fake client: this
is the scheduling logic only; the real client is tested against the simulator)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from orchestrator.config import Settings
from orchestrator.domain.onenet import CheckOutcome, CheckRequest, Failed, NoTask, Retryable
from orchestrator.metrics import Metrics
from orchestrator.workers.scheduler import Scheduler


class CountingClient:
    def __init__(self) -> None:
        self.out = 0
        self.most = 0
        self.asked: list[int] = []

    def breaker_open(self) -> bool:
        return False

    async def check(self, req: CheckRequest) -> CheckOutcome:
        self.out += 1
        self.most = max(self.most, self.out)
        self.asked.append(req.dev_id)
        await asyncio.sleep(0.001 * (req.dev_id % 3))        # answers come back out of order
        self.out -= 1
        if req.dev_id % 5 == 0:
            return Retryable("timeout", f"device {req.dev_id}")
        return NoTask() if req.dev_id % 2 else Failed(1, f"device {req.dev_id}")


@pytest.mark.parametrize(("n", "concurrency"), [(0, 4), (1, 4), (3, 64), (200, 7)])
async def test_each_request_gets_its_own_answer_within_the_concurrency(
        n: int, concurrency: int) -> None:
    client = CountingClient()
    scheduler = Scheduler(Settings(onenet_concurrency=concurrency), cast(Any, None), client,
                          cast(Any, None), Metrics(), "t")
    refusals = {d: Failed(2, f"local {d}", local=True) for d in range(n) if d % 7 == 3}
    reqs = [refusals.get(d) or CheckRequest(d, "China Mobile", "M5310", 1, "1.2")
            for d in range(n)]
    outcomes = await scheduler.check_all(reqs)
    expected = [refusals[d] if d in refusals else
                Retryable("timeout", f"device {d}") if d % 5 == 0 else
                NoTask() if d % 2 else Failed(1, f"device {d}") for d in range(n)]
    assert outcomes == expected
    assert sorted(client.asked) == [d for d in range(n) if d not in refusals]
    assert client.most <= concurrency
    if n - len(refusals) >= concurrency:
        assert client.most == concurrency         # the lanes are all used
