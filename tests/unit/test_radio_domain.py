"""Radio-aware gating, pure: the profile, the pass estimate, the next check, holding a
device its fresh report says would fail, waking one whose report passes, and what a cell
admits."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain import radio
from orchestrator.domain.device import (
    CELL_RETRY,
    DeviceRow,
    Policy,
    Status,
    gate_failed,
    on_cell_busy,
    on_status_while_gated,
    pre_gate,
)
from orchestrator.domain.onenet import Task
from orchestrator.sim.fleet import BadMix, make_devices, parse_patterns

DAY = 24.0                      # a compressed day: one-second hours
TASK = Task("1.3", "tok", 100, 10, 20, 3, 2, "m" * 32, 1)
POLICY = Policy(radio_period=DAY, status_max_age=60)


def profile_of(pattern: dict[int, tuple[int, int]], days: int = 3) -> radio.Profile:
    p = radio.empty()
    for _ in range(days):
        for slot in range(radio.SLOTS):
            signal, power = pattern.get(slot, (5, 80))
            for _ in range(2):
                p = radio.update(p, slot, signal, power)
    return p


NIGHT = profile_of(dict.fromkeys((0, 1, 2, 3, 22, 23), (25, 80)))     # good only at night


@given(st.lists(st.tuples(st.integers(0, 23), st.integers(-200, 200), st.integers(0, 100)),
                max_size=200))
def test_a_profile_stays_bounded_and_its_estimates_are_probabilities(
        reports: list[tuple[int, int, int]]) -> None:
    p: radio.Profile | None = None
    for slot, sig, pow_ in reports:
        p = radio.update(p, slot, sig, pow_)
    if p is None:
        return
    assert len(p) == radio.SLOTS * radio.FIELDS
    assert all(-32768 <= v <= 32767 for v in p)       # fits PostgreSQL's smallint
    for slot in range(radio.SLOTS):
        e = radio.estimate(p, slot, 10, 20)
        assert e is None or 0.0 <= e <= 1.0


def test_old_behaviour_ages_out() -> None:
    p = profile_of({}, days=2)                         # weak everywhere ...
    assert radio.estimate(p, 5, 10, 20) < 0.01         # type: ignore[operator]
    for _ in range(30):                                # ... then good in slot 5 for a month
        p = radio.update(p, 5, 25, 80)
    assert radio.estimate(p, 5, 10, 20) > 0.95         # type: ignore[operator]


def test_the_next_check_is_the_first_likely_slot_at_least_an_interval_away() -> None:
    now = 1_800_000_000.0 - (1_800_000_000.0 % DAY) + 10.2      # 10:12 of the day
    nxt = radio.next_check(now, 2, NIGHT, 10, 20, DAY)
    assert nxt.best_slot == 22 and not nxt.hopeless
    assert nxt.at == now - 10.2 + 22 and nxt.probability is not None and nxt.probability > 0.9
    assert radio.next_check(now, 2, None, 10, 20, DAY).at == now + 2    # no history
    weak = profile_of({})
    assert radio.next_check(now, 2, weak, 10, 20, DAY).hopeless


def test_a_failed_gate_waits_for_the_night_and_a_hopeless_one_says_so() -> None:
    now = 1_800_000_000.0 - (1_800_000_000.0 % DAY) + 10.2
    row = DeviceRow(state="checking", task=TASK, attempts=0)
    d = gate_failed(row, TASK, now, "gate: low_signal (signal 5, the task needs > 10)",
                    NIGHT, DAY)
    assert d.row.state == "gated" and d.row.attempts == 1 and d.row.best_slot == 22
    assert d.row.next_attempt_at == now - 10.2 + 22 and "best 22:00" in d.reason
    d = gate_failed(row, TASK, now, "gate: low_signal", profile_of({}), DAY)
    assert d.row.state == "failed" and "will not pass within a day" in d.row.last_error  # type: ignore[operator]
    d = gate_failed(row, TASK, now, "gate: low_signal", None, DAY)      # fixed interval
    assert (d.row.state, d.row.next_attempt_at) == ("gated", now + TASK.interval)


def test_a_device_whose_fresh_report_would_fail_a_known_gate_is_held_not_checked() -> None:
    now = 1_800_000_000.0 - (1_800_000_000.0 % DAY) + 10.2
    row = DeviceRow(state="checking")
    held = pre_gate(row, Status(5, 80, now - 1), now, POLICY, (10, 20), NIGHT)
    assert held is not None and held.row.state == "gated" and held.row.attempts == 0
    assert held.row.next_attempt_at == now - 10.2 + 22 and held.reason.startswith("held:")
    for status, known, profile in [(Status(15, 80, now - 1), (10, 20), NIGHT),   # passes
                                   (Status(5, 80, now - 100), (10, 20), NIGHT),  # stale
                                   (Status(5, 80, now - 1), None, NIGHT),        # gate unknown
                                   (Status(5, 80, now - 1), (10, 20), None),     # no profile
                                   (Status(5, 80, now - 1), (10, 20), profile_of({}))]:
        assert pre_gate(row, status, now, POLICY, known, profile) is None


def test_a_report_that_passes_wakes_a_gated_device() -> None:
    now = 1_800_000_000.0
    row = DeviceRow(state="gated", task=TASK, next_attempt_at=now + 500)
    woken = on_status_while_gated(row, Status(15, 50, now), now, POLICY)
    assert woken.row.next_attempt_at == now and "woken" in woken.reason
    assert on_status_while_gated(row, Status(8, 50, now), now, POLICY).row == row
    assert on_status_while_gated(row.replace(state="pending"), Status(15, 50, now), now,
                                 POLICY).row.next_attempt_at == now + 500


@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from([0, 1, 2, None])),
                max_size=60),
       st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 60)),
       st.one_of(st.none(), st.integers(1, 20)))
def test_a_cell_never_admits_past_its_cap(devices: list[tuple[str | None, int | None]],
                                          busy: dict[str, int], cap: int | None) -> None:
    candidates = [(i, cell, ce) for i, (cell, ce) in enumerate(devices)]
    admitted, deferred = radio.admit_by_cell(candidates, busy, cap)
    assert sorted(admitted + deferred) == list(range(len(devices)))
    for cell in ("a", "b"):
        levels = [ce for c, ce in devices if c == cell]
        limit = radio.cell_cap(cap, levels)
        if limit is None:
            continue
        mine = sum(1 for i in admitted if devices[i][0] == cell)
        assert busy.get(cell, 0) + mine <= max(limit, busy.get(cell, 0))
        if mine == 0 and any(devices[i][0] == cell for i in deferred):
            assert busy.get(cell, 0) >= limit
    assert radio.cell_cap(None, [0, 2, 1]) == 1 and radio.cell_cap(None, [None]) is None


def test_a_profile_informs_once_a_slot_holds_enough_reports() -> None:
    p = radio.empty()
    assert not radio.informed(None) and not radio.informed(p)
    for _ in range(radio.MIN_REPORTS - 1):
        p = radio.update(p, 5, 20, 80)
    assert not radio.informed(p)
    assert radio.informed(radio.update(p, 5, 20, 80))


def test_a_simulated_fleet_takes_patterns_and_cells_by_share() -> None:
    patterns = parse_patterns("steady=60, weak_by_day=30,always_weak=10")
    devices = make_devices(200, seed=5, patterns=patterns, cells=7)
    by = Counter(d.pattern for d in devices)
    assert by == {"steady": 120, "weak_by_day": 60, "always_weak": 20}
    assert {d.cell for d in devices} <= {f"cell-{i}" for i in range(7)}
    assert {d.ce_level for d in devices} <= {0, 1, 2}
    assert [d.pattern for d in make_devices(200, seed=5, patterns=patterns)] == \
        [d.pattern for d in devices]                    # reproducible by seed
    for bad in ("sunny=1", "steady=0", "steady=x"):
        with pytest.raises(BadMix, match="--patterns"):
            parse_patterns(bad)


def test_a_groups_outlook_shares_its_devices_with_history() -> None:
    weak = profile_of({})
    now = 12 * 3600.0                                   # noon of day 0
    o = radio.outlook([NIGHT, NIGHT, weak, None], 10, 20, now)
    assert (o.devices, o.never, o.unknown) == (4, 1, 1)
    assert o.hourly[23] == o.hourly[0] == 2 / 3 and o.hourly[12] == 0.0
    assert o.expected_wait == 10 * 3600.0               # noon to 22:00
    assert radio.outlook([], 10, 20, now).expected_wait is None


def test_devices_a_cell_turns_away_come_back_a_cap_at_a_time() -> None:
    row = DeviceRow(state="checking")
    later = [on_cell_busy(row, 100.0, "c1", 10, 10, position).row.next_attempt_at
             for position in range(25)]
    assert later[:10] == [100.0 + CELL_RETRY] * 10
    assert later[10:20] == [100.0 + 2 * CELL_RETRY] * 10 and later[20:] == [115.0] * 5
    d = on_cell_busy(row, 100.0, "c1", 3, 3)
    assert d.row.state == "pending" and d.row.attempts == 0 and "cell c1 busy" in d.reason


def _next_check_by_sorting(now: float, interval: float, profile: radio.Profile | None,
                           signal: int, power: int, period: float) -> radio.NextCheck:
    """next_check as first written (every slot, sorted by time): the oracle of the
    early-stopping one."""
    earliest = now + interval
    candidates = []
    for slot in range(radio.SLOTS):
        p = radio.estimate(profile, slot, signal, power)
        if p is None:
            continue
        at = max(radio.slot_start(earliest, slot, period), earliest) if radio.slot_of(
            earliest, period) != slot else earliest
        if at - earliest <= period:
            candidates.append((at, slot, p))
    if not candidates:
        return radio.NextCheck(earliest)
    candidates.sort()
    for at, slot, p in candidates:
        if p >= radio.PASS_LIKELY:
            return radio.NextCheck(at, slot, p)
    at, slot, p = max(candidates, key=lambda c: (c[2], -c[0]))
    return radio.NextCheck(at, slot, p, hopeless=p < radio.NEVER)


@settings(max_examples=200, deadline=None)
@given(readings=st.dictionaries(st.integers(0, 23), st.tuples(st.integers(-5, 40),
                                                              st.integers(0, 100))),
       now=st.floats(0, 10 * DAY), interval=st.floats(0, 2 * DAY),
       signal=st.integers(0, 30), power=st.integers(0, 90), days=st.integers(0, 4))
def test_the_next_check_stops_early_and_says_what_the_full_search_says(
        readings: dict[int, tuple[int, int]], now: float, interval: float, signal: int,
        power: int, days: int) -> None:
    profile = profile_of(readings, days)
    assert radio.next_check(now, interval, profile, signal, power, DAY) == \
        _next_check_by_sorting(now, interval, profile, signal, power, DAY)
