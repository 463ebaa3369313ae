"""Decisions behind the fault guarantees, without I/O: budgets under our own outages, the
one backoff, folded progress events, error classification, rate-limited logs."""

from __future__ import annotations

import random

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.device import DeviceRow, on_claim
from orchestrator.domain.onenet import Task
from orchestrator.domain.progress import RELAY_GIVE_UP_AFTER, relay_fate, worth_an_event
from orchestrator.domain.resilience import backoff
from orchestrator.logs import RateLimitedLog
from orchestrator.ports import DatabaseUnavailable, DataRejected
from orchestrator.store.database import is_transient, translate

TASK = Task("1.3", "tok", 100, 10, 20, 2, 60, "m" * 32, 1)
NOW = 1_900_000_000.0


def dispatched(heard_at: float, attempts: int = 0) -> DeviceRow:
    return DeviceRow(state="downloading", attempts=attempts, task=TASK, dispatched_at=heard_at,
                     heard_at=heard_at, token_expires_at=NOW + 86400, next_attempt_at=NOW)


def test_a_timeout_inside_our_outage_is_free_outside_it_is_charged() -> None:
    row = dispatched(heard_at=NOW - 1800)
    ours = on_claim(row, NOW, healthy_since=NOW - 60)      # we were down after it was heard
    assert ours.reason == "dispatch_timeout_during_our_outage"
    assert ours.row.attempts == 0 and ours.row.state == "checking"
    # healthy the whole window, and the device talks (status reports) but makes no progress
    theirs = on_claim(row, NOW, healthy_since=NOW - 3600, last_seen=NOW - 5)
    assert theirs.reason == "dispatch_timeout" and theirs.row.attempts == 1


@given(st.floats(0, 10_000), st.floats(0, 10_000), st.integers(0, 5))
def test_our_outages_never_spend_a_budget(heard_ago: float, healthy_ago: float,
                                          attempts: int) -> None:
    row = dispatched(heard_at=NOW - heard_ago, attempts=attempts)
    d = on_claim(row, NOW, healthy_since=NOW - healthy_ago, last_seen=NOW)
    if NOW - heard_ago < NOW - healthy_ago:      # heard before our last outage ended
        assert d.row.attempts == attempts and d.row.state == "checking"
    else:
        assert d.row.attempts == attempts + 1 or d.row.state == "failed"


@given(st.integers(0, 200), st.floats(0.001, 10), st.floats(0.01, 600))
def test_backoff_is_capped_never_zero_and_jittered(attempt: int, base: float,
                                                   cap: float) -> None:
    d = backoff(attempt, base, cap, random.Random(attempt))
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    assert ceiling / 2 <= d <= ceiling


def test_progress_events_are_folded_to_tens_and_state_changes() -> None:
    steps = [*range(100), 101, 201]
    row = DeviceRow(state="dispatched")
    events = 0
    for step in steps:
        state = "downloading" if step < 100 else ("upgrading" if step == 101 else "succeeded")
        new = row.replace(state=state, last_step=step)
        events += worth_an_event(row, new)
        row = new
    assert events == 12          # into downloading, 9 more tens, upgrading, succeeded


def test_database_errors_are_classified() -> None:
    transient = [asyncpg.exceptions.AdminShutdownError("57P01"),
                 asyncpg.exceptions.CannotConnectNowError("57P03"),
                 asyncpg.exceptions.TooManyConnectionsError("53300"),
                 asyncpg.exceptions.ReadOnlySQLTransactionError("25006"),
                 asyncpg.exceptions.QueryCanceledError("57014"),
                 asyncpg.exceptions.DiskFullError("53100"),
                 asyncpg.exceptions.SerializationError("40001"),
                 asyncpg.exceptions.DeadlockDetectedError("40P01"),
                 asyncpg.exceptions.ConnectionDoesNotExistError("08003"),
                 asyncpg.InterfaceError("closed"),
                 asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
                 ConnectionResetError(), TimeoutError()]
    for exc in transient:
        assert is_transient(exc), exc
        assert isinstance(translate(exc), DatabaseUnavailable)
    for exc in [asyncpg.exceptions.CheckViolationError("23514"),
                asyncpg.exceptions.DataError("22000"),
                asyncpg.exceptions.UniqueViolationError("23505")]:
        assert not is_transient(exc)
        assert isinstance(translate(exc), DataRejected)
    assert translate(ValueError("ours")) is None


def test_rejections_are_logged_once_per_reason_per_interval() -> None:
    lines: list[dict[str, object]] = []

    class Sink:
        def warning(self, event: str, **kw: object) -> None:
            lines.append(kw)

    now = [0.0]
    log = RateLimitedLog(Sink(), "rejected", interval=10, clock=lambda: now[0])
    for _ in range(10_000):
        log.note("bad_json")
    log.note("bad_topic")
    now[0] = 10.5
    log.note("bad_json")
    assert [(x["reason"], x["count"]) for x in lines] == [
        ("bad_json", 1), ("bad_topic", 1), ("bad_json", 10_000)]


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(1, 30))
def test_a_relayed_step_is_tried_until_answered_or_give_up_after_tries(
        answers: list[bool], give_up_after: int) -> None:
    """Played out over a run of answers: the step ends at its first answer ("sent"), or at
    its ``give_up_after``-th unanswered try ("dropped"); never before, never after."""
    fates = []
    for attempts, answered in enumerate(answers):   # failed tries so far, as ota.relays counts
        fate = relay_fate(answered, attempts, give_up_after)
        fates.append(fate)
        if fate != "retried":
            break
    tries = len(fates)
    first_answer = answers.index(True) + 1 if True in answers else None
    if first_answer is not None and first_answer <= give_up_after:
        assert fates[-1] == "sent" and tries == first_answer
    elif len(answers) >= give_up_after:
        assert fates[-1] == "dropped" and tries == give_up_after
    else:
        assert set(fates) == {"retried"} and tries == len(answers)


def test_relay_gives_up_after_twenty_tries_by_default() -> None:
    assert RELAY_GIVE_UP_AFTER == 20
    assert relay_fate(False, 18) == "retried"
    assert relay_fate(False, 19) == "dropped"
    assert relay_fate(True, 19) == "sent"
