"""Campaign-level arithmetic: wave boundaries, the wave gate, the abort rule, completion."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.domain.device import TERMINAL


class BadRollout(ValueError):
    pass


def parse_waves(text: str) -> list[int]:
    """``"1,10,50,100"`` → cumulative percentages, increasing, ending at 100."""
    try:
        waves = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadRollout(f"waves: {text!r} is not a list of integers like 1,10,50,100") from None
    check_waves(waves)
    return waves


def check_waves(waves: Sequence[int]) -> None:
    if not waves:
        raise BadRollout("waves: at least one wave")
    if any(not 0 < w <= 100 for w in waves):
        raise BadRollout("waves: each percentage in 1..100")
    if any(b <= a for a, b in itertools.pairwise(waves)):
        raise BadRollout("waves: percentages must increase (they are cumulative)")
    if waves[-1] != 100:
        raise BadRollout("waves: the last wave must be 100")


def wave_bounds(total: int, waves: Sequence[int], first_at_least: int = 0) -> list[int]:
    """Exclusive upper ranks of each wave: device of rank r (0-based) is in the first wave
    whose bound exceeds r. Every wave holds at least one device while devices remain.
    ``first_at_least``: the first wave holds at least this many (the canary, ranked first)."""
    bounds: list[int] = []
    for w in waves:
        b = math.ceil(total * w / 100)
        b = max(b, min(total, bounds[-1] + 1) if bounds else first_at_least)
        bounds.append(min(b, total))
    return bounds


def wave_of(rank: int, bounds: Sequence[int]) -> int:
    for i, b in enumerate(bounds):
        if rank < b:
            return i
    return len(bounds) - 1


def canary_size(group_sizes: Iterable[int], per_group: int) -> int:
    """How many devices a canary of ``per_group`` per group holds (all of a smaller group)."""
    return sum(min(per_group, n) for n in group_sizes)


def canary_ranks(devices: Sequence[tuple[int, Hashable]], per_group: int | None,
                 order: Callable[[int], Any] = lambda d: d) -> list[int]:
    """The enrolment order of a campaign's devices (``(dev_id, group)`` pairs): with a
    canary, the first ``per_group`` of every group by ``order`` come first, then the rest;
    each part in ``order``. The store's enrolment statement implements the same order
    (``order``: a hash of the id), so the first wave samples every group."""
    by_order = sorted(devices, key=lambda dg: (order(dg[0]), dg[0]))
    if not per_group:
        return [d for d, _ in by_order]
    seen: dict[Hashable, int] = {}
    canary: list[int] = []
    rest: list[int] = []
    for d, g in by_order:
        seen[g] = seen.get(g, 0) + 1
        (canary if seen[g] <= per_group else rest).append(d)
    return canary + rest


def assign_waves(devices: Sequence[tuple[int, Hashable]], waves: Sequence[int],
                 per_group: int | None = None,
                 order: Callable[[int], Any] = lambda d: d) -> dict[int, int]:
    """Each device's wave (0-based): the ranked devices cut by the wave bounds."""
    ranked = canary_ranks(devices, per_group, order)
    groups = Counter(g for _, g in devices)
    bounds = wave_bounds(len(ranked), waves,
                         canary_size(groups.values(), per_group or 0))
    return {d: wave_of(r, bounds) for r, d in enumerate(ranked)}


def slots(want: int, cap: int | None, busy: int) -> int:
    """How many more devices may be claimed for checking when ``busy`` are checking or in
    flight under ``cap`` (None: no cap). Never negative; never more than wanted."""
    if cap is None:
        return max(want, 0)
    return max(0, min(want, cap - busy))


@dataclass(frozen=True, slots=True)
class Counts:
    pending: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    no_task: int = 0
    cancelled: int = 0
    unreachable: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, s) for s in COUNT_STATES)

    @property
    def finished(self) -> int:
        """Devices whose upgrade ended either way (no_task and cancelled are not judged)."""
        return self.succeeded + self.failed

    @property
    def open(self) -> int:
        """Devices still to go through (unreachable ones wait for a report: not open)."""
        return self.pending + self.in_progress

    @classmethod
    def from_states(cls, by_state: Mapping[str, int]) -> Counts:
        in_progress = sum(n for s, n in by_state.items()
                          if s not in TERMINAL and s not in ("pending", "unreachable"))
        return cls(by_state.get("pending", 0), in_progress, by_state.get("succeeded", 0),
                   by_state.get("failed", 0), by_state.get("no_task", 0),
                   by_state.get("cancelled", 0), by_state.get("unreachable", 0))

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.pending + other.pending, self.in_progress + other.in_progress,
                      self.succeeded + other.succeeded, self.failed + other.failed,
                      self.no_task + other.no_task, self.cancelled + other.cancelled,
                      self.unreachable + other.unreachable)


# the states campaigns are counted by (ota.campaign_progress, the CLI's bars, the API): one
# source, the fields of Counts
COUNT_STATES = tuple(f.name for f in dataclasses.fields(Counts))


@dataclass(frozen=True, slots=True)
class Rules:
    waves: tuple[int, ...] = (100,)
    wave_success_pct: float = 0.0
    abort_failure_pct: float | None = None
    abort_min_finished: int = 1
    continuous: bool = False
    abort_action: Literal["pause", "abort"] = "pause"
    # the evidence an operator accepted by resuming: judged no more
    failed_base: int = 0
    finished_base: int = 0
    gate_accepted_wave: int = -1


@dataclass(frozen=True, slots=True)
class Evidence:
    """What resuming accepts: failures so far no longer count against the abort rule, and
    the current wave's gate is open."""

    failed_base: int
    finished_base: int
    gate_accepted_wave: int


def accept(by_wave: Mapping[int, Counts], current_wave: int) -> Evidence:
    every = sum(by_wave.values(), Counts())
    return Evidence(every.failed, every.finished, current_wave)


@dataclass(frozen=True, slots=True)
class Action:
    kind: Literal["none", "open_wave", "pause", "abort", "complete"]
    reason: str = ""
    wave: int | None = None
    rule: Literal["abort", "wave_gate"] | None = None   # which rule paused or aborted


def decide(rules: Rules, current_wave: int, by_wave: Mapping[int, Counts]) -> Action:
    """What the controller does with a running campaign, given counts per wave."""
    every = sum(by_wave.values(), Counts())
    failed = every.failed - rules.failed_base
    finished = every.finished - rules.finished_base
    if rules.abort_failure_pct is not None and finished >= rules.abort_min_finished \
            and finished > 0:
        pct = 100.0 * failed / finished
        if pct > rules.abort_failure_pct:
            since = " since the last resume" if rules.finished_base else ""
            return Action(rules.abort_action,
                          f"abort rule: {pct:.1f}% failed of {finished} finished{since} > "
                          f"{rules.abort_failure_pct:g}%", rule="abort")
    opened = sum((c for w, c in by_wave.items() if w <= current_wave), Counts())
    if opened.open > 0:
        return Action("none")
    last_wave = len(rules.waves) - 1
    if current_wave < last_wave:
        judged = opened.finished
        if judged and rules.wave_success_pct and current_wave > rules.gate_accepted_wave:
            pct = 100.0 * opened.succeeded / judged
            if pct < rules.wave_success_pct:
                return Action("pause", f"wave {current_wave + 1}: {pct:.1f}% succeeded < "
                                       f"{rules.wave_success_pct:g}% needed for the next wave",
                              rule="wave_gate")
        return Action("open_wave", f"wave {current_wave + 1} done; opening wave "
                                   f"{current_wave + 2}", current_wave + 1)
    if every.open == 0 and not rules.continuous:
        if every.unreachable:
            return Action("complete", f"every device finished; {every.unreachable} "
                                      "unreachable (campaign retry --state unreachable)")
        return Action("complete", "every device finished")
    return Action("none")


def rate_capacity(per_minute: int) -> float:
    """The bucket holds five seconds' worth (at least one): smooth, not a minute's burst."""
    return max(1.0, per_minute / 12.0)


def rate_tokens(tokens: float, per_minute: int | None, elapsed: float) -> float:
    """A token bucket refilled at ``per_minute``; tokens never exceed the capacity."""
    if per_minute is None:
        return math.inf
    return min(rate_capacity(per_minute), tokens + per_minute * max(elapsed, 0.0) / 60.0)


RECONCILE_EVERY = 600.0     # a continuous campaign's full enrolment pass, seconds
WATERMARK_MARGIN = 60.0     # a device row may commit this long after its created_at


def enrol_since(watermark: dt.datetime | None, last_full: float | None, now: float,
                reconcile_every: float = RECONCILE_EVERY,
                margin: float = WATERMARK_MARGIN) -> dt.datetime | None:
    """Which devices a continuous campaign's next enrolment pass looks at: None for the
    whole registry (the first pass, then every ``reconcile_every`` seconds, which also
    catches a device whose version changed into the selector), else those created after
    this (the last pass's database time less ``margin``, for rows committed late)."""
    if watermark is None or last_full is None or now - last_full >= reconcile_every:
        return None
    return watermark - dt.timedelta(seconds=margin)
