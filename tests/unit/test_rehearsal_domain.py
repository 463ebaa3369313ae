"""The rehearsal engine: pure, in virtual time, through the service's own decisions."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.device import Policy
from orchestrator.domain.onenet import Task
from orchestrator.domain.rehearsal import (
    DEFAULT_UPGRADE_SECONDS,
    Device,
    GroupModel,
    History,
    Setup,
    model_group,
    per_attempt,
    rehearse,
    summarize,
)
from orchestrator.domain.rollout import Rules, assign_waves
from orchestrator.domain.windows import Schedule

START = 1_800_000_000.0          # a Friday, 08:00 UTC
KEY = ("China Mobile", "M5310", "1.2")
TASK = Task("1.3", "tok", 100, 10, 20, 2, 60, "", 1)


def fleet(n: int, waves: tuple[int, ...] = (100,), group: int = 0, first: int = 1,
          **kw: object) -> list[Device]:
    assigned = assign_waves([(d, group) for d in range(first, first + n)], waves)
    return [Device(d, assigned[d], group, **{"signal": 30, "power": 90,  # type: ignore[arg-type]
                                            "status_at": START, **kw})
            for d in range(first, first + n)]


def test_a_rate_limited_campaign_finishes_when_its_rate_says() -> None:
    devices = fleet(600, (10, 100))
    run = rehearse(devices, [GroupModel(KEY, task=TASK, upgrade_seconds=(30.0,))],
                   Setup(Rules(waves=(10, 100)), max_per_minute=120), START, seed=1)
    assert run.ended == "complete" and run.counts == {"succeeded": 600}
    # per wave a bucket of 10 at once, then 2 a second, then the last upgrade's 30 s: the
    # first wave's 60 take 25 + 30 s, the second's 540 then 265 + 30 s
    assert run.seconds is not None and 25 + 30 + 265 + 30 <= run.seconds <= 350 + 5
    first, second = run.waves
    assert first["devices"] == 60 and second["devices"] == 540
    assert first["finished"] is not None and second["opened"] is not None
    assert first["finished"] <= second["opened"] <= first["finished"] + 1
    assert run.checks == 600


def test_a_fleet_that_reports_hourly_is_asked_for_fresh_reports() -> None:
    """The report interval comes from how old the devices' last reports are. Reporting
    every hour, most statuses are older than ORCH_STATUS_MAX_AGE (900 s) at their check: the
    service asks a report, the device answers, the report wakes it, and it is checked
    again. Every ten minutes, every status is fresh: one check a device."""
    def spread(every: float) -> list[Device]:
        return [Device(d.dev_id, d.wave, 0, 30, 90, START - (d.dev_id * 7919) % every)
                for d in fleet(400)]

    group = [GroupModel(KEY, task=TASK, upgrade_seconds=(30.0,))]
    setup = Setup(Rules(), checks_per_second=20.0)
    fresh = rehearse(spread(600.0), group, setup, START, seed=2)
    hourly = rehearse(spread(3600.0), group, setup, START, seed=2)
    assert fresh.counts == hourly.counts == {"succeeded": 400}
    assert fresh.checks == 400
    # stale unless the phase of its hour puts its last report within 900 s of the check
    assert 400 + 0.6 * 400 <= hourly.checks <= 400 + 0.85 * 400
    assert fresh.seconds is not None and hourly.seconds is not None
    assert hourly.seconds > fresh.seconds * 1.5      # the checks are the bottleneck here


def test_the_abort_rule_trips_in_the_wave_whose_group_is_refused() -> None:
    # group 1 (a tenth of the fleet) is refused with errno 8 for half its devices; the first
    # wave is a canary of 5 per group, so it holds refused devices and the rule acts there
    good = fleet(900, group=0)
    bad = fleet(100, group=1, first=901)
    pairs = [(d.dev_id, d.group) for d in good + bad]
    waves = assign_waves(pairs, (5, 100), per_group=5)
    devices = [Device(d.dev_id, waves[d.dev_id], d.group, 30, 90, START)
               for d in good + bad]
    groups = [GroupModel(KEY, task=TASK),
              GroupModel(("China Mobile", "M5311", "1.2"), ((0, 0.5), (8, 0.5)), task=TASK)]
    rules = Rules(waves=(5, 100), abort_failure_pct=5.0, abort_min_finished=20)
    run = rehearse(devices, groups, Setup(rules), START, seed=3)
    assert run.ended == "pause" and run.tripped is not None
    assert run.tripped["wave"] == 1 and run.tripped["rule"] == "abort"
    assert run.waves[1]["opened"] is None          # the second wave never opened
    # without the refusals nothing trips and every device upgrades
    clean = rehearse(devices, [groups[0], GroupModel(groups[1].key, task=TASK)],
                     Setup(rules), START, seed=3)
    assert clean.ended == "complete" and clean.tripped is None
    assert clean.counts == {"succeeded": 1000}


def test_shares_of_a_groups_answers_are_held_exactly() -> None:
    devices = fleet(200)
    groups = [GroupModel(KEY, ((0, 0.7), (8, 0.2), (11, 0.1)), task=TASK)]
    run = rehearse(devices, groups, Setup(Rules()), START, seed=9)
    assert run.counts == {"succeeded": 140, "failed": 40, "no_task": 20}


def test_devices_gone_silent_are_unreachable_not_failed() -> None:
    silent = fleet(10, reports=False, status_at=START - 7200)
    live = fleet(90, first=11)
    policy = Policy(unreachable_after=600.0)
    run = rehearse(silent + live, [GroupModel(KEY, task=TASK)],
                   Setup(Rules(abort_failure_pct=1.0), policy=policy), START, seed=2)
    assert run.ended == "complete" and "10 unreachable" in run.reason
    assert run.counts == {"succeeded": 90, "unreachable": 10}
    # commanded, then never heard: also unreachable once silent for unreachable_after
    gone = GroupModel(KEY, task=TASK, silent=0.2)
    run = rehearse(fleet(100), [gone], Setup(Rules(), policy=policy), START, seed=2)
    assert run.counts["unreachable"] + run.counts["succeeded"] == 100
    assert 5 <= run.counts["unreachable"] <= 40


def test_failed_downloads_are_retried_by_the_tasks_budget() -> None:
    flaky = GroupModel(KEY, task=TASK, download_fail=0.5, upgrade_seconds=(10.0,))
    run = rehearse(fleet(400), [flaky], Setup(Rules()), START, seed=4)
    # three tries each (retry 2): about one in eight fails them all
    assert run.counts["succeeded"] + run.counts["failed"] == 400
    assert 20 <= run.counts["failed"] <= 80
    assert run.checks > 400                      # the retried ones were checked again


def test_a_weak_device_fails_its_gate_for_good() -> None:
    weak = fleet(5, signal=5)          # the task needs signal > 10: never, with no profile
    run = rehearse(weak + fleet(45, first=6), [GroupModel(KEY, task=TASK)],
                   Setup(Rules(), radio_aware=False), START, seed=1)
    assert run.counts == {"succeeded": 45, "failed": 5} and run.never_pass == 5
    # retry 2, interval 60: checked three times, the last two minutes in
    assert run.seconds is not None and run.seconds >= 120


def test_nothing_starts_outside_the_window() -> None:
    window = Schedule.parse(["Fri 10:00-11:00"])        # two hours after START
    run = rehearse(fleet(50), [GroupModel(KEY, task=TASK, upgrade_seconds=(10.0,))],
                   Setup(Rules(), schedule=window), START, seed=1)
    assert run.ended == "complete" and run.seconds is not None
    assert 7200 <= run.seconds <= 7200 + 60


def test_the_same_seed_tells_the_same_story() -> None:
    groups = [GroupModel(KEY, task=TASK, download_fail=0.3, install_fail=0.1,
                         upgrade_seconds=(20.0, 40.0, 90.0))]
    a = rehearse(fleet(300, (10, 100)), groups, Setup(Rules(waves=(10, 100))), START, seed=7)
    b = rehearse(fleet(300, (10, 100)), groups, Setup(Rules(waves=(10, 100))), START, seed=7)
    assert (a.seconds, a.counts, a.checks, a.waves) == (b.seconds, b.counts, b.checks, b.waves)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 120), cap=st.integers(1, 40), cell_cap=st.integers(1, 10),
       cells=st.integers(1, 6), seed=st.integers(0, 1000))
def test_caps_are_never_exceeded(n: int, cap: int, cell_cap: int, cells: int,
                                 seed: int) -> None:
    devices = [Device(d, 0, 0, 30, 90, START, cell=f"c{d % cells}") for d in range(1, n + 1)]
    run = rehearse(devices, [GroupModel(KEY, task=TASK, upgrade_seconds=(5.0, 50.0))],
                   Setup(Rules(), max_in_flight=cap, max_per_cell=cell_cap), START, seed)
    assert run.counts == {"succeeded": n}
    assert run.peak_in_flight <= cap and run.peak_per_cell <= cell_cap


def test_a_groups_model_is_read_from_its_history() -> None:
    h = History(members=100, tasked=80, no_task=10, refused=(8,) * 10, transient=25,
                commanded=80, silent=4, download_failed=8, install_failed=0, task=TASK,
                upgrade_seconds=(30.0, 60.0))
    m = model_group(KEY, h)
    assert dict(m.answers) == {0: 0.8, 8: 0.1, 11: 0.1}
    assert m.transient == 25 / 125 and m.silent == 4 / 80 and m.task == TASK
    # 10% failed their download after three tries each: one try fails 0.1 ** (1/3)
    assert math.isclose(m.download_fail, 0.1 ** (1 / 3)) and m.install_fail == 0.0
    assert m.assumed == ()
    # with every attempt counted from the events, the rates are counted, not inferred: one
    # install in ten failed though every device got through in the end
    counted = model_group(KEY, History(members=100, tasked=100, commanded=100, task=TASK,
                                       commands=120, download_attempts_failed=0,
                                       install_attempts_failed=12))
    assert counted.install_fail == 0.1 and counted.download_fail == 0.0
    assert model_group(KEY, None).assumed and model_group(KEY, History(members=2)).assumed
    assert model_group(KEY, None).upgrade_seconds == (DEFAULT_UPGRADE_SECONDS,)
    assert per_attempt(0.0, 3) == 0.0 and per_attempt(1.0, 3) == 1.0


def test_runs_summarize_to_a_median_and_a_90th_percentile() -> None:
    groups = [GroupModel(KEY, task=TASK, upgrade_seconds=(10.0, 100.0, 400.0))]
    runs = [rehearse(fleet(50), groups, Setup(Rules(), max_per_minute=600), START, seed=s)
            for s in range(5)]
    s = summarize(runs)
    times = sorted(r.seconds for r in runs if r.seconds is not None)
    assert s.runs == 5 and s.finished == 5 and s.ended == {"complete": 5}
    assert s.median_seconds == times[2] and s.p90_seconds == times[4]


def test_an_empty_wave_is_passed_over_as_the_controller_does() -> None:
    waves = (1, 2, 50, 100)                     # three devices: the last wave holds none
    run = rehearse(fleet(3, waves), [GroupModel(KEY, task=TASK, upgrade_seconds=(5.0,))],
                   Setup(Rules(waves=waves)), START, seed=1)
    assert run.ended == "complete" and run.counts == {"succeeded": 3}
    assert [w["devices"] for w in run.waves] == [1, 1, 1, 0]
    assert run.waves[3]["opened"] is not None
