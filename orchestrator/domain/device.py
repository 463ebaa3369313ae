"""Per-device state machine of a campaign: every decision is a pure function returning a
value (the new row, the command to send, the event to record). Adapters carry them out.

States (contract section 4): pending, checking, gated, dispatched, downloading, upgrading,
succeeded, failed, no_task, cancelled; and unreachable: a device that did not answer a
report request, or went silent while dispatched, for the campaign's ``unreachable_after``.
It is not failed: it waits, outside the abort rule and the wave gate, and is put back in
line by its next status report.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from orchestrator.domain import radio
from orchestrator.domain.onenet import (
    DOWNLOAD_FAILED_STEPS,
    INSTALL_FAILED_STEPS,
    STEP_DOWNLOADED,
    STEP_SUCCEEDED,
    CheckOutcome,
    Failed,
    NoTask,
    ProtocolError,
    Retryable,
    Task,
    TaskFound,
    outcome_errno,
)
from orchestrator.domain.resilience import backoff

STATES = ("pending", "checking", "gated", "dispatched", "downloading", "upgrading",
          "succeeded", "failed", "no_task", "cancelled", "unreachable")
TERMINAL = frozenset({"succeeded", "failed", "no_task", "cancelled"})
PARKED = frozenset({"unreachable"})       # not terminal, not due: woken by a report
IN_FLIGHT = frozenset({"dispatched", "downloading", "upgrading"})
WAITING = frozenset({"pending", "gated", "checking"})
NON_TERMINAL = tuple(s for s in STATES if s not in TERMINAL)
DUE_STATES = tuple(s for s in NON_TERMINAL if s not in PARKED)
TOKEN_LIFETIME = 2 * 24 * 3600.0
TOKEN_MARGIN = 3600.0          # re-check this long before a token expires
# the defaults of ORCH_STATUS_MAX_AGE, ORCH_DISPATCH_TIMEOUT and a campaign's
# --unreachable-after: configuration, the CLI and the API take them from here
DEFAULT_STATUS_MAX_AGE = 900.0
DEFAULT_DISPATCH_TIMEOUT = 1800.0
DEFAULT_UNREACHABLE_AFTER = 3600.0
# a status on the old version this long after the command, with no progress since: the
# command was lost (a device that got it would be downloading)
DEFAULT_LOST_COMMAND_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Knobs of the decisions (from configuration)."""

    status_max_age: float = DEFAULT_STATUS_MAX_AGE
    dispatch_timeout: float = DEFAULT_DISPATCH_TIMEOUT
    report_wait: float = 30.0            # after asking for a fresh report
    transient_budget: int = 30           # errno 7 / transport retries before giving up
    backoff_base: float = 2.0
    backoff_cap: float = 300.0
    unreachable_after: float = DEFAULT_UNREACHABLE_AFTER   # silent this long: unreachable
    lost_command_grace: float = DEFAULT_LOST_COMMAND_GRACE
    radio_period: float = radio.DAY      # the day the radio profiles' slots divide


class DeviceRow(msgspec.Struct, frozen=True, gc=False):
    """What the engine knows of one device in one campaign (a row of campaign_devices)."""

    state: str = "pending"
    attempts: int = 0
    transient_errors: int = 0
    next_attempt_at: float | None = 0.0
    last_errno: int | None = None
    last_step: int | None = None
    last_error: str | None = None
    task: Task | None = None
    token_expires_at: float | None = None
    dispatched_at: float | None = None
    report_asked_at: float | None = None
    heard_at: float | None = None        # last command sent to it or progress heard from it
    attempt: str | None = None           # id of the upgrade command in flight (echoed back)
    best_slot: int | None = None         # after a failed gate: the slot its profile likes best
    pass_probability: float | None = None   # ... and how likely a report there passes

    def replace(self, **changes: Any) -> DeviceRow:
        return msgspec.structs.replace(self, **changes)


class Status(msgspec.Struct, frozen=True, gc=False):
    """The device's latest report, as the gate sees it."""

    signal: int | None
    power: int | None
    status_at: float | None


class Command(msgspec.Struct, frozen=True, gc=False):
    op: Literal["upgrade", "report", "cancel"]


class Decision(msgspec.Struct, frozen=True, gc=False):
    row: DeviceRow
    reason: str
    command: Command | None = None


def in_flight_deadline(start: float, now: float, policy: Policy,
                       token_expires_at: float | None) -> float:
    """When an in-flight device with no progress since ``start`` (its command, or its last
    progress) is checked again: the dispatch timeout after it, or an hour before its token
    expires, whichever is first; never in the past."""
    deadline = start + policy.dispatch_timeout
    if token_expires_at is not None:
        deadline = min(deadline, token_expires_at - TOKEN_MARGIN)
    return max(deadline, now + 1.0)


def on_rules_changed(row: DeviceRow, now: float, policy: Policy) -> Decision:
    """The campaign's dispatch timeout changed: an in-flight device's deadline follows it
    (a shorter one may make it due now)."""
    if row.state not in IN_FLIGHT:
        return Decision(row, "no change")
    start = row.heard_at if row.heard_at is not None else row.dispatched_at
    deadline = in_flight_deadline(start if start is not None else now, now, policy,
                                  row.token_expires_at)
    if deadline == row.next_attempt_at:
        return Decision(row, "no change")
    return Decision(row.replace(next_attempt_at=deadline),
                    f"dispatch timeout now {policy.dispatch_timeout:g} s: checked again at "
                    + ("once" if deadline <= now + 1.0 else "the new deadline"))


def retry_delay(n: int, policy: Policy, rng: random.Random | None = None) -> float:
    """The delay before retrying after the ``n``-th transient error (1-based)."""
    return backoff(n - 1, policy.backoff_base, policy.backoff_cap, rng)


# --- gating ---------------------------------------------------------------------------------

GateResult = Literal["pass", "low_signal", "low_power", "stale", "unknown"]


def gate(task: Task, status: Status, now: float, max_age: float) -> GateResult:
    """Dispatch only when signal > task.signal and power > task.power on a fresh report."""
    if status.status_at is None or status.signal is None or status.power is None:
        return "unknown"
    if now - status.status_at > max_age:
        return "stale"
    if not status.signal > task.signal:
        return "low_signal"
    if not status.power > task.power:
        return "low_power"
    return "pass"


# --- transitions ----------------------------------------------------------------------------

def on_claim(row: DeviceRow, now: float, healthy_since: float | None = None, *,
             last_seen: float | None = None,
             unreachable_after: float = DEFAULT_UNREACHABLE_AFTER) -> Decision:
    """A due device was claimed. Waiting devices go to check; an in-flight one that is due has
    had no progress within the dispatch timeout (or its token is about to expire).

    A dispatch timeout spends the device's retry budget only when our side was healthy for
    the whole window (``healthy_since``: the end of our last outage — a replica down, ingest
    disconnected, the database unreachable); otherwise the device is re-checked for free.
    A device that has sent nothing at all since (``last_seen``: its last message of any
    kind) is silent, not failing: it is re-checked for free (its command may have been
    lost), and is unreachable once silent for ``unreachable_after``."""
    if row.state in TERMINAL or row.state in PARKED:
        return Decision(row, row.state)
    if row.state in IN_FLIGHT:
        token_ending = row.token_expires_at is not None and \
            now >= row.token_expires_at - TOKEN_MARGIN
        reason = "token_expiring" if token_ending else "dispatch_timeout"
        window_start = row.heard_at if row.heard_at is not None else row.dispatched_at
        if reason == "dispatch_timeout" and healthy_since is not None and (
                window_start is None or window_start < healthy_since):
            reason = "dispatch_timeout_during_our_outage"
        silent = window_start is not None and (last_seen is None or last_seen < window_start)
        if reason == "dispatch_timeout" and silent:
            assert window_start is not None
            # silent since the command or its last progress, whichever came last (a report
            # older than that says nothing of now); re-commanding restarts the count, and a
            # device that stays silent then goes unreachable by the report it does not answer
            silence = now - window_start
            if silence >= unreachable_after:
                return Decision(row.replace(state="unreachable", next_attempt_at=None,
                                            last_error=f"silent for {silence:.0f} s "
                                                       "while dispatched"),
                                "unreachable: nothing heard since the command")
            # the command may have been lost: checked again (and a report asked), free
            reason = "silent_since_the_command"
        if reason == "dispatch_timeout":
            retry = row.task.retry if row.task else 0
            if row.attempts >= retry:
                return Decision(row.replace(state="failed", next_attempt_at=None,
                                            last_error="no progress; retries spent"),
                                "dispatch_timeout_budget_spent")
            row = row.replace(attempts=row.attempts + 1)
        return Decision(row.replace(state="checking", last_error=reason), reason)
    # the claim itself moved a waiting row to checking: no copy then
    return Decision(row if row.state == "checking" else row.replace(state="checking"),
                    "claimed")


def on_check(row: DeviceRow, outcome: CheckOutcome, status: Status, now: float,
             policy: Policy, rng: random.Random | None = None,
             attempt: str | None = None, profile: Sequence[int] | None = None) -> Decision:
    """Apply a check answer to a device in ``checking``. ``profile``: its radio profile, for
    radio-aware gating (None: the task's interval, as OneNET says). ``attempt``: the id the upgrade
    command will carry if this check dispatches one (progress must echo it)."""
    if row.state in TERMINAL:
        return Decision(row, "terminal")
    errno = outcome_errno(outcome)
    if isinstance(outcome, NoTask):
        return Decision(row.replace(state="no_task", last_errno=errno, next_attempt_at=None),
                        "errno 11: no task")
    if isinstance(outcome, Failed):
        where = "refused locally" if outcome.local else f"errno {outcome.errno}"
        return Decision(row.replace(state="failed", last_errno=outcome.errno,
                                    last_error=outcome.error, next_attempt_at=None),
                        f"{where}: {outcome.error}")
    if isinstance(outcome, Retryable | ProtocolError):
        detail = outcome.detail
        n = row.transient_errors + 1
        if outcome.kind == "retry" and outcome.reason == "breaker_open":
            n = row.transient_errors    # not the device's fault, not its budget
        if n > policy.transient_budget:
            return Decision(row.replace(state="failed", last_errno=errno, last_error=detail,
                                        transient_errors=n, next_attempt_at=None),
                            f"transient errors exhausted: {detail}")
        back = "pending" if row.dispatched_at is None else "gated"
        return Decision(row.replace(state=back, last_errno=errno, last_error=detail,
                                    transient_errors=n,
                                    next_attempt_at=now + retry_delay(max(n, 1), policy, rng)),
                        f"retry later: {detail}")
    assert isinstance(outcome, TaskFound)
    task = outcome.task
    expires = row.token_expires_at if (row.task and row.task.token == task.token
                                       and row.token_expires_at) else now + TOKEN_LIFETIME
    verdict = gate(task, status, now, policy.status_max_age)
    found = {"task": task, "token_expires_at": expires, "last_errno": 0,
             "transient_errors": 0}
    if verdict == "pass":
        return Decision(row.replace(**found, state="dispatched", dispatched_at=now, heard_at=now,
                                    attempt=attempt,
                                    next_attempt_at=in_flight_deadline(now, now, policy, expires),
                                    report_asked_at=None, last_error=None),
                        "gate passed; upgrade commanded", Command("upgrade"))
    row = row.replace(**found)
    if verdict in ("stale", "unknown"):
        if row.report_asked_at is None or (status.status_at or 0) > row.report_asked_at:
            return Decision(row.replace(state="gated", report_asked_at=now,
                                        next_attempt_at=now + min(policy.report_wait,
                                                                  policy.unreachable_after),
                                        last_error=f"gate: {verdict} status"),
                            f"gate: {verdict} status; fresh report asked", Command("report"))
        return unanswered(row, now, policy, verdict)
    return gate_failed(row, task, now, gate_reason(verdict, task, status), profile,
                       policy.radio_period)


def gate_reason(verdict: GateResult, task: Task, status: Status) -> str:
    """A failed gate as an operator reads it: the value against the task's threshold. (The
    part in brackets varies by device; ``ota.failure_reasons`` groups without it.)"""
    if verdict == "low_signal":
        return f"gate: low_signal (signal {status.signal}, the task needs > {task.signal})"
    if verdict == "low_power":
        return f"gate: low_power (power {status.power}, the task needs > {task.power})"
    return f"gate: {verdict}"


def pre_gate(row: DeviceRow, status: Status, now: float, policy: Policy,
             known: tuple[int, int] | None, profile: Sequence[int] | None) -> Decision | None:
    """Before a check call: when the campaign's checks already told the gate of the
    device's group (``known``: signal, power) and its fresh report would not pass it, no
    call is made; it is held to the slot its radio profile says is likely to pass (no budget
    spent: no check was made). None: check it (no known gate, a report that passes or is
    not fresh, no profile, or one that says it will not pass: the check decides)."""
    if known is None or profile is None:
        return None
    signal, power = known
    probe = Task("", "", 0, signal, power, 0, 0, "", 1)
    verdict = gate(probe, status, now, policy.status_max_age)
    if verdict in ("pass", "stale", "unknown"):
        return None
    best = radio.next_check(now, 0.0, profile, signal, power, policy.radio_period)
    if best.probability is None or best.hopeless or best.best_slot is None:
        return None
    hour = f"{best.best_slot * 24 // radio.SLOTS:02d}:00"
    reason = (f"held: {gate_reason(verdict, probe, status).removeprefix('gate: ')} would not "
              f"pass; checked at {hour} ({best.probability:.0%} likely)")
    return Decision(row.replace(state="gated", next_attempt_at=max(best.at, now + 1.0),
                                last_error=reason, best_slot=best.best_slot,
                                pass_probability=best.probability), reason)


class GroupGates:
    """The gate each device group's task set, as one replica's checks saw it (None: the
    group's first answered check told none, e.g. no task). Radio-aware gating holds a
    group's devices back from their first check until one check of the group has told its
    gate; then a device whose fresh report would not pass it is held to a likelier hour
    (:func:`pre_gate`) instead of failing it. The scheduler and the rehearsal both keep
    one; ``group`` is any hashable naming (campaign, manufacturer, model, from-version)."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[Any, tuple[int, int] | None] = {}

    def before_check(self, d: Decision, group: Any, status: Status,
                     profile: Sequence[int] | None, now: float, policy: Policy,
                     probing: set[Any]) -> Decision:
        """A claimed device (``d``: on_claim's decision) about to be checked: checked (``d``
        unchanged), held (pre_gate), or waiting a second for its group's first check.
        ``probing``: the groups this batch already checks without a known gate."""
        if d.row.state != "checking" or d.reason != "claimed" or not radio.informed(profile):
            return d                      # without history a device goes as before
        if group not in self.known and group in probing:
            return on_probe_wait(d.row, now)      # one check per group tells it first
        probing.add(group)
        held = pre_gate(d.row, status, now, policy, self.known.get(group), profile)
        return d if held is None else held

    def learn(self, group: Any, outcome: CheckOutcome, called: bool) -> None:
        """A check's answer: a task tells its group's gate; an answer without one says the
        group has none (a transient error says nothing)."""
        if isinstance(outcome, TaskFound):
            self.known[group] = (outcome.task.signal, outcome.task.power)
        elif called and not isinstance(outcome, Retryable):
            self.known.setdefault(group, None)


def unanswered(row: DeviceRow, now: float, policy: Policy, verdict: str) -> Decision:
    """A report was asked and none came: silence is not failure. Ask again, each wait twice
    the last, until ``unreachable_after`` since the first ask; then unreachable. No budget
    is spent."""
    asked = row.report_asked_at if row.report_asked_at is not None else now
    silent = now - asked
    if silent >= policy.unreachable_after:
        return Decision(row.replace(state="unreachable", next_attempt_at=None,
                                    last_error=f"no report for {silent:.0f} s after asking"),
                        f"unreachable: no answer to a report request in {silent:.0f} s")
    wait = min(max(policy.report_wait, silent), asked + policy.unreachable_after - now)
    return Decision(row.replace(state="gated", next_attempt_at=now + max(wait, 1.0),
                                last_error=f"gate: {verdict} status; report asked again"),
                    f"gate: {verdict} status; no answer yet; report asked again",
                    Command("report"))


def gate_failed(row: DeviceRow, task: Task, now: float, reason: str,
                profile: Sequence[int] | None = None, period: float = radio.DAY) -> Decision:
    """The gate failed: checked again later, at most ``task.retry`` times. With a radio
    profile, at the first slot (at least the task's interval away) where a report is likely
    to pass, else its likeliest; with none, after the interval."""
    best: radio.NextCheck | None = None
    if profile is not None:
        best = radio.next_check(now, task.interval, profile, task.signal, task.power, period)
    outlook = ""
    if best is not None and best.probability is not None and best.best_slot is not None:
        hour = f"{best.best_slot * 24 // radio.SLOTS:02d}:00"
        outlook = (f"; its history says it will not pass within a day (best {hour}, "
                   f"{best.probability:.0%})" if best.hopeless else
                   f"; best {hour} ({best.probability:.0%} likely)")
    if best is not None and best.hopeless:
        # reported for what it is, not retried into the ground: no slot of its day is
        # likely to pass (an operator's retry gives it another day)
        return Decision(row.replace(state="failed", next_attempt_at=None,
                                    last_error=reason + outlook,
                                    best_slot=best.best_slot,
                                    pass_probability=best.probability),
                        f"{reason}{outlook}")
    if row.attempts >= task.retry:
        return Decision(row.replace(state="failed", next_attempt_at=None,
                                    last_error=reason),
                        f"{reason}; retries spent ({task.retry}){outlook}")
    at = best.at if best is not None else now + task.interval
    return Decision(row.replace(state="gated", attempts=row.attempts + 1, next_attempt_at=at,
                                last_error=reason + outlook,
                                best_slot=best.best_slot if best else None,
                                pass_probability=best.probability if best else None),
                    f"{reason}; retry {row.attempts + 1}/{task.retry} in {at - now:.0f}s"
                    + outlook)


# steps a device may report in each in-flight state (anything else is out of order)
DOWNLOAD_STEPS = frozenset(range(0, 101)) | {STEP_DOWNLOADED} | DOWNLOAD_FAILED_STEPS
STEPS_BY_STATE = {
    "dispatched": DOWNLOAD_STEPS | INSTALL_FAILED_STEPS | {STEP_SUCCEEDED, 207, 208},
    "downloading": DOWNLOAD_STEPS | INSTALL_FAILED_STEPS | {STEP_SUCCEEDED, 207, 208},
    "upgrading": INSTALL_FAILED_STEPS | {STEP_DOWNLOADED, STEP_SUCCEEDED, 207, 208},
}


def progress_refusal(row: DeviceRow, step: int, attempt: str | None,
                     require_attempt: bool = True) -> str | None:
    """Why a progress report must not touch this row (a counted reason), or None.

    Progress is bound to a dispatch: only a device we commanded and have not heard finish
    (in flight), echoing the id of that command, with a step that fits where it is."""
    if row.state not in IN_FLIGHT:
        return "not_dispatched"
    if attempt is None:
        if require_attempt or row.attempt is None:
            return "missing_attempt" if require_attempt else None
        return None
    if row.attempt is not None and attempt != row.attempt:
        return "stale_attempt"
    if step not in STEPS_BY_STATE[row.state]:
        return "out_of_order"
    return None


def on_progress(row: DeviceRow, step: int, now: float, policy: Policy) -> Decision:
    """A progress report (OneNET step codes) from the device, already bound to its dispatch
    by :func:`progress_refusal`."""
    if row.state in TERMINAL:
        return Decision(row, f"step {step} ignored: {row.state}")
    if row.state not in IN_FLIGHT:
        return Decision(row, f"step {step} ignored: {row.state}")
    if step == STEP_SUCCEEDED:
        return Decision(row.replace(state="succeeded", last_step=step, next_attempt_at=None,
                                    last_error=None), "step 201: upgrade succeeded")
    deadline = in_flight_deadline(now, now, policy, row.token_expires_at)
    if 0 <= step < 100:
        return Decision(row.replace(state="downloading", last_step=step, heard_at=now,
                                    next_attempt_at=deadline), f"step {step}: downloading")
    if step in (100, STEP_DOWNLOADED):
        return Decision(row.replace(state="upgrading", last_step=step, heard_at=now,
                                    next_attempt_at=deadline),
                        f"step {step}: downloaded, upgrading")
    task = row.task
    if step in DOWNLOAD_FAILED_STEPS or step in INSTALL_FAILED_STEPS:
        what = "download" if step in DOWNLOAD_FAILED_STEPS else "install"
        retry = task.retry if task else 0
        interval = task.interval if task else 60
        if row.attempts >= retry:
            return Decision(row.replace(state="failed", last_step=step, next_attempt_at=None,
                                        last_error=f"{what} failed (step {step})"),
                            f"step {step}: {what} failed; retries spent ({retry})")
        return Decision(row.replace(state="pending", last_step=step, attempts=row.attempts + 1,
                                    next_attempt_at=now + interval, dispatched_at=None,
                                    last_error=f"{what} failed (step {step})"),
                        f"step {step}: {what} failed; retry {row.attempts + 1}/{retry} "
                        f"in {interval}s")
    if step in (207, 208):
        return Decision(row.replace(state="failed", last_step=step, next_attempt_at=None,
                                    last_error=f"step {step}"),
                        f"step {step}: " + ("retries exhausted" if step == 207 else
                                            "task expired"))
    return Decision(row, f"step {step} ignored: unknown")


def on_version(row: DeviceRow, version: str, target: str) -> Decision:
    """A status report: reaching the target version completes a device we upgraded (in
    flight, or gone silent after the command); a device never commanded is left to its
    check."""
    commanded = row.state in IN_FLIGHT or (row.state in PARKED and row.dispatched_at is not None)
    if not commanded or version != target:
        return Decision(row, "no change")
    return Decision(row.replace(state="succeeded", next_attempt_at=None, last_error=None),
                    f"reported version {version} = target")


# an operator may retry these: failed and unreachable devices get a fresh budget; in-flight
# ones (a command that may be lost, a device stuck mid-download) are checked and commanded
# again with their budget untouched
RETRYABLE_STATES = frozenset({"failed", "unreachable", *IN_FLIGHT})


def on_status_while_gated(row: DeviceRow, status: Status, now: float,
                          policy: Policy) -> Decision:
    """A gated device whose fresh report now passes its task's gate is due at once (the
    claim still waits for the rate limit, the windows and the caps), not at its next
    check."""
    if row.state != "gated" or row.task is None or row.next_attempt_at is None \
            or row.next_attempt_at <= now:
        return Decision(row, "no change")
    if gate(row.task, status, now, policy.status_max_age) != "pass":
        return Decision(row, "no change")
    return Decision(row.replace(next_attempt_at=now),
                    f"woken: a report passes the gate (signal {status.signal} > "
                    f"{row.task.signal}, power {status.power} > {row.task.power})")


CELL_RETRY = 5.0      # a device its cell could not admit is claimed again this much later
PROBE_WAIT = 1.0      # ... one that waits for its group's first check tells the gate
PROBE_REASON = "waits for its group's first check to tell the gate"


def on_probe_wait(row: DeviceRow, now: float) -> Decision:
    """Radio-aware gating holds a group's devices back from their first check until one of
    the group's checks has told its task's gate (then a device whose report would fail it
    is held to a likelier hour instead of failing it): a second's wait, no budget spent."""
    back = "pending" if row.task is None else "gated"
    return Decision(row.replace(state=back, next_attempt_at=now + PROBE_WAIT), PROBE_REASON)


def on_cell_busy(row: DeviceRow, now: float, cell: str, busy: int, cap: int,
                 position: int = 0) -> Decision:
    """A claimed device its cell cannot admit now: back where it waited (no budget spent;
    no event, it would repeat). ``position``: how many of the same cell were turned away
    before it in this claim. The cell admits ``cap`` at a time, so they come back ``cap`` at
    a time, ``CELL_RETRY`` apart: a cell of 500 devices under a cap of 10 is not claimed
    and turned away whole every few seconds."""
    back = "pending" if row.dispatched_at is None and row.task is None else "gated"
    later = CELL_RETRY * (1 + position // max(cap, 1))
    return Decision(row.replace(state=back, next_attempt_at=now + later,
                                last_error=f"cell {cell} busy: {busy} in flight (cap {cap})"),
                    f"cell {cell} busy: {busy} in flight (cap {cap})")


def on_heard(row: DeviceRow, now: float) -> Decision:
    """An unreachable device reported again: back in line, checked afresh."""
    if row.state not in PARKED:
        return Decision(row, "no change")
    return Decision(row.replace(state="pending", next_attempt_at=now, dispatched_at=None,
                                attempt=None, report_asked_at=None, last_error=None),
                    "reported again; back in line")


def on_retry(row: DeviceRow, now: float, reason: str) -> Decision:
    """An operator retries a device in the same campaign: a failed or unreachable one with a
    fresh budget; an in-flight one is checked (a fresh token) and commanded again at once,
    its budget untouched (the old command's progress is refused as stale)."""
    if row.state not in RETRYABLE_STATES:
        return Decision(row, f"not retried: {row.state}")
    if row.state in IN_FLIGHT:
        return Decision(row.replace(state="pending", next_attempt_at=now, dispatched_at=None,
                                    attempt=None, report_asked_at=None,
                                    last_error=f"re-commanded: {reason}"),
                        f"checked and commanded again by the operator: {reason}")
    return Decision(row.replace(state="pending", attempts=0, transient_errors=0,
                                next_attempt_at=now, dispatched_at=None, attempt=None,
                                report_asked_at=None, last_error=f"retried: {reason}"),
                    f"retried by the operator: {reason}")


def on_status_while_dispatched(row: DeviceRow, version: str | None, target: str,
                               now: float, grace: float = DEFAULT_LOST_COMMAND_GRACE
                               ) -> Decision:
    """A status report from a device commanded at least ``grace`` seconds ago that has sent
    no progress since, on a version that is not the target: the command was lost (a device
    that got it would be downloading). Checked again at once, for a fresh command, with no
    budget spent."""
    if row.state != "dispatched" or not version or version == target \
            or row.dispatched_at is None or now - row.dispatched_at < grace:
        return Decision(row, "no change")
    waited = now - row.dispatched_at
    return Decision(row.replace(state="pending", next_attempt_at=now, dispatched_at=None,
                                attempt=None, report_asked_at=None,
                                last_error=f"lost command: reported {version} with no "
                                           f"progress {waited:.0f} s after the command"),
                    f"lost command: status on {version} with no progress {waited:.0f} s after "
                    "the command; checked and commanded again (no budget spent)")
