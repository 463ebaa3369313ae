"""How fast a campaign goes and when it ends, pure: the measured rate (devices finished per
minute over a sliding window), the limits that bound it (the rate limit, the in-flight cap
over the time one upgrade takes), and ETAs that count waves and maintenance windows."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.domain.rollout import Counts
from orchestrator.domain.windows import Schedule

RATE_WINDOW = 600.0        # seconds of working time behind a measured rate
MIN_SPAN = 5.0             # ... and at least this much before there is one
STALL_AFTER = 120.0        # working with nothing finished this long: a stall, no ETA
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
    """Devices finished per minute over the last ``window`` seconds of *working* time, from
    samples of a campaign's finished count (the controller takes one per pass).

    Working time is time the campaign ran inside an open window: a pause or a closed window
    stops the clock instead of diluting the rate. A stretch of more than ``stall_after``
    seconds in which nothing finished is a stall: it is left out of the rate too (a stall is
    reported, see :meth:`stalled_for`, not averaged in), so the rate after it is the rate
    the campaign goes at, not one that says "tomorrow" three minutes before the end."""

    def __init__(self, window: float = RATE_WINDOW, stall_after: float = STALL_AFTER) -> None:
        self.window = window
        self.stall_after = stall_after
        self._segments: collections.deque[tuple[float, int]] = collections.deque()
        self._last: tuple[float, int] | None = None
        self._working = False
        self._changed = 0.0        # when the count last moved (or work resumed)

    def add(self, t: float, finished: int, working: bool = True) -> None:
        last = self._last
        if last is None or finished < last[1]:      # the first sample, or retried devices
            self._segments.clear()                 # left "finished": start over
            self._changed = t
        else:
            span, done = t - last[0], finished - last[1]
            if working and not self._working:
                self._changed = t                  # resuming: the stall clock restarts
            elif working:
                if done > 0:
                    self._segments.append((span, done))
                    self._changed = t
                elif t - self._changed <= self.stall_after:
                    self._segments.append((span, 0))
        self._last, self._working = (t, finished), working
        total = sum(s for s, _ in self._segments)
        while self._segments and total - self._segments[0][0] >= self.window:
            total -= self._segments.popleft()[0]

    def clear(self) -> None:
        self._segments.clear()
        self._last = None

    def per_minute(self) -> float | None:
        """None until the working time measured spans ``MIN_SPAN`` seconds."""
        span = sum(s for s, _ in self._segments)
        if span < MIN_SPAN:
            return None
        return sum(d for _, d in self._segments) * 60.0 / span

    def stalled_for(self, t: float) -> float:
        """Seconds of work with nothing finished, once past ``stall_after`` (else 0)."""
        if not self._working or self._last is None:
            return 0.0
        quiet = t - self._changed
        return quiet if quiet > self.stall_after else 0.0


def no_eta(rate: float | None, stalled: float, paused: bool = False) -> str | None:
    """Why no ETA can be given (paused, stalled, no rate measured yet), or None: there is
    one."""
    if paused:
        return "paused"
    if stalled:
        took = f"{stalled:.0f} s" if stalled < 120 else f"{stalled / 60:.0f} min"
        return f"nothing finished for {took}"
    if rate is None:
        return "measuring the rate"
    if rate <= 0:
        return "nothing finishing"
    return None
