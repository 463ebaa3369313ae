"""Issue 12's decisions, without I/O: the canary covers every group, caps are never
exceeded, windows (across midnight and DST), unreachable is not failed, and the ETA."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.campaign import (
    CampaignInputError,
    CampaignSpec,
    Selector,
    campaign_policy,
)
from orchestrator.domain.device import (
    DUE_STATES,
    DeviceRow,
    Policy,
    on_claim,
    on_heard,
    on_retry,
    on_version,
)
from orchestrator.domain.onenet import Task
from orchestrator.domain.pace import Pace, RateMeter, campaign_eta, wave_etas
from orchestrator.domain.rollout import (
    Counts,
    Rules,
    assign_waves,
    canary_size,
    decide,
    enrol_since,
    slots,
    wave_bounds,
)
from orchestrator.domain.windows import NEVER, BadWindow, Schedule, parse_window

TASK = Task("1.3", "tok", 100, 10, 20, 2, 60, "m" * 32, 1)
NOW = 1_900_000_000.0
ZONES = ("UTC", "Asia/Shanghai", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe")


# --- canary ---------------------------------------------------------------------------------

fleets = st.lists(st.tuples(st.integers(1, 10**6), st.sampled_from("ABCDEFG")), min_size=1,
                  max_size=300, unique_by=lambda dg: dg[0])
wave_lists = st.lists(st.integers(1, 99), max_size=4, unique=True).map(
    lambda ws: [*sorted(ws), 100])


@given(fleets, st.integers(1, 20), wave_lists)
def test_the_canary_covers_every_group(fleet: list[tuple[int, str]], n: int,
                                       waves: list[int]) -> None:
    assigned = assign_waves(fleet, waves, n, order=lambda d: (d * 2654435761) % 2**32)
    assert set(assigned) == {d for d, _ in fleet}
    for group in {g for _, g in fleet}:
        members = [d for d, g in fleet if g == group]
        first = [d for d in members if assigned[d] == 0]
        assert len(first) >= min(n, len(members))
    # deterministic: the order the fleet is listed in does not matter
    shuffled = fleet[:]
    random.Random(n).shuffle(shuffled)
    assert assign_waves(shuffled, waves, n, order=lambda d: (d * 2654435761) % 2**32) \
        == assigned


def test_a_one_percent_module_is_in_the_first_wave() -> None:
    fleet = [(d, "M5310" if d % 100 else "rare") for d in range(1, 10_001)]
    assigned = assign_waves(fleet, [1, 10, 100], 5)
    rare_first = [d for d, g in fleet if g == "rare" and assigned[d] == 0]
    assert len(rare_first) == 5
    plain = assign_waves(fleet, [1, 10, 100])
    assert sum(1 for d, g in fleet if g == "rare" and plain[d] == 0) <= 1   # ids in order


@given(st.integers(0, 10_000), wave_lists, st.integers(0, 20_000))
def test_wave_bounds_hold_the_canary_and_increase(total: int, waves: list[int],
                                                  first: int) -> None:
    bounds = wave_bounds(total, waves, first_at_least=first)
    assert bounds[-1] == total and bounds[0] >= min(first, total)
    assert all(b >= a for a, b in itertools.pairwise(bounds))


def test_canary_size_counts_small_groups_whole() -> None:
    assert canary_size([100, 3, 1], 5) == 5 + 3 + 1


# --- the in-flight cap ----------------------------------------------------------------------

@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 600)), max_size=50),
       st.integers(1, 500), st.integers(0, 200))
def test_serialized_claims_never_exceed_the_cap(turns: list[tuple[str, int]], cap: int,
                                                busy: int) -> None:
    """Two replicas take turns (the cap lock); whatever they want, the fleet stays under
    the cap (or where it was, when a cap is lowered below what is in flight)."""
    start = busy
    for _replica, want in turns:
        got = slots(want, cap, busy)
        assert 0 <= got <= want
        busy += got
        assert busy <= max(cap, start)
        busy -= random.Random(want).randint(0, busy - start) if busy > start else 0


def test_no_cap_means_no_limit() -> None:
    assert slots(500, None, 10**9) == 500 and slots(-3, None, 0) == 0


# --- maintenance windows --------------------------------------------------------------------

def at(zone: str, *parts: int) -> float:
    return dt.datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp()   # type: ignore[misc]


def test_windows_parse_and_refuse_clearly() -> None:
    w = parse_window("Mon-Fri 01:00-05:00")
    assert w.days == frozenset(range(5)) and (w.start, w.end) == (60, 300)
    assert parse_window("Fri-Mon 22:00-02:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("sat,sun 00:00-24:00").end == 1440
    for bad in ("Mon 01:00", "Xyz 01:00-02:00", "Mon 25:00-26:00", "Mon 01:00-01:00",
                "Mon 01:60-02:00", "Mon 24:00-01:00"):
        with pytest.raises(BadWindow):
            parse_window(bad)
    with pytest.raises(BadWindow, match="IANA"):
        Schedule.parse(["Mon 01:00-02:00"], "Mars/Olympus")


def test_a_window_across_midnight_belongs_to_the_day_it_starts() -> None:
    s = Schedule.parse(["Fri 22:00-02:00"], "Asia/Shanghai")
    assert s.is_open(at("Asia/Shanghai", 2026, 11, 27, 23, 0))      # Friday night
    assert s.is_open(at("Asia/Shanghai", 2026, 11, 28, 1, 59))      # Saturday early
    assert not s.is_open(at("Asia/Shanghai", 2026, 11, 28, 2, 0))
    assert not s.is_open(at("Asia/Shanghai", 2026, 11, 27, 1, 0))   # Friday early: Thu's
    nxt = s.next_open(at("Asia/Shanghai", 2026, 11, 28, 3, 0))
    assert nxt == at("Asia/Shanghai", 2026, 12, 4, 22, 0)


def test_windows_follow_daylight_saving() -> None:
    ny = Schedule.parse(["daily 01:00-03:00"], "America/New_York")
    # 2026-03-08: clocks jump 02:00 -> 03:00; the window is one hour long that night
    start = ny.next_open(at("America/New_York", 2026, 3, 8, 0, 0))
    end = ny.next_change(start, False)
    assert start is not None and end is not None and end - start == 3600
    # 2026-11-01: 01:00-02:00 happens twice; the window is three hours long
    start = ny.next_open(at("America/New_York", 2026, 11, 1, 0, 0))
    end = ny.next_change(start, False)
    assert start is not None and end is not None and end - start == 3 * 3600
    # a window inside the skipped hour does not happen that night
    gap = Schedule.parse(["daily 02:00-02:30"], "America/New_York")
    nxt = gap.next_open(at("America/New_York", 2026, 3, 8, 0, 0))
    assert nxt == at("America/New_York", 2026, 3, 9, 2, 0)


window_texts = st.builds(
    lambda d, h1, m1, h2, m2: f"{d} {h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}",
    st.sampled_from(["Mon", "Sat,Sun", "Mon-Fri", "Fri-Mon", "daily", "Wed"]),
    st.integers(0, 23), st.sampled_from([0, 15, 30, 45]), st.integers(0, 23),
    st.sampled_from([0, 15, 30, 45])).filter(lambda t: t[-11:-6] != t[-5:])


@settings(max_examples=150, deadline=None)
@given(st.lists(window_texts, min_size=1, max_size=3), st.sampled_from(ZONES),
       st.floats(at("UTC", 2026, 1, 1), at("UTC", 2027, 12, 31)), st.randoms())
def test_next_open_is_the_first_open_instant(texts: list[str], zone: str, t: float,
                                             rnd: random.Random) -> None:
    s = Schedule.parse(texts, zone)
    nxt = s.next_open(t)
    assert nxt is not None and nxt >= t and s.is_open(nxt)
    if nxt > t + 1e-3:
        for _ in range(40):
            assert not s.is_open(rnd.uniform(t, nxt - 1e-3))
    close = s.next_change(nxt, False)
    if close is not None:
        assert close > nxt and not s.is_open(close)
        for _ in range(40):
            assert s.is_open(rnd.uniform(nxt, close - 1e-3))


@settings(max_examples=60, deadline=None)
@given(st.lists(window_texts, min_size=1, max_size=2), st.sampled_from(ZONES),
       st.floats(at("UTC", 2026, 1, 1), at("UTC", 2027, 12, 31)), st.floats(1, 40_000))
def test_advance_counts_only_open_time(texts: list[str], zone: str, t: float,
                                       need: float) -> None:
    s = Schedule.parse(texts, zone)
    end = s.advance(t, need)
    assert end is not None and end >= t + need - 1e-6
    # the open time between t and end, walked interval by interval, is what was asked
    got, x = 0.0, t
    while True:
        a = s.next_open(x)
        assert a is not None
        if a >= end:
            break
        b = s.next_change(a, False)
        b = end if b is None or b > end else b
        got += b - a
        x = b
        if x >= end:
            break
    assert abs(got - need) < 1e-3


# --- unreachable ----------------------------------------------------------------------------

def sent(heard: float) -> DeviceRow:
    return DeviceRow(state="dispatched", task=TASK, dispatched_at=heard, heard_at=heard,
                     token_expires_at=NOW + 86400, next_attempt_at=NOW)


def test_a_device_silent_since_its_command_is_rechecked_free_then_unreachable() -> None:
    again = on_claim(sent(NOW - 1800), NOW, last_seen=NOW - 1900, unreachable_after=3600)
    assert again.row.state == "checking" and again.row.attempts == 0
    assert again.reason == "silent_since_the_command"
    # progress heard 60 s ago, its last status long before: not silent long, checked again
    heard = on_claim(sent(NOW - 60), NOW, last_seen=NOW - 3700, unreachable_after=3600)
    assert heard.row.state == "checking" and heard.row.attempts == 0
    gone = on_claim(sent(NOW - 3600), NOW, last_seen=None, unreachable_after=3600)
    assert gone.row.state == "unreachable" and gone.row.next_attempt_at is None
    assert gone.row.attempts == 0
    # a device that talks but makes no progress is a dispatch timeout, as before
    talks = on_claim(sent(NOW - 3600), NOW, last_seen=NOW - 10, unreachable_after=3600)
    assert talks.row.state == "checking" and talks.row.attempts == 1


def test_an_unreachable_device_comes_back_by_reporting() -> None:
    row = sent(NOW - 3600).replace(state="unreachable", next_attempt_at=None)
    back = on_heard(row, NOW)
    assert back.row.state == "pending" and back.row.next_attempt_at == NOW
    assert back.row.dispatched_at is None and back.row.attempt is None
    # one that upgraded while silent reports the target: succeeded
    assert on_version(row, "1.3", "1.3").row.state == "succeeded"
    assert on_retry(row, NOW, "ops").row.state == "pending"
    assert "unreachable" not in DUE_STATES


def test_unreachable_devices_are_left_out_of_the_rules() -> None:
    rules = Rules((50, 100), wave_success_pct=90, abort_failure_pct=10)
    # wave 1: 9 succeeded, 1 unreachable: 100% of the judged, the next wave opens
    a = decide(rules, 0, {0: Counts(succeeded=9, unreachable=1), 1: Counts(pending=10)})
    assert a.kind == "open_wave"
    # everything done but unreachable devices: complete, and they are listed
    done = decide(rules, 1, {0: Counts(succeeded=9, unreachable=1),
                             1: Counts(succeeded=10, unreachable=3)})
    assert done.kind == "complete" and "4 unreachable" in done.reason
    assert Counts.from_states({"unreachable": 2, "gated": 1}).in_progress == 1


# --- pace and ETA ---------------------------------------------------------------------------

def test_the_pace_is_the_slowest_bound() -> None:
    assert Pace(600.0, 120).per_minute() == 120
    assert Pace(60.0, None, cap=100, upgrade_seconds=600).per_minute() == 10
    assert Pace().per_minute() is None


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=6), st.floats(1, 10_000),
       st.floats(0, 3600))
def test_wave_etas_never_go_backwards(sizes: list[int], rate: float, upgrade: float) -> None:
    etas = wave_etas(NOW, sizes, Pace(rate, upgrade_seconds=upgrade))
    assert all(e is not None for e in etas)
    assert all(b >= a for a, b in itertools.pairwise(etas))  # type: ignore[operator]
    assert etas[-1] >= NOW + sum(sizes) * 60 / rate - 1e-6   # type: ignore[operator]


def test_an_eta_waits_for_the_window() -> None:
    s = Schedule.parse(["daily 01:00-05:00"], "Asia/Shanghai")
    now = at("Asia/Shanghai", 2026, 11, 27, 12, 0)
    # 300 devices at 60/min: 5 minutes of open time, tonight from 01:00
    eta = campaign_eta(now, {0: Counts(pending=300)}, 0, Pace(60.0), s)
    assert eta == at("Asia/Shanghai", 2026, 11, 28, 1, 5)
    # 300 minutes of work spans two nights
    eta = campaign_eta(now, {0: Counts(pending=18_000)}, 0, Pace(60.0), s)
    assert eta == at("Asia/Shanghai", 2026, 11, 29, 2, 0)
    assert campaign_eta(now, {0: Counts(succeeded=5)}, 0, Pace(), s) == now


def test_the_rate_meter_slides() -> None:
    m = RateMeter(window=60)
    assert m.per_minute() is None
    for i in range(0, 121, 5):
        m.add(NOW + i, i * 2)        # 2 devices a second
    assert m.per_minute() == pytest.approx(120.0)
    m.add(NOW + 125, 0)              # devices retried: the count went down, start over
    assert m.per_minute() is None


def test_a_spec_refuses_bad_rollout_settings() -> None:
    base = {"name": "x", "type": "fota", "target": "1.3", "selector": Selector(model="M5310")}
    for bad, match in (({"canary": 0}, "canary"), ({"max_in_flight": 0}, "max_in_flight"),
                       ({"unreachable_after": 0.5}, "unreachable_after"),
                       ({"windows": ("Mon 9-5",)}, "window"),
                       ({"windows": ("Mon 01:00-02:00",), "timezone": "Nowhere"},
                        "timezone")):
        with pytest.raises(CampaignInputError, match=match):
            CampaignSpec(**base, **bad).validate()   # type: ignore[arg-type]
    CampaignSpec(**base, canary=3, windows=("Mon-Fri 01:00-05:00",),  # type: ignore[arg-type]
                 timezone="Asia/Shanghai", max_in_flight=100).validate()


def test_a_policy_takes_the_campaigns_unreachable_after() -> None:
    p = campaign_policy(Policy(), None, 120.0)
    assert p.unreachable_after == 120.0 and p.dispatch_timeout == Policy().dispatch_timeout


def test_continuous_enrolment_passes_from_a_watermark_and_reconcile_now_and_then() -> None:
    mark = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    assert enrol_since(None, None, 100.0) is None                  # first pass: everything
    assert enrol_since(mark, 100.0, 105.0) == mark - dt.timedelta(seconds=60)
    assert enrol_since(mark, 100.0, 100.0 + 600) is None          # reconciling pass
    assert enrol_since(mark, None, 105.0) is None


def test_a_schedule_that_never_opens_has_no_eta() -> None:
    assert not NEVER.is_open(NOW) and NEVER.next_open(NOW) is None
    assert campaign_eta(NOW, {0: Counts(pending=3)}, 0, Pace(60.0), NEVER) is None
