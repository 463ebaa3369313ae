"""Nothing stuck, nothing hidden (pure): in-flight devices an operator can move, a lost
command seen for what it is, deadlines that follow the rules, a rate and an ETA that tell
the truth, modules OneNET can check, a mixed simulated fleet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.device import (
    IN_FLIGHT,
    RETRYABLE_STATES,
    DeviceRow,
    Policy,
    Status,
    gate_reason,
    on_retry,
    on_rules_changed,
    on_status_while_dispatched,
)
from orchestrator.domain.onenet import Task
from orchestrator.domain.pace import RateMeter, no_eta
from orchestrator.domain.payloads import StatusReport
from orchestrator.domain.registry import canonical_modules
from orchestrator.sim.fleet import apportion, make_devices, parse_mix

TASK = Task("1.3", "tok", 100, 10, 20, 5, 90, "m" * 32, 1)
NOW = 1_800_000_000.0


def dispatched(at: float = NOW - 120, state: str = "dispatched", attempts: int = 2) -> DeviceRow:
    return DeviceRow(state=state, attempts=attempts, task=TASK, dispatched_at=at, heard_at=at,
                     attempt="a1", next_attempt_at=at + 1800)


def test_every_in_flight_state_can_be_retried_with_its_budget_untouched() -> None:
    assert IN_FLIGHT <= RETRYABLE_STATES
    for state in IN_FLIGHT:
        d = on_retry(dispatched(state=state), NOW, "stuck")
        assert (d.row.state, d.row.attempts, d.row.next_attempt_at) == ("pending", 2, NOW)
        assert d.row.attempt is None and d.row.dispatched_at is None
    failed = on_retry(DeviceRow(state="failed", attempts=5), NOW, "fixed").row
    assert (failed.state, failed.attempts) == ("pending", 0)


def test_a_status_on_the_old_version_after_the_grace_says_the_command_was_lost() -> None:
    lost = on_status_while_dispatched(dispatched(NOW - 61), "1.2", "1.3", NOW, 60)
    assert lost.row.state == "pending" and lost.row.attempts == 2 and lost.row.attempt is None
    assert "lost command" in lost.reason and lost.row.next_attempt_at == NOW
    for row, version in [(dispatched(NOW - 30), "1.2"),          # within the grace
                         (dispatched(NOW - 600), "1.3"),         # it upgraded
                         (dispatched(NOW - 600), None),          # no version in the status
                         (dispatched(NOW - 600, "downloading"), "1.2")]:   # it got it
        assert on_status_while_dispatched(row, version, "1.3", NOW, 60).row == row


@given(st.floats(1, 7 * 86400), st.floats(0, 7200))
def test_a_new_dispatch_timeout_moves_in_flight_deadlines(timeout: float, ago: float) -> None:
    row = dispatched(NOW - ago)
    d = on_rules_changed(row, NOW, Policy(dispatch_timeout=timeout))
    expected = max(NOW - ago + timeout, NOW + 1.0)   # from the command, never in the past
    assert d.row.next_attempt_at is not None
    assert abs(d.row.next_attempt_at - expected) < 1e-6
    assert d.row.state == row.state and d.row.attempts == row.attempts
    waiting = DeviceRow(state="gated", next_attempt_at=NOW + 5)
    assert on_rules_changed(waiting, NOW, Policy(dispatch_timeout=timeout)).row == waiting


def test_a_gate_failure_says_the_value_against_the_threshold() -> None:
    assert gate_reason("low_signal", TASK, Status(8, 90, NOW)) == \
        "gate: low_signal (signal 8, the task needs > 10)"
    assert gate_reason("low_power", TASK, Status(20, 15, NOW)) == \
        "gate: low_power (power 15, the task needs > 20)"


def test_the_rate_counts_working_time_only_and_a_stall_is_reported_not_averaged() -> None:
    meter = RateMeter(window=600, stall_after=60)
    t = NOW
    for i in range(10):                       # 10 a minute for 10 minutes
        meter.add(t + 60 * i, 10 * i)
    assert meter.per_minute() == 10.0
    t += 540
    for k in range(1, 31):                    # 30 minutes: one device holds the wave
        meter.add(t + 60 * k, 90)
    assert meter.stalled_for(t + 1800) == 1800
    assert no_eta(meter.per_minute(), meter.stalled_for(t + 1800)) == \
        "nothing finished for 30 min"
    meter.add(t + 1860, 190)                  # it finishes, and the next wave goes fast
    assert meter.stalled_for(t + 1860) == 0
    rate = meter.per_minute()
    assert rate is not None and rate > 15     # the stall is not in it (it would be ~3)


def test_a_pause_stops_the_clock_and_has_no_eta() -> None:
    meter = RateMeter(window=600, stall_after=60)
    for i in range(6):
        meter.add(NOW + 60 * i, 20 * i)
    for k in range(1, 60):                    # an hour paused: the clock stands still
        meter.add(NOW + 300 + 60 * k, 100, working=False)
    assert meter.per_minute() == 20.0 and meter.stalled_for(NOW + 3900) == 0
    meter.add(NOW + 3960, 120)                # back at work, at the same pace
    assert meter.per_minute() == 20.0
    assert no_eta(20.0, 0, paused=True) == "paused"
    assert no_eta(None, 0) == "measuring the rate" and no_eta(20.0, 0) is None


def test_modules_are_stored_as_onenet_names_them_and_unknown_ones_are_noted() -> None:
    reports = [StatusReport(1, "001", "00107", "1.2"),
               StatusReport(2, "china  mobile", "m5310", "1.2"),
               StatusReport(3, "China Mobile", "M5310A", "1.2"),
               StatusReport(4, signal=20)]
    out, unknown = canonical_modules(reports)
    assert [(r.manuf, r.model) for r in out] == [
        ("China Mobile", "M5310"), ("China Mobile", "M5310"), ("China Mobile", "M5310A"),
        (None, None)]
    assert [r.dev_id for r in unknown] == [3]


@given(st.integers(0, 10_000), st.lists(st.floats(0.01, 100), min_size=1, max_size=6))
def test_a_mix_apportions_every_device(n: int, weights: list[float]) -> None:
    counts = apportion(n, weights)
    assert sum(counts) == n and all(c >= 0 for c in counts)
    assert all(abs(c - n * w / sum(weights)) < 1 + 1e-9 for c, w in zip(counts, weights,
                                                                          strict=True))


def test_a_mixed_fleet() -> None:
    mix = parse_mix(["China Mobile/M5310/1.2=70",
                     "Quectel Wireless Solutions Co., Ltd./BC28/2.0=30"])
    devices = make_devices(100, seed=1, mix=mix)
    assert sum(d.model == "M5310" for d in devices) == 70
    assert {d.fota_version for d in devices if d.model == "BC28"} == {"2.0"}
    for bad in ("China Mobile/M5310=5", "a/b/c=x", "a/b/c=0", "a/b/c"):
        try:
            parse_mix([bad])
        except ValueError as exc:
            assert "--mix" in str(exc)
        else:
            raise AssertionError(bad)
