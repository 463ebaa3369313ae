"""Radio-aware gating, pure: a device's signal and power by hour of the day (its radio
profile), how likely a report in an hour passes a task's gate, when to check a device that
failed it, and how many downloads a cell admits at once.

The profile: for each of ``SLOTS`` slots of a period (a day; tests compress it), an
exponentially weighted mean and mean absolute deviation of the signal and the power
reported in that slot, and how many reports it holds (capped). Early reports average;
later ones weigh ``ALPHA`` each, so old behaviour ages out (about ten reports a slot). It is
``SLOTS * 5`` small integers (tenths), 250 bytes a device; ingest keeps it in the device's
row, in SQL (``ota.radio_add``, tested against :func:`update`).

The estimate assumes signal and power independent and each normal in a slot (sigma from
the mean absolute deviation): P(signal > s) * P(power > p), with a continuity correction
for integer readings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

SLOTS = 24
FIELDS = 5                     # per slot: n, mean signal, MAD signal, mean power, MAD power
SCALE = 10                     # stored in tenths
N_CAP = 1000
ALPHA = 0.1                    # weight of a new report once a slot holds ten
MIN_REPORTS = 3                # a slot with fewer says nothing
MIN_SIGMA = 0.5
PASS_LIKELY = 0.5              # check in the first slot this likely to pass
NEVER = 0.02                   # no slot this likely within the horizon: will not pass
DAY = 86400.0

Profile = list[int]


def empty() -> Profile:
    return [0] * (SLOTS * FIELDS)


def slot_of(t: float, period: float = DAY) -> int:
    return int((t % period) / (period / SLOTS)) % SLOTS


def slot_start(t: float, slot: int, period: float = DAY) -> float:
    """The first start of ``slot`` at or after ``t``."""
    base = t - (t % period)
    start = base + slot * period / SLOTS
    return start if start >= t else start + period


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def update(profile: Sequence[int] | None, slot: int, signal: int, power: int) -> Profile:
    """The profile with one more report in ``slot`` (``ota.radio_add`` does the same in
    SQL, with the same rounding)."""
    p = list(profile) if profile else empty()
    i = slot * FIELDS
    n = p[i]
    weight = max(1.0 / (n + 1), ALPHA)
    out = p[:]
    out[i] = min(n + 1, N_CAP)
    for k, value in ((1, signal), (3, power)):
        mean = p[i + k] / SCALE
        mad = p[i + k + 1] / SCALE
        new_mean = mean + weight * (value - mean) if n else float(value)
        new_mad = mad + weight * (abs(value - new_mean) - mad) if n else 0.0
        out[i + k] = _round(new_mean * SCALE)
        out[i + k + 1] = _round(new_mad * SCALE)
    return out


def informed(profile: Sequence[int] | None) -> bool:
    """Whether any slot of the profile holds enough reports to say something."""
    # each slot's count, every FIELDS-th value: one slice, read in C
    return bool(profile) and max(profile[0:SLOTS * FIELDS:FIELDS]) >= MIN_REPORTS  # type: ignore[index]


_ROOT2 = math.sqrt(2)


def estimate(profile: Sequence[int] | None, slot: int, signal: int, power: int
             ) -> float | None:
    """How likely a report in ``slot`` passes a gate of signal > ``signal`` and power >
    ``power``; None when the slot holds too few reports to say. Each reading is taken as
    normal around the slot's mean, its sigma 1.25 MAD (at least ``MIN_SIGMA``), read as an
    integer (``+ 0.5``); written out in one function: the rehearsal asks it a dozen times
    a device."""
    if not profile:
        return None
    i = slot * FIELDS
    if profile[i] < MIN_REPORTS:
        return None
    _, s_mean, s_mad, p_mean, p_mad = profile[i:i + FIELDS]
    z_signal = (signal + 0.5 - s_mean / SCALE) / max(1.25 * (s_mad / SCALE), MIN_SIGMA)
    z_power = (power + 0.5 - p_mean / SCALE) / max(1.25 * (p_mad / SCALE), MIN_SIGMA)
    return 0.25 * math.erfc(z_signal / _ROOT2) * math.erfc(z_power / _ROOT2)


@dataclass(frozen=True, slots=True)
class NextCheck:
    """When to check a device that failed the gate, and what its profile says."""

    at: float
    best_slot: int | None = None
    probability: float | None = None
    hopeless: bool = False        # no slot within the horizon is likely to pass


def next_check(now: float, interval: float, profile: Sequence[int] | None, signal: int,
               power: int, period: float = DAY, horizon: float | None = None) -> NextCheck:
    """The first slot start at least ``interval`` away whose pass estimate reaches
    ``PASS_LIKELY``, else the likeliest slot within ``horizon`` (a period by default); with
    no history, ``now + interval`` as before. The slots are read in time order from the
    earliest, so a likely one near stops the search."""
    earliest = now + interval
    horizon = period if horizon is None else horizon
    first = slot_of(earliest, period)
    best: tuple[float, int, float] | None = None
    for k in range(SLOTS):
        slot = (first + k) % SLOTS
        p = estimate(profile, slot, signal, power)
        if p is None:
            continue
        at = earliest if k == 0 else max(slot_start(earliest, slot, period), earliest)
        if at - earliest > horizon:
            continue
        if p >= PASS_LIKELY:
            return NextCheck(at, slot, p)
        if best is None or p > best[2]:
            best = (at, slot, p)
    if best is None:
        return NextCheck(earliest)
    at, slot, p = best
    return NextCheck(at, slot, p, hopeless=p < NEVER)


def hourly(profile: Sequence[int] | None, signal: int, power: int) -> list[float | None]:
    """The pass estimate of every slot."""
    return [estimate(profile, s, signal, power) for s in range(SLOTS)]


# --- cells ----------------------------------------------------------------------------------

# downloads at once per cell when devices report their coverage level and no cap is set
# (Huawei IoTDA's defaults for NB-IoT: 50, 10 and 1 at CE levels 0, 1 and 2)
CE_DEFAULTS: Mapping[int, int] = {0: 50, 1: 10, 2: 1}


def cell_cap(cap: int | None, ce_levels: Sequence[int | None]) -> int | None:
    """What a cell admits: the set cap, else the default of its worst reported coverage
    level; None: no cap."""
    if cap is not None:
        return cap
    levels = [c for c in ce_levels if c is not None]
    return CE_DEFAULTS[max(levels)] if levels else None


K = TypeVar("K")


def admit_by_cell(candidates: Sequence[tuple[K, str | None, int | None]],
                  busy: Mapping[str, int], cap: int | None) -> tuple[list[K], list[K]]:
    """Of ``candidates`` (key, cell, coverage level), in order, those a cell admits given
    what is ``busy`` in it already: (admitted, deferred). A device with no cell is admitted."""
    levels: dict[str, list[int | None]] = {}
    for _, cell, ce in candidates:
        if cell is not None:
            levels.setdefault(cell, []).append(ce)
    used = dict(busy)
    admitted: list[K] = []
    deferred: list[K] = []
    for key, cell, _ in candidates:
        limit = cell_cap(cap, levels[cell]) if cell is not None else None
        if cell is None or limit is None or used.get(cell, 0) < limit:
            admitted.append(key)
            if cell is not None:
                used[cell] = used.get(cell, 0) + 1
        else:
            deferred.append(key)
    return admitted, deferred


@dataclass(frozen=True, slots=True)
class Outlook:
    """What a group's profiles say of a gate: the share of its devices with a history
    likely to pass in each slot, the mean wait from now to each one's first likely slot,
    and how many have no likely slot in a day (or no history)."""

    devices: int
    hourly: list[float]
    expected_wait: float | None
    never: int
    unknown: int


def outlook(profiles: Sequence[Sequence[int] | None], signal: int, power: int, now: float,
            period: float = DAY) -> Outlook:
    hourly = [0] * SLOTS
    waits: list[float] = []
    never = unknown = 0
    for p in profiles:
        likely = [s for s in range(SLOTS) if (e := estimate(p, s, signal, power)) is not None
                  and e >= PASS_LIKELY]
        if not p or all(estimate(p, s, signal, power) is None for s in range(SLOTS)):
            unknown += 1
            continue
        for s in likely:
            hourly[s] += 1
        if not likely:
            never += 1
            continue
        waits.append(min(0.0 if slot_of(now, period) == s else slot_start(now, s, period) - now
                         for s in likely))
    n, known = len(profiles), len(profiles) - unknown
    return Outlook(n, [h / known if known else 0.0 for h in hourly],
                   sum(waits) / len(waits) if waits else None, never, unknown)
