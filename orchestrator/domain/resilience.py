"""Resilience arithmetic, pure: the one backoff every retry loop uses, and the circuit
breaker's state machine."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with jitter for the ``attempt``-th retry (0-based): a delay
    drawn from [c/2, c] with c = min(cap, base * 2**attempt). Never zero, so a loop of
    failures cannot spin; spread, so many waiters do not retry in step."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), 30))
    return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Breaker:
    """Consecutive failures open it for ``cooldown`` seconds (doubling while the endpoint
    stays down, up to ``max_cooldown``); then one probe at a time decides."""

    threshold: int = 20
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    failures: int = 0
    open_until: float = 0.0
    opened: int = 0          # consecutive openings
    probing: bool = False

    def is_open(self, now: float) -> bool:
        return self.failures >= self.threshold and (now < self.open_until or self.probing)

    def allow(self, now: float) -> tuple[bool, Breaker]:
        """May a call go now? A call in half-open state is the probe."""
        if self.failures < self.threshold:
            return True, self
        if now < self.open_until or self.probing:
            return False, self
        return True, dataclasses.replace(self, probing=True)

    def record(self, ok: bool, now: float) -> Breaker:
        if ok:
            if self.failures == 0 and not self.probing:
                return self    # the common case: nothing to change
            return dataclasses.replace(self, failures=0, open_until=0.0, opened=0,
                                       probing=False)
        failures = self.failures + 1
        if failures < self.threshold:
            return dataclasses.replace(self, failures=failures)
        cooldown = min(self.max_cooldown, self.cooldown * 2 ** min(self.opened, 10))
        return dataclasses.replace(self, failures=failures, open_until=now + cooldown,
                                   opened=self.opened + 1, probing=False)
