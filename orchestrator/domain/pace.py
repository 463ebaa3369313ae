"""How fast a campaign goes and when it ends, pure: the measured rate (devices finished per
minute over a sliding window), the limits that bound it (the rate limit, the in-flight cap
over the time one upgrade takes), and ETAs that count waves and maintenance windows."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.domain.rollout import Counts
from orchestrator.domain.windows import Schedule

RATE_WINDOW = 600.0        # seconds of history behind a measured rate
MIN_SPAN = 5.0             # ... and at least this much before there is one
ALWAYS = Schedule()


@dataclass(frozen=True, slots=True)
class Pace:
    """What bounds a campaign's speed, in devices per minute."""

    measured_per_min: float | None = None    # finished per minute, recently
    max_per_minute: int | None = None        # the campaign's rate limit
    cap: int | None = None                   # in flight at most (fleet or campaign)
    upgrade_seconds: float | None = None     # median dispatch-to-finish time

    def per_minute(self) -> float | None:
        """The pace to plan with: the slowest of what is measured and what is imposed;
        None when nothing is known."""
        limits = [x for x in (self.measured_per_min, self.max_per_minute) if x]
        if self.cap and self.upgrade_seconds:
            limits.append(self.cap * 60.0 / self.upgrade_seconds)
        return min(limits) if limits else None


def wave_etas(now: float, remaining_by_wave: Sequence[int], pace: Pace,
              schedule: Schedule = ALWAYS) -> list[float | None]:
    """When each wave is expected to be done, in order: its devices at the pace plus one
    upgrade's duration (the next wave opens only when this one's last device finishes),
    counting only time inside the maintenance windows. None where it cannot be known."""
    rate = pace.per_minute()
    if not rate or rate <= 0:
        return [None] * len(remaining_by_wave)
    tail = pace.upgrade_seconds or 0.0
    open_time = 0.0
    out: list[float | None] = []
    for n in remaining_by_wave:
        if n > 0:
            open_time += n * 60.0 / rate + tail
        out.append(schedule.advance(now, open_time))
    return out


def campaign_eta(now: float, by_wave: Mapping[int, Counts], current_wave: int, pace: Pace,
                 schedule: Schedule = ALWAYS) -> float | None:
    """When a running campaign is expected to be done: the open waves' devices first, then
    each later wave in turn. ``now`` when nothing is left; None when it cannot be known."""
    opened = sum(c.open for w, c in by_wave.items() if w <= current_wave)
    later = [by_wave[w].open for w in sorted(by_wave) if w > current_wave]
    if opened + sum(later) == 0:
        return now
    etas = wave_etas(now, [opened, *later], pace, schedule)
    return etas[-1]


class RateMeter:
    """Devices finished per minute over the last ``window`` seconds, from samples of a
    campaign's finished count (kept by the controller: one sample per pass)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, finished: int) -> None:
        if self._samples and finished < self._samples[-1][1]:
            self._samples.clear()         # retried devices left "finished": start over
        self._samples.append((t, finished))
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window:
            self._samples.popleft()

    def clear(self) -> None:
        self._samples.clear()

    def per_minute(self) -> float | None:
        """None until the samples span ``MIN_SPAN`` seconds."""
        if len(self._samples) < 2:
            return None
        (t0, f0), (t1, f1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_SPAN:
            return None
        return (f1 - f0) * 60.0 / (t1 - t0)
