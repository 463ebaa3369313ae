"""The device state machine and rollout math, without I/O: exhaustive and by property."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.device import (
    IN_FLIGHT,
    STATES,
    TERMINAL,
    TOKEN_LIFETIME,
    Decision,
    DeviceRow,
    Policy,
    Status,
    gate,
    on_check,
    on_claim,
    on_progress,
    on_version,
)
from orchestrator.domain.onenet import Failed, NoTask, ProtocolError, Retryable, Task, TaskFound
from orchestrator.domain.rollout import (
    BadRollout,
    Counts,
    Rules,
    accept,
    decide,
    parse_waves,
    rate_tokens,
    wave_bounds,
    wave_of,
)

NOW = 1_800_000_000.0
TASK = Task("1.3", "ota_tok", 100, signal=10, power=20, retry=2, interval=60, md5="m", type=1)
FRESH = Status(signal=15, power=50, status_at=NOW - 10)
POLICY = Policy(status_max_age=300, dispatch_timeout=600, report_wait=30, transient_budget=3)

OUTCOMES = {
    "task": TaskFound(TASK),
    "no_task": NoTask(),
    "errno8": Failed(8, "manuf"),
    "local27": Failed(27, "bad version", local=True),
    "errno7": Retryable("errno", "internal", errno=7),
    "timeout": Retryable("timeout", "slow"),
    "breaker": Retryable("breaker_open", "paused"),
    "garbage": ProtocolError("not json"),
}
STEPS = [0, 50, 100, 101, 104, 201, 205, 207, 208, 150]


def row(state: str, **kw: object) -> DeviceRow:
    base = {"task": TASK, "token_expires_at": NOW + TOKEN_LIFETIME} \
        if state in IN_FLIGHT else {}
    return DeviceRow(state=state, **{**base, **kw})  # type: ignore[arg-type]


# --- exhaustive: every state x every event ------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_every_state_on_claim(state: str) -> None:
    d = on_claim(row(state), NOW)
    if state in TERMINAL or state == "unreachable":
        assert d.row == row(state)
    else:
        assert d.row.state in ("checking", "failed")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_every_state_on_check(state: str, outcome: str) -> None:
    d = on_check(row(state), OUTCOMES[outcome], FRESH, NOW, POLICY, random.Random(1))
    if state in TERMINAL:
        assert d.row == row(state)
        return
    expected = {"task": "dispatched", "no_task": "no_task", "errno8": "failed",
                "local27": "failed", "errno7": "pending", "timeout": "pending",
                "breaker": "pending", "garbage": "pending"}[outcome]
    assert d.row.state == expected
    if outcome == "task":
        assert d.command is not None and d.command.op == "upgrade"
        assert d.row.next_attempt_at == NOW + POLICY.dispatch_timeout
    if outcome in ("errno8", "local27"):
        assert d.row.last_errno in (8, 27)
    if outcome == "no_task":
        assert d.row.last_errno == 11


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("step", STEPS)
def test_every_state_on_progress(state: str, step: int) -> None:
    before = row(state, attempts=0)
    d = on_progress(before, step, NOW, POLICY)
    if state not in IN_FLIGHT:
        # a device never commanded (or done) cannot be moved by progress, 201 included
        assert d.row == before
    elif step == 201:
        assert d.row.state == "succeeded"
    else:
        expected = {0: "downloading", 50: "downloading", 100: "upgrading", 101: "upgrading",
                    104: "pending", 205: "pending", 207: "failed", 208: "failed",
                    150: state}[step]
        assert d.row.state == expected, (state, step)


@pytest.mark.parametrize("state", STATES)
def test_every_state_on_version(state: str) -> None:
    assert on_version(row(state), "1.3", "1.3").row.state == (
        "succeeded" if state in IN_FLIGHT else state)
    assert on_version(row(state), "1.2", "1.3").row.state == state


# --- specific rules -------------------------------------------------------------------------

def test_gate_needs_signal_and_power_strictly_above_on_a_fresh_report() -> None:
    assert gate(TASK, FRESH, NOW, 300) == "pass"
    assert gate(TASK, Status(10, 50, NOW), NOW, 300) == "low_signal"
    assert gate(TASK, Status(15, 20, NOW), NOW, 300) == "low_power"
    assert gate(TASK, Status(15, 50, NOW - 301), NOW, 300) == "stale"
    assert gate(TASK, Status(None, 50, NOW), NOW, 300) == "unknown"


def test_low_signal_retries_by_the_task_interval_then_fails() -> None:
    low = Status(5, 50, NOW)
    r = row("checking")
    for i in range(TASK.retry):
        d = on_check(r, TaskFound(TASK), low, NOW, POLICY)
        assert d.row.state == "gated" and d.row.attempts == i + 1
        assert d.row.next_attempt_at == NOW + TASK.interval
        assert d.command is None
        r = d.row.replace(state="checking")
    d = on_check(r, TaskFound(TASK), low, NOW, POLICY)
    assert d.row.state == "failed" and "retries spent" in d.reason


def test_stale_report_asks_for_a_fresh_one_first() -> None:
    stale = Status(15, 50, NOW - 1000)
    d = on_check(row("checking"), TaskFound(TASK), stale, NOW, POLICY)
    assert d.row.state == "gated" and d.command is not None and d.command.op == "report"
    assert d.row.attempts == 0 and d.row.next_attempt_at == NOW + POLICY.report_wait
    # no answer to the request: silence is not failure — asked again, no budget spent
    d2 = on_check(d.row.replace(state="checking"), TaskFound(TASK), stale, NOW + 30, POLICY)
    assert d2.row.state == "gated" and d2.row.attempts == 0 and d2.command is not None
    assert d2.command.op == "report" and d2.row.report_asked_at == NOW
    # ... until unreachable_after since the first request: unreachable, not failed
    d4 = on_check(d.row.replace(state="checking"), TaskFound(TASK), stale,
                  NOW + POLICY.unreachable_after, POLICY)
    assert d4.row.state == "unreachable" and d4.row.next_attempt_at is None
    # an answer that arrived meanwhile is judged
    d3 = on_check(d.row.replace(state="checking"), TaskFound(TASK),
                  Status(15, 50, NOW + 5), NOW + 30, POLICY)
    assert d3.row.state == "dispatched"


def test_transient_errors_back_off_on_their_own_budget() -> None:
    r = row("checking", attempts=1)
    delays = []
    for i in range(POLICY.transient_budget):
        d = on_check(r, OUTCOMES["errno7"], FRESH, NOW, POLICY, random.Random(i))
        assert d.row.state == "pending" and d.row.attempts == 1
        delays.append(d.row.next_attempt_at - NOW)   # type: ignore[operator]
        r = d.row.replace(state="checking")
    assert delays == sorted(delays) or max(delays) <= POLICY.backoff_cap
    d = on_check(r, OUTCOMES["errno7"], FRESH, NOW, POLICY)
    assert d.row.state == "failed" and d.row.last_errno == 7
    # an open breaker is not the device's fault
    b = on_check(row("checking"), OUTCOMES["breaker"], FRESH, NOW, POLICY)
    assert b.row.transient_errors == 0


def test_failed_install_retries_after_interval_then_fails() -> None:
    r = row("upgrading", attempts=0)
    d = on_progress(r, 205, NOW, POLICY)
    assert d.row.state == "pending" and d.row.next_attempt_at == NOW + TASK.interval
    assert d.row.attempts == 1
    spent = on_progress(row("upgrading", attempts=TASK.retry), 203, NOW, POLICY)
    assert spent.row.state == "failed"


def test_no_progress_rechecks_for_a_fresh_token() -> None:
    r = row("downloading", attempts=0, next_attempt_at=NOW)
    d = on_claim(r, NOW)
    assert d.row.state == "checking" and d.reason == "dispatch_timeout"
    assert d.row.attempts == 1
    expiring = row("downloading", token_expires_at=NOW + 100)
    assert on_claim(expiring, NOW).reason == "token_expiring"
    assert on_claim(expiring, NOW).row.attempts == 0
    spent = on_claim(row("upgrading", attempts=TASK.retry), NOW)
    assert spent.row.state == "failed"


def test_dispatch_deadline_stays_before_token_expiry() -> None:
    policy = Policy(dispatch_timeout=10 * 24 * 3600)
    d = on_check(row("checking"), TaskFound(TASK), FRESH, NOW, policy)
    assert d.row.next_attempt_at is not None and d.row.token_expires_at is not None
    assert d.row.next_attempt_at < d.row.token_expires_at


def test_same_token_keeps_its_expiry() -> None:
    r = row("checking", task=TASK, token_expires_at=NOW + 5000)
    d = on_check(r, TaskFound(TASK), FRESH, NOW, POLICY)
    assert d.row.token_expires_at == NOW + 5000


# --- properties -----------------------------------------------------------------------------

events = st.one_of(
    st.tuples(st.just("claim"), st.just(0)),
    st.tuples(st.just("check"), st.sampled_from(list(OUTCOMES))),
    st.tuples(st.just("progress"), st.sampled_from([*range(0, 102, 25), *range(101, 108),
                                                    *range(201, 209)])),
    st.tuples(st.just("version"), st.sampled_from(["1.2", "1.3"])),
)
statuses = st.builds(Status, st.integers(0, 31), st.integers(0, 100),
                     st.floats(NOW - 2000, NOW))


@settings(max_examples=300)
@given(st.lists(st.tuples(events, statuses), max_size=40))
def test_any_event_sequence_terminal_stays_and_budget_holds(seq: list) -> None:
    r = DeviceRow()
    now = NOW
    for (kind, arg), status in seq:
        now += 1
        before = r
        if kind == "claim":
            r = on_claim(r, now).row
        elif kind == "check":
            if r.state != "checking":
                continue
            r = on_check(r, OUTCOMES[arg], status, now, POLICY, random.Random(0)).row
        elif kind == "progress":
            r = on_progress(r, arg, now, POLICY).row
        else:
            r = on_version(r, arg, "1.3").row
        if before.state in TERMINAL:
            assert r == before
        assert r.state in STATES
        assert r.attempts <= TASK.retry
        assert r.transient_errors <= POLICY.transient_budget + 1
        if r.state in TERMINAL:
            assert r.next_attempt_at is None or r.state == before.state
        else:
            assert r.next_attempt_at is not None


def test_waves() -> None:
    assert parse_waves("1,10,50,100") == [1, 10, 50, 100]
    for bad in ("", "10,5,100", "1,50", "0,100", "a,100", "50,150"):
        with pytest.raises(BadRollout):
            parse_waves(bad)
    assert wave_bounds(1000, [1, 10, 50, 100]) == [10, 100, 500, 1000]
    assert wave_bounds(3, [1, 10, 50, 100]) == [1, 2, 3, 3]
    assert wave_bounds(0, [10, 100]) == [0, 0]


@given(st.integers(0, 100_000), st.lists(st.integers(1, 99), max_size=5, unique=True))
def test_wave_bounds_cover_everyone_in_order(total: int, cuts: list[int]) -> None:
    waves = [*sorted(cuts), 100]
    bounds = wave_bounds(total, waves)
    assert bounds[-1] == total and bounds == sorted(bounds)
    sizes = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    assert sum(sizes) == total
    for w, b in zip(waves, bounds, strict=True):
        assert b >= min(total, -(-total * w // 100))
    if total:
        assert wave_of(0, bounds) == 0
        assert wave_of(total - 1, bounds) == bounds.index(total)


def test_controller_decisions() -> None:
    rules = Rules(waves=(10, 100), wave_success_pct=80, abort_failure_pct=20,
                  abort_min_finished=5)
    running = {0: Counts(in_progress=1, succeeded=1), 1: Counts(pending=8)}
    assert decide(rules, 0, running).kind == "none"
    done = {0: Counts(succeeded=2), 1: Counts(pending=8)}
    act = decide(rules, 0, done)
    assert act.kind == "open_wave" and act.wave == 1
    weak = {0: Counts(succeeded=1, failed=1), 1: Counts(pending=8)}
    assert decide(Rules(waves=(10, 100), wave_success_pct=80), 0, weak).kind == "pause"
    bad = {0: Counts(succeeded=3, failed=2), 1: Counts(pending=5)}
    act = decide(rules, 1, bad)
    assert act.kind == "pause" and act.reason.startswith("abort rule: 40.0%")
    assert decide(rules, 1, {0: Counts(succeeded=2), 1: Counts(succeeded=8)}).kind == "complete"
    assert decide(Rules(continuous=True), 0, {0: Counts(succeeded=2)}).kind == "none"
    # no_task devices are neither success nor failure
    assert decide(rules, 1, {0: Counts(no_task=9, failed=1)}).kind == "complete"


@given(st.floats(0, 1000), st.integers(1, 100_000), st.floats(0, 3600))
def test_rate_bucket_never_exceeds_capacity(tokens: float, per_minute: int, dt: float) -> None:
    t = rate_tokens(min(tokens, max(1.0, per_minute / 12)), per_minute, dt)
    assert 0 <= t <= max(1.0, per_minute / 12.0)


def test_resume_accepts_the_evidence_and_the_rules_judge_only_what_follows() -> None:
    rules = Rules(waves=(50, 100), wave_success_pct=90, abort_failure_pct=20,
                  abort_min_finished=3)
    bad = {0: Counts(failed=4, succeeded=6)}
    assert decide(rules, 0, bad).kind == "pause"            # 40% failed
    seen = accept(bad, 0)
    resumed = dataclasses.replace(rules, failed_base=seen.failed_base,
                                  finished_base=seen.finished_base,
                                  gate_accepted_wave=seen.gate_accepted_wave)
    act = decide(resumed, 0, bad)                          # same evidence: go on
    assert act.kind == "open_wave", act
    # new failures past the resume point fire the rule again
    worse = {0: Counts(failed=4, succeeded=6), 1: Counts(failed=3, succeeded=1)}
    again = decide(resumed, 1, worse)
    assert again.kind == "pause" and "since the last resume" in again.reason
    # all finished after a resume: the campaign completes, it is not paused for good
    done = {0: Counts(failed=4, succeeded=6), 1: Counts(succeeded=10)}
    assert decide(resumed, 1, done).kind == "complete"


def test_the_abort_rule_names_its_action() -> None:
    rules = Rules(abort_failure_pct=10, abort_min_finished=2, abort_action="abort")
    assert decide(rules, 0, {0: Counts(failed=2)}).kind == "abort"


ROW_FIELDS = list(DeviceRow.__struct_fields__)
BASE_ROW = DeviceRow("dispatched", 2, 1, 5.0, 0, 57, "e", None, 9.0, 1.0, 2.0, 3.0, "a")


@settings(deadline=None)     # timing is not the property; a slow machine moment is no failure
@given(st.dictionaries(st.sampled_from(ROW_FIELDS),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5)), max_size=6))
def test_row_replace_changes_the_named_fields_only(changes: dict[str, object]) -> None:
    new = BASE_ROW.replace(**changes)
    for name in ROW_FIELDS:
        assert getattr(new, name) == changes.get(name, getattr(BASE_ROW, name))
    assert DeviceRow("dispatched", 2, 1, 5.0, 0, 57, "e", None, 9.0, 1.0, 2.0,
                                 3.0, "a") == BASE_ROW                   # the original is untouched
    if not changes or all(getattr(BASE_ROW, k) == v for k, v in changes.items()):
        assert new == BASE_ROW and hash(new) == hash(BASE_ROW)


def test_domain_values_refuse_unknown_fields_and_stay_frozen() -> None:
    with pytest.raises(TypeError):
        DeviceRow().replace(stat="failed")
    for value in (DeviceRow(), Status(1, 2, 3.0), Decision(DeviceRow(), "r"),
                  TaskFound(Task("1.3", "t", 1, 0, 0, 1, 1, "m", 1))):
        with pytest.raises(AttributeError):
            setattr(value, type(value).__struct_fields__[0], None)
