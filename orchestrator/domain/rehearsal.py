"""A campaign played through in virtual time, before it runs: every device goes through the
same decisions the service makes (``on_claim``, the radio-aware ``GroupGates``,
``on_check``, ``progress_refusal``/``on_progress``, ``on_cell_busy``), the campaign through
the controller's ``decide`` (waves, their gate, the abort rule, completion), the scheduler's
caps (``slots``, ``admit_by_cell``), rate limit (``rate_tokens``) and windows
(``Schedule``). What is not a decision is a model, per device group, of what the platform
and the devices did in past campaigns (:class:`GroupModel`): OneNET's answers, the time an
upgrade takes, how often a download or an install fails, how many go silent once
commanded. Nothing here does I/O; the use case builds the models from the database.

Between the scheduler's batches the service spends the time its checks take: modelled as
``checks_per_second``. A device reports on its group's interval (read from how old the
group's last reports are), so a status may be stale at its check: a report is asked, the
device answers a moment later, and its answer wakes it as ingest's would
(``on_status_while_gated``). A gated device is otherwise checked again when its decision
says (its radio profile's likeliest hour, or the task's interval): the wake by a passing
periodic report between checks is not modelled (the rehearsal errs late, not early).
"""

from __future__ import annotations

import gc
import heapq
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from orchestrator.domain import radio
from orchestrator.domain.device import (
    IN_FLIGHT,
    PARKED,
    STATES,
    TERMINAL,
    Decision,
    DeviceRow,
    GroupGates,
    Policy,
    Status,
    on_cell_busy,
    on_check,
    on_claim,
    on_progress,
    on_status_while_gated,
    progress_refusal,
)
from orchestrator.domain.onenet import (
    DOWNLOAD_FAILED_STEPS,
    INSTALL_FAILED_STEPS,
    STEP_DOWNLOADED,
    STEP_SUCCEEDED,
    CheckOutcome,
    Failed,
    NoTask,
    Retryable,
    Task,
    TaskFound,
    local_refusal,
)
from orchestrator.domain.radio import admit_by_cell, cell_cap
from orchestrator.domain.rollout import Counts, Rules, decide, rate_capacity, rate_tokens, slots
from orchestrator.domain.windows import Schedule

BUSY = frozenset({"checking", *IN_FLIGHT})   # what the in-flight caps count
# never due by time: ended, parked, or claimed (a claimed row leaves "checking" in the same
# batch; the lease that brings back a crashed replica's claims is not rehearsed)
QUIET = TERMINAL | PARKED | {"checking"}
NO_TASK = 11
TRANSIENT = 7
HORIZON = 30 * 86400.0        # a rehearsal stops here if the campaign has not ended
RUNS = 5                      # seeded runs per variant, by default
MAX_RUNS = 100
MAX_CHECK_RATE = 1e6          # checks per second an operator may say the service makes

# what stands in for history a group does not have yet (printed as assumptions)
DEFAULT_TASK = Task("", "", 0, 0, 0, 3, 60, "", 1)
DEFAULT_UPGRADE_SECONDS = 120.0
CHECK_SECONDS = 0.1           # one check call's time, assumed: a rate of concurrency / this
DEFAULT_CHECKS_PER_SECOND = 64 / CHECK_SECONDS    # ORCH_ONENET_CONCURRENCY's default
REPORT_ANSWER = 1.0           # seconds a reporting device takes to answer a report request
INTERVAL_QUANTILE = 0.95      # of a group's report ages: its report interval
REPORTED = -1                 # a timed event's step: the report a device sent when asked


class GroupModel(msgspec.Struct, frozen=True):
    """What one (manufacturer, model, from-version) group did in past campaigns."""

    key: tuple[str | None, str | None, str | None]
    answers: tuple[tuple[int, float], ...] = ((0, 1.0),)   # (errno, share) of a device's
    #                                       check answer: 0 a task, 11 no task, else refused
    transient: float = 0.0            # chance a check answers errno 7 (or times out)
    task: Task = DEFAULT_TASK         # thresholds, retry and interval of its task
    upgrade_seconds: tuple[float, ...] = (DEFAULT_UPGRADE_SECONDS,)  # command to success
    download_fail: float = 0.0        # chance one commanded attempt fails its download
    install_fail: float = 0.0         # ... fails its install
    silent: float = 0.0               # chance a commanded device is never heard again
    assumed: tuple[str, ...] = ()     # which of these are defaults, not history


class Device(msgspec.Struct, frozen=True, gc=False):
    """One selected device as the rehearsal sees it."""

    dev_id: int
    wave: int
    group: int                        # index into the groups (its manufacturer, model and
    #                                   from-version are the group's key)
    signal: int | None = None
    power: int | None = None
    status_at: float | None = None    # its last report (None: never)
    reports: bool = True              # still reporting (answers a report request)
    profile: Sequence[int] | None = None   # radio profile (an array of 16-bit ints)
    cell: str | None = None
    ce_level: int | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    """The campaign's rules and the service's pace."""

    rules: Rules
    type: str = "fota"
    policy: Policy = field(default_factory=Policy)
    schedule: Schedule = field(default_factory=Schedule)
    max_per_minute: int | None = None
    max_in_flight: int | None = None
    max_per_cell: int | None = None
    radio_aware: bool = True
    checks_per_second: float = DEFAULT_CHECKS_PER_SECOND
    batch: int = 2000                 # ORCH_SCHEDULER_BATCH_SIZE
    poll: float = 0.5                 # ORCH_SCHEDULER_POLL_INTERVAL
    control: float = 0.5              # the controller's tick
    horizon: float = HORIZON


@dataclass(slots=True)
class Run:
    """One rehearsal's story."""

    seed: int
    ended: str = "horizon"            # complete, pause, abort or horizon
    reason: str = ""
    seconds: float | None = None      # start to the end (None: past the horizon)
    counts: dict[str, int] = field(default_factory=dict)          # final, by state
    by_group: list[dict[str, int]] = field(default_factory=list)
    waves: list[dict[str, float | None]] = field(default_factory=list)  # opened, finished
    tripped: dict[str, Any] | None = None        # the abort rule or wave gate, if it acts
    checks: int = 0
    never_pass: int = 0               # failed at the gate for good
    peak_in_flight: int = 0           # most devices checking or in flight at once
    peak_per_cell: int = 0            # ... in one cell
    events: int = 0                   # timed events the run queued (due times, progress)


class _Play:
    """The state of one run: rows, heaps of due devices, counters kept as rows change."""

    def __init__(self, devices: Sequence[Device], groups: Sequence[GroupModel],
                 setup: Setup, start: float, seed: int) -> None:
        self.devices = devices
        self.groups = groups
        self.setup = setup
        self.start = start
        self.rng = random.Random(seed)
        n = len(devices)
        self.first = DeviceRow(next_attempt_at=start)
        self.rows = [self.first] * n
        self.wave = [d.wave for d in devices]
        self.ver = [0] * n                # a heap entry is live while its version matches
        self.dispatch = [0] * n           # which command a scheduled progress belongs to
        self.steps: list[list[tuple[float, int]] | None] = [None] * n   # still to report
        self.next_heard = [math.inf] * n  # when its next progress comes
        self.silent = [not d.reports for d in devices]
        self.last_seen = [d.status_at if not d.reports else start for d in devices]
        # (a reporting device's last word is always recent: read as "now" at its claims)
        self.interval = report_intervals(devices, len(groups), start)
        self.answered = [-math.inf] * n   # when it last answered a report request
        nwaves = len(setup.rules.waves)
        self.by_wave: list[dict[str, int]] = [dict.fromkeys(STATES, 0) for _ in range(nwaves)]
        self.members: list[list[int]] = [[] for _ in range(nwaves)]
        for i, d in enumerate(devices):
            self.by_wave[d.wave]["pending"] += 1
            self.members[d.wave].append(i)
        self.waiting: list[tuple[float, int, int]] = []     # (due, version, index)
        self.in_flight: list[tuple[float, int, int]] = []
        self.progress: list[tuple[float, int, int, int, int]] = []  # (at, seq, i, step, n)
        self.seq = 0
        self.pushed = 0                   # due times queued (with the progress: the events)
        self.busy = 0
        self.peak = 0
        self.cells: dict[str, int] = {}
        self.peak_cell = 0
        self.current_wave = -1
        self.opened: list[float | None] = [None] * nwaves
        self.done: list[float | None] = [None] * nwaves
        self.gates = GroupGates()
        self.answer = self._answers()
        self.tokens = rate_capacity(setup.max_per_minute) if setup.max_per_minute else 0.0
        self.tokens_at = start
        self.checks = 0
        self.changed = True

    def _answers(self) -> list[int]:
        """Each device's answer from the platform, the same at every check: in each group,
        its share of the group's devices answers each errno (which devices: drawn)."""
        answer = [0] * len(self.devices)
        members: dict[int, list[int]] = {}
        for i, d in enumerate(self.devices):
            members.setdefault(d.group, []).append(i)
        for g, idx in members.items():
            shares = self.groups[g].answers
            if all(errno == 0 for errno, _ in shares):
                continue
            self.rng.shuffle(idx)
            at, acc = 0, 0.0
            for errno, share in shares:
                acc += share
                end = round(acc * len(idx))
                for i in idx[at:end]:
                    answer[i] = errno
                at = max(at, end)
        return answer

    # --- rows ---------------------------------------------------------------------------------

    def put(self, i: int, row: DeviceRow) -> None:
        old = self.rows[i]
        state = row.state
        if old.state != state:
            d = self.devices[i]
            counts = self.by_wave[d.wave]
            counts[old.state] -= 1
            counts[state] += 1
            now_busy = state in BUSY
            if (old.state in BUSY) != now_busy:
                step = 1 if now_busy else -1
                self.busy += step
                if d.cell is not None:
                    self.cells[d.cell] = self.cells.get(d.cell, 0) + step
            self.changed = True
        self.rows[i] = row
        v = self.ver[i] = self.ver[i] + 1
        at = row.next_attempt_at
        if at is None or state in QUIET or self.wave[i] > self.current_wave:
            return
        if state in IN_FLIGHT:
            if self.next_heard[i] < at:
                return      # heard before its deadline: put again then, with a new one
            heapq.heappush(self.in_flight, (at, v, i))
        else:
            heapq.heappush(self.waiting, (at, v, i))
        self.pushed += 1

    def open_wave(self, wave: int, t: float) -> None:
        self.current_wave = wave
        self.opened[wave] = t
        first, due = self.first, self.first.replace(next_attempt_at=t)
        for i in self.members[wave]:
            row = self.rows[i]           # untouched until its wave opens: one row for all
            self.put(i, due if row is first else row.replace(next_attempt_at=t))

    # --- the devices ----------------------------------------------------------------------------

    def last_report(self, i: int, t: float) -> float:
        """When a reporting device last reported, as of ``t``: on its group's interval, in
        the phase of its last real report, or when it answered a report request since."""
        d = self.devices[i]
        every = self.interval[d.group]
        at = t if every is None or d.status_at is None else t - (t - d.status_at) % every
        answered = self.answered[i]
        return answered if at < answered <= t else at

    def status(self, i: int, task: Task | None, t: float) -> Status:
        """Its latest report as of ``t`` (a silent device's is its last real one)."""
        d = self.devices[i]
        if self.silent[i]:
            return Status(d.signal, d.power, self.last_seen[i])
        at = self.last_report(i, t)
        if task is not None and d.profile is not None and radio.informed(d.profile):
            p = radio.estimate(d.profile, radio.slot_of(at, self.setup.policy.radio_period),
                               task.signal, task.power)
            if p is not None:         # a report of that hour: passes as often as they do
                if self.rng.random() < p:
                    return Status(max(d.signal or 0, task.signal + 1),
                                  max(d.power or 0, task.power + 1), at)
                if (d.signal or 0) > task.signal and (d.power or 0) > task.power:
                    return Status(task.signal, d.power, at)
        return Status(d.signal, d.power, at)

    def asked(self, i: int, t: float) -> None:
        """A report was asked of it: a device still reporting answers a moment later, and
        its answer is a status report as ingest applies it (a gated device whose fresh
        report passes is due at once)."""
        if self.silent[i]:
            return
        at = self.answered[i] = t + REPORT_ANSWER
        self.seq += 1
        heapq.heappush(self.progress, (at, self.seq, i, REPORTED, self.dispatch[i]))

    def outcome(self, i: int) -> CheckOutcome:
        g = self.groups[self.devices[i].group]
        refused = local_refusal(*g.key, self.setup.type)
        if refused is not None:
            return refused
        if g.transient and self.rng.random() < g.transient:
            return Retryable("errno", "errno 7: try later (rehearsed)", TRANSIENT)
        errno = self.answer[i]
        if errno == 0:
            return TaskFound(g.task)
        if errno == NO_TASK:
            return NoTask()
        return Failed(errno, f"errno {errno} (as the group's past checks answered)")

    def commanded(self, i: int, t: float, attempt: str) -> None:
        """A device got its upgrade command: what it does, drawn from its group's past. Its
        steps are queued one at a time (the next when one is heard), so a device in flight
        holds one timed event; it reports download progress every half dispatch timeout,
        as a device does, so a long download is not taken for a lost one."""
        g = self.groups[self.devices[i].group]
        self.dispatch[i] += 1
        rng = self.rng
        if g.silent and rng.random() < g.silent:
            self.silent[i] = True            # never heard again: no progress, no report;
            self.last_seen[i] = t - 1.0      # its last word came before the command
            self.steps[i] = None
            self.next_heard[i] = math.inf
            return
        took = g.upgrade_seconds[rng.randrange(len(g.upgrade_seconds))]
        downloaded = t + took * 0.6
        every = self.setup.policy.dispatch_timeout / 2
        steps: list[tuple[float, int]] = []
        at = t + every
        while at < downloaded:
            steps.append((at, min(99, int(100 * (at - t) / (took * 0.6)))))
            at += every
        if g.download_fail and rng.random() < g.download_fail:
            steps.append((downloaded, min(DOWNLOAD_FAILED_STEPS)))
        else:
            steps.append((downloaded, STEP_DOWNLOADED))
            failed = g.install_fail and rng.random() < g.install_fail
            steps.append((t + took, min(INSTALL_FAILED_STEPS) if failed else STEP_SUCCEEDED))
        steps.reverse()                       # popped from the end, first step last
        self.steps[i] = steps
        self._next_step(i)

    def _next_step(self, i: int) -> None:
        steps = self.steps[i]
        if not steps:
            self.next_heard[i] = math.inf
            return
        at, step = steps.pop()
        self.next_heard[i] = at
        self.seq += 1
        heapq.heappush(self.progress, (at, self.seq, i, step, self.dispatch[i]))

    def heard(self, t: float) -> None:
        """Progress due by ``t``, each bound to its command as ingest binds it."""
        policy = self.setup.policy
        while self.progress and self.progress[0][0] <= t:
            at, _, i, step, n = heapq.heappop(self.progress)
            if step == REPORTED:               # a report it was asked for
                row = self.rows[i]
                woke = on_status_while_gated(row, self.status(i, row.task, at), at, policy)
                if woke.row is not row:
                    self.put(i, woke.row)
                continue
            if n != self.dispatch[i]:
                continue                       # an older command's
            self._next_step(i)
            row = self.rows[i]
            if progress_refusal(row, step, row.attempt) is not None:
                continue
            self.last_seen[i] = at
            self.put(i, on_progress(row, step, at, policy).row)

    # --- the service ----------------------------------------------------------------------------

    def _pop(self, heap: list[tuple[float, int, int]], t: float, want: int) -> list[int]:
        out: list[int] = []
        while heap and len(out) < want and heap[0][0] <= t:
            _, v, i = heapq.heappop(heap)
            if v == self.ver[i]:
                out.append(i)
        return out

    def schedule(self, t: float) -> int:
        """One scheduler batch at ``t``: in-flight devices whose time is up, then waiting
        ones inside a window, under the caps, at the rate. Returns the checks made."""
        s = self.setup
        claimed = self._pop(self.in_flight, t, s.batch)
        want = s.batch - len(claimed)
        waiting: list[int] = []
        if want > 0 and self.current_wave >= 0 and s.schedule.is_open(t):
            want = slots(want, s.max_in_flight, self.busy)
            if s.max_per_minute is not None:
                self.tokens = rate_tokens(self.tokens, s.max_per_minute, t - self.tokens_at)
                self.tokens_at = t
                want = min(want, math.floor(self.tokens))
            waiting = self._pop(self.waiting, t, want)
            for i in waiting:                  # the claim makes them checking
                self.put(i, self.rows[i].replace(state="checking"))
            waiting = self._admit_cells(waiting, t)
            if s.max_per_minute is not None:
                self.tokens -= len(waiting)
            # what the caps hold: counted once the claim is admitted (as the service's
            # claim transaction commits only the admitted ones)
            self.peak = max(self.peak, self.busy)
            for i in waiting:
                cell = self.devices[i].cell
                if cell is not None:
                    self.peak_cell = max(self.peak_cell, self.cells[cell])
        policy = s.policy
        probing: set[int] = set()
        calls = 0
        for i in claimed + waiting:
            dev = self.devices[i]
            # a device still reporting was heard lately; a silent one when it last spoke
            d = on_claim(self.rows[i], t, None,
                         last_seen=self.last_seen[i] if self.silent[i] else t,
                         unreachable_after=policy.unreachable_after)
            status = self.status(i, self.groups[dev.group].task, t)   # its latest report
            if s.radio_aware:
                d = self.gates.before_check(d, dev.group, status, dev.profile, t, policy,
                                            probing)
            if d.row.state != "checking":
                self.put(i, d.row)
                continue
            outcome = self.outcome(i)
            called = not (isinstance(outcome, Failed) and outcome.local)
            calls += called
            if s.radio_aware:
                self.gates.learn(dev.group, outcome, called)
            attempt = f"{self.dispatch[i] + 1}"
            decided: Decision = on_check(
                d.row, outcome, status, t, policy, self.rng, attempt=attempt,
                profile=dev.profile if s.radio_aware else None)
            self.put(i, decided.row)
            if decided.command is not None:
                if decided.command.op == "upgrade":
                    self.commanded(i, t, attempt)
                elif decided.command.op == "report":
                    self.asked(i, t)
        self.checks += calls
        return calls

    def _admit_cells(self, waiting: list[int], t: float) -> list[int]:
        cap = self.setup.max_per_cell
        levels: dict[str, list[int | None]] = {}
        for i in waiting:
            d = self.devices[i]
            if d.cell is not None:
                levels.setdefault(d.cell, []).append(d.ce_level)
        if not levels or (cap is None and not any(c is not None for v in levels.values()
                                                  for c in v)):
            return waiting
        busy = {c: self.cells.get(c, 0) - len(v) for c, v in levels.items()}
        admitted, deferred = admit_by_cell(
            [(i, self.devices[i].cell, self.devices[i].ce_level) for i in waiting], busy, cap)
        turned: dict[str, int] = {}
        for i in deferred:
            cell = self.devices[i].cell
            assert cell is not None
            limit = cell_cap(cap, levels[cell]) or 0
            position = turned[cell] = turned.get(cell, -1) + 1
            self.put(i, on_cell_busy(self.rows[i], t, cell, limit, limit, position).row)
        return admitted

    def counts(self) -> dict[int, Counts]:
        return {w: Counts.from_states(c) for w, c in enumerate(self.by_wave)}

    def next_due(self, t: float) -> float:
        """When the scheduler next finds something to do, idle now."""
        s = self.setup
        due = math.inf
        for heap in (self.in_flight, self.waiting):
            while heap and heap[0][1] != self.ver[heap[0][2]]:
                heapq.heappop(heap)               # stale entries
        if self.in_flight:
            due = self.in_flight[0][0]
        if self.waiting and self.current_wave >= 0:
            w = self.waiting[0][0]
            if s.max_per_minute is not None and self.tokens < 1:
                w = max(w, t + (1 - self.tokens) * 60.0 / s.max_per_minute)
            if not s.schedule.always:
                w = s.schedule.next_open(max(w, t)) or math.inf
            if s.max_in_flight is None or self.busy < s.max_in_flight:
                due = min(due, w)
        if self.progress:
            due = min(due, self.progress[0][0])
        return max(due, t + s.poll)


def rehearse(devices: Sequence[Device], groups: Sequence[GroupModel], setup: Setup,
             start: float, seed: int = 0) -> Run:
    """One run of the campaign from ``start`` (epoch seconds: windows are real hours).

    The cyclic garbage collector is off meanwhile: a run allocates millions of timed events
    and rows and makes no cycles, and the collector's passes over them cost 8% of a run of a
    million devices."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _rehearse(devices, groups, setup, start, seed)
    finally:
        if enabled:
            gc.enable()


def _rehearse(devices: Sequence[Device], groups: Sequence[GroupModel], setup: Setup,
              start: float, seed: int) -> Run:
    p = _Play(devices, groups, setup, start, seed)
    rules = setup.rules
    run = Run(seed)
    t = start
    next_sched = math.inf
    end = start + setup.horizon
    p.open_wave(0, t)
    next_sched = t
    next_tick = t                              # the controller ticks every setup.control
    while t <= end:
        p.heard(t)
        if p.changed and t >= next_tick:       # the controller's tick (when rows changed)
            p.changed = False
            next_tick = t + setup.control
            by_wave = p.counts()
            for w, counts in by_wave.items():
                if p.opened[w] is not None and p.done[w] is None and counts.open == 0:
                    p.done[w] = t
            action = decide(rules, p.current_wave, by_wave)
            if action.kind == "open_wave":
                assert action.wave is not None
                p.open_wave(action.wave, t + setup.control)
                next_sched = min(next_sched, t + setup.control)
                p.changed = True               # an empty wave: the next tick opens the next
            elif action.kind in ("pause", "abort", "complete"):
                run.ended, run.reason = action.kind, action.reason
                run.seconds = t - start
                if action.rule is not None:
                    run.tripped = {"rule": action.rule, "action": action.kind,
                                   "wave": p.current_wave + 1, "seconds": t - start,
                                   "reason": action.reason}
                break
        if t >= next_sched:
            calls = p.schedule(t)
            next_sched = t + calls / setup.checks_per_second if calls else p.next_due(t)
        if p.changed:       # the next tick: the progress until then is heard in order
            t_next = min(next_sched, max(next_tick, t))
        else:
            t_next = min(next_sched, p.progress[0][0] if p.progress else math.inf)
        if t_next == math.inf:
            break                              # nothing will ever happen again
        t = max(t_next, t)
    run.checks, run.peak_in_flight, run.peak_per_cell = p.checks, p.peak, p.peak_cell
    run.events = p.pushed + p.seq
    run.waves = [{"wave": w + 1, "devices": len(p.members[w]),
                  "opened": None if opened is None else opened - start,
                  "finished": None if done is None else done - start}
                 for w, (opened, done) in enumerate(zip(p.opened, p.done, strict=True))]
    totals = dict.fromkeys(STATES, 0)
    by_group = [dict.fromkeys(STATES, 0) for _ in groups]
    for i, row in enumerate(p.rows):
        totals[row.state] += 1
        by_group[devices[i].group][row.state] += 1
        if row.state == "failed" and (row.last_error or "").startswith("gate:"):
            run.never_pass += 1
    run.counts = {s: n for s, n in totals.items() if n}
    run.by_group = [{s: n for s, n in g.items() if n} for g in by_group]
    return run


@dataclass(frozen=True, slots=True)
class Summary:
    """Several seeded runs of one variant, as an operator reads them."""

    runs: int
    finished: int                       # runs that reached an end within the horizon
    median_seconds: float | None
    p90_seconds: float | None
    counts: dict[str, int]              # the median run's final counts
    by_group: list[dict[str, int]]
    waves: list[dict[str, float | None]]
    ended: dict[str, int]               # how runs ended: complete / pause / abort / horizon
    tripped: dict[str, Any] | None      # the median run's rule action, if any
    trip_runs: int                      # runs in which a rule acted
    checks: int
    never_pass: int
    events: int


def summarize(runs: Iterable[Run]) -> Summary:
    done = sorted(runs, key=lambda r: (r.seconds is None, r.seconds or 0.0))
    times = [r.seconds for r in done if r.seconds is not None]
    median = done[(len(done) - 1) // 2]
    ended: dict[str, int] = {}
    for r in done:
        ended[r.ended] = ended.get(r.ended, 0) + 1
    return Summary(len(done), len(times),
                   float(statistics.median(times)) if times else None,
                   _quantile(times, 0.9) if times else None,
                   median.counts, median.by_group, median.waves, ended, median.tripped,
                   sum(1 for r in done if r.tripped), median.checks, median.never_pass,
                   median.events)


def report_intervals(devices: Sequence[Device], groups: int, start: float
                     ) -> list[float | None]:
    """Each group's report interval, read from its reporting devices' last reports: in a
    fleet that reports every I seconds, the ages of the last reports at any moment spread
    over 0..I, so a high quantile of them stands for I. None: no device of the group has
    reported (its reports are then taken as always fresh)."""
    ages: list[list[float]] = [[] for _ in range(groups)]
    for d in devices:
        if d.reports and d.status_at is not None:
            ages[d.group].append(max(0.0, start - d.status_at))
    return [_quantile(a, INTERVAL_QUANTILE) or None if a else None for a in ages]


def _quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (of few runs: one of them, not an interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def per_attempt(final_share: float, attempts: int) -> float:
    """The chance one attempt fails when ``final_share`` of devices failed after
    ``attempts`` tries each (a device fails for good only when every try fails)."""
    if final_share <= 0:
        return 0.0
    return min(1.0, float(final_share ** (1.0 / max(attempts, 1))))


@dataclass(frozen=True, slots=True)
class History:
    """What past campaigns' ended members of one group say (``rehearse_history``'s row)."""

    members: int = 0
    tasked: int = 0                   # answered with a task
    no_task: int = 0
    refused: Sequence[int] = ()       # the errno of each member refused by the platform
    transient: int = 0                # transient errors, over all their checks
    commanded: int = 0
    silent: int = 0                   # commanded, then never heard: unreachable
    download_failed: int = 0
    install_failed: int = 0
    task: Task | None = None          # the newest task seen
    upgrade_seconds: Sequence[float] = ()
    commands: int = 0                 # every upgrade command their events record
    download_attempts_failed: int = 0  # ... and every failed download and install, retried
    install_attempts_failed: int = 0  # into a success or not


MIN_HISTORY = 5       # a group with fewer ended members in past campaigns is assumed


def model_group(key: tuple[str | None, str | None, str | None], h: History | None
                ) -> GroupModel:
    """A group's model from its history; what is missing is a default, and named."""
    if h is None or h.members < MIN_HISTORY:
        return GroupModel(key, assumed=("answers", "task", "upgrade_seconds", "failures",
                                        "silent"))
    assumed: list[str] = []
    answered = h.tasked + h.no_task + len(h.refused)
    shares: dict[int, int] = {0: h.tasked, NO_TASK: h.no_task}
    for errno in h.refused:
        shares[errno] = shares.get(errno, 0) + 1
    answers = tuple((e, n / answered) for e, n in sorted(shares.items()) if n) \
        if answered else ((0, 1.0),)
    if not answered:
        assumed.append("answers")
    task = h.task
    if task is None:
        task = DEFAULT_TASK
        assumed.append("task")
    durations = tuple(s for s in h.upgrade_seconds if s >= 0)
    if not durations:
        durations = (DEFAULT_UPGRADE_SECONDS,)
        assumed.append("upgrade_seconds")
    commanded = max(h.commanded, 1)
    if h.commands:              # every attempt seen: the failure rates are counted
        download_fail = h.download_attempts_failed / h.commands
        installs = max(h.commands - h.download_attempts_failed, 1)
        install_fail = min(1.0, h.install_attempts_failed / installs)
    else:                       # only the final states: a device failed after every try
        tries = task.retry + 1
        download_fail = per_attempt(h.download_failed / commanded, tries)
        install_fail = per_attempt(h.install_failed / commanded, tries)
    return GroupModel(
        key, answers, transient=h.transient / (h.transient + h.members), task=task,
        upgrade_seconds=durations, download_fail=download_fail, install_fail=install_fail,
        silent=h.silent / commanded, assumed=tuple(assumed))
