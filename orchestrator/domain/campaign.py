"""Campaigns, pure: the operator's spec and selector, the campaign as read, its status
machine (the only path to a status change), and the value types the workers pass to the
store (a claimed device, a decided row to write)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from orchestrator.domain.catalogue import known_manuf, known_model
from orchestrator.domain.device import (
    DEFAULT_UNREACHABLE_AFTER,
    NON_TERMINAL,
    RETRYABLE_STATES,
    DeviceRow,
    Policy,
    Status,
)
from orchestrator.domain.rollout import Counts, Rules, check_waves
from orchestrator.domain.versions import check_version
from orchestrator.domain.windows import BadWindow, Schedule

# text an operator may give: no control characters (C0, DEL, C1) — the same patterns stand
# in the OpenAPI document
TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,64}$")
NAME_RE = re.compile(r"^(?=[^\x00-\x1f\x7f-\x9f]{1,200}$)[^\x00-\x1f\x7f-\x9f]*\S"
                     r"[^\x00-\x1f\x7f-\x9f]*$")
REASON_RE = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,200}$")
INT32_MAX = 2**31 - 1
MAX_DISPATCH_TIMEOUT = 7 * 24 * 3600
MAX_CANARY = 1_000_000
INT64_MAX = 2**63 - 1
STATUSES = ("draft", "running", "paused", "completed", "cancelled", "aborted")
DONE = frozenset({"completed", "cancelled", "aborted"})
__all__ = ["DONE", "NON_TERMINAL", "STATUSES"]


class CampaignError(ValueError):
    """An operator's request that cannot be done."""


class CampaignInputError(CampaignError):
    """A field's value is wrong: a usage error (the CLI exits 2, the API answers 400)."""


class CampaignNotFound(CampaignError):
    pass


class CampaignConflict(CampaignError):
    """The campaign's status does not allow the action."""


# action -> (statuses it may be taken from, status it leads to)
TRANSITIONS: Mapping[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft"}), "running"),
    "pause": (frozenset({"running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "cancel": (frozenset({"draft", "running", "paused"}), "cancelled"),
    "complete": (frozenset({"running"}), "completed"),
    "abort": (frozenset({"running", "paused"}), "aborted"),
    # failed devices get a fresh budget: a completed campaign runs again for them
    "retry": (frozenset({"completed"}), "running"),
}


def transition(campaign_id: int, current: str, action: str) -> str:
    """The status ``action`` leads to from ``current``; CampaignConflict if not allowed."""
    allowed, new = TRANSITIONS[action]
    if current not in allowed:
        raise CampaignConflict(f"campaign {campaign_id} is {current}: cannot {action}")
    return new


RULE_FIELDS = ("max_per_minute", "wave_success_pct", "abort_failure_pct",
               "abort_min_finished", "abort_action", "dispatch_timeout", "unreachable_after",
               "max_in_flight", "windows", "timezone", "max_per_cell", "gating")
GATING = ("radio", "interval")


def shown(value: Any) -> str:
    """A rule's value as a person reads it: no ``None``, no float noise."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return "; ".join(shown(v) for v in value) or "none"
    return str(value)


def check_rule_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The rules of a live campaign an operator may change, checked as at creation;
    ``None`` removes the rate limit or the abort rule."""
    unknown = sorted(set(changes) - set(RULE_FIELDS))
    if unknown:
        raise CampaignInputError(
            f"{unknown[0]}: cannot be changed (one of {', '.join(RULE_FIELDS)})")
    if not changes:
        raise CampaignInputError("changes: none given")
    out = dict(changes)
    for key in ("max_per_minute", "abort_min_finished"):
        v = out.get(key)
        if key in out and (v is not None or key == "abort_min_finished") and (
                isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= INT32_MAX):
            raise CampaignInputError(f"{key}: 1..{INT32_MAX}")
    for key in ("wave_success_pct", "abort_failure_pct"):
        v = out.get(key)
        if key in out and (v is not None or key == "wave_success_pct"):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
                raise CampaignInputError(f"{key}: 0..100")
            out[key] = float(v)
    if "abort_action" in out and out["abort_action"] not in ("pause", "abort"):
        raise CampaignInputError("abort_action: pause or abort")
    for key in ("dispatch_timeout", "unreachable_after"):
        v = out.get(key)
        if v is not None or (key == "unreachable_after" and key in out):
            if isinstance(v, bool) or not isinstance(v, int | float) \
                    or not 1 <= v <= MAX_DISPATCH_TIMEOUT:
                raise CampaignInputError(f"{key}: 1..{MAX_DISPATCH_TIMEOUT} seconds")
            out[key] = float(v)
    for key in ("max_in_flight", "max_per_cell"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not 1 <= v <= INT32_MAX):
            raise CampaignInputError(f"{key}: 1..{INT32_MAX}")
    if "gating" in out and out["gating"] not in GATING:
        raise CampaignInputError("gating: radio (from each device's history) or interval "
                                 "(the task's interval)")
    if "windows" in out or "timezone" in out:
        windows = out.get("windows", [])
        if not isinstance(windows, list | tuple) or not all(isinstance(w, str)
                                                            for w in windows):
            raise CampaignInputError("windows: a list of strings like 'Mon-Fri 01:00-05:00'")
        timezone = out.get("timezone", "UTC")
        try:
            Schedule.parse(windows, timezone if isinstance(timezone, str) else "")
        except BadWindow as exc:
            raise CampaignInputError(str(exc)) from None
        if "windows" in out:
            out["windows"] = list(windows)
    return out


def check_retry(states: Any, errno: Any, reason: Any) -> tuple[list[str], int | None, str]:
    """An operator's retry request (CLI or API), checked once: which states, which last
    errno, and the reason recorded in each device's event."""
    if not isinstance(states, list) or not states:
        raise CampaignInputError("state: at least one")
    for s in states:
        if not isinstance(s, str) or s not in RETRYABLE_STATES:
            raise CampaignInputError(f"state: {str(s)[:30]!r} cannot be retried (one of "
                                     f"{', '.join(sorted(RETRYABLE_STATES))})")
    if errno is not None and (isinstance(errno, bool) or not isinstance(errno, int)
                              or not -1 <= errno <= INT32_MAX):
        raise CampaignInputError("errno: an integer")
    if not isinstance(reason, str) or not REASON_RE.fullmatch(reason):
        raise CampaignInputError("reason: 1-200 characters, no control characters")
    return states, errno, reason


@dataclass(frozen=True, slots=True)
class Selector:
    manuf: str | None = None
    model: str | None = None
    from_versions: tuple[str, ...] = ()
    devices: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.manuf:
            out["manuf"] = self.manuf
        if self.model:
            out["model"] = self.model
        if self.from_versions:
            out["from_versions"] = list(self.from_versions)
        if self.devices is not None:
            out["devices"] = list(self.devices)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selector:
        devices = data.get("devices")
        return cls(data.get("manuf"), data.get("model"), tuple(data.get("from_versions", ())),
                   None if devices is None else tuple(devices))


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    name: str
    type: str
    target: str
    selector: Selector = field(default_factory=Selector)
    waves: tuple[int, ...] = (100,)
    wave_success_pct: float = 0.0
    max_per_minute: int | None = None
    abort_failure_pct: float | None = None
    abort_min_finished: int = 1
    continuous: bool = False
    abort_action: str = "pause"
    all_devices: bool = False     # required to select the whole registry
    dispatch_timeout: float | None = None   # None: the service's ORCH_DISPATCH_TIMEOUT
    canary: int | None = None        # the first wave holds this many of every group
    unreachable_after: float = DEFAULT_UNREACHABLE_AFTER
    max_in_flight: int | None = None
    windows: tuple[str, ...] = ()    # maintenance windows; none: always
    timezone: str = "UTC"
    max_per_cell: int | None = None  # downloads at once per cell
    gating: str = "radio"            # a failed gate: checked again when likely to pass

    def schedule(self) -> Schedule:
        return Schedule.parse(self.windows, self.timezone)

    def validate(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise CampaignInputError("name: 1-200 characters, not all blank, no control characters")
        for key, text in (("manuf", self.selector.manuf), ("model", self.selector.model)):
            if text is not None and not TEXT_RE.fullmatch(text):
                raise CampaignInputError(f"{key}: 1-64 characters, no control characters")
        if self.selector.devices is not None:
            if not self.selector.devices:
                raise CampaignInputError("devices: at least one id")
            if any(not 0 < d <= INT64_MAX for d in self.selector.devices):
                raise CampaignInputError(f"devices: ids are 1..{INT64_MAX}")
        if self.type not in ("fota", "sota"):
            raise CampaignInputError(f"type: fota or sota (got {self.type!r})")
        try:
            check_version(self.target, "target")
            for v in self.selector.from_versions:
                check_version(v, "from_version")
            check_waves(self.waves)
        except ValueError as exc:
            raise CampaignInputError(str(exc)) from None
        if not 0 <= self.wave_success_pct <= 100:     # also refuses nan
            raise CampaignInputError("wave_success_pct: 0..100")
        if self.max_per_minute is not None and not 0 < self.max_per_minute <= INT32_MAX:
            raise CampaignInputError(f"max_per_minute: 1..{INT32_MAX}")
        if self.abort_failure_pct is not None and not 0 <= self.abort_failure_pct <= 100:
            raise CampaignInputError("abort_failure_pct: 0..100")
        if not 1 <= self.abort_min_finished <= INT32_MAX:
            raise CampaignInputError(f"abort_min_finished: 1..{INT32_MAX}")
        if self.abort_action not in ("pause", "abort"):
            raise CampaignInputError("abort_action: pause or abort")
        check_rule_changes({"dispatch_timeout": self.dispatch_timeout,
                            "unreachable_after": self.unreachable_after,
                            "max_in_flight": self.max_in_flight,
                            "windows": list(self.windows), "timezone": self.timezone,
                            "max_per_cell": self.max_per_cell, "gating": self.gating})
        if self.canary is not None and (isinstance(self.canary, bool)
                                        or not 1 <= self.canary <= MAX_CANARY):
            raise CampaignInputError(f"canary: 1..{MAX_CANARY} devices per group")
        sel = self.selector
        if sel.manuf is not None and not known_manuf(sel.manuf):
            raise CampaignInputError(f"manuf: {sel.manuf!r} is not in OneNET's manufacturer table "
                                "(orchestrator's catalogue, by name or code)")
        if sel.model is not None and not known_model(sel.model):
            raise CampaignInputError(f"model: {sel.model!r} is not in OneNET's module table")
        if not (sel.manuf or sel.model or sel.from_versions or sel.devices is not None
                or self.all_devices):
            raise CampaignInputError("selector: none given — this would enrol the whole registry; "
                                "say so with all_devices (--all-devices)")


@dataclass(frozen=True, slots=True)
class Campaign:
    campaign_id: int
    name: str
    status: str
    type: str
    target_version: str
    selector: dict[str, Any]
    waves: list[int]
    wave_success_pct: float
    current_wave: int
    max_per_minute: int | None
    abort_failure_pct: float | None
    abort_min_finished: int
    continuous: bool
    status_reason: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    counts: Counts = field(default_factory=Counts)
    abort_action: str = "pause"
    rule_failed_base: int = 0
    rule_finished_base: int = 0
    gate_accepted_wave: int = -1
    dispatch_timeout: float | None = None
    canary: int | None = None
    unreachable_after: float = DEFAULT_UNREACHABLE_AFTER
    max_in_flight: int | None = None
    windows: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    rate_per_min: float | None = None     # measured: finished per minute, recently
    eta_at: dt.datetime | None = None     # when it is expected to be done
    eta_note: str | None = None           # why there is no ETA
    max_per_cell: int | None = None
    gating: str = "radio"

    @property
    def rules(self) -> Rules:
        return Rules(tuple(self.waves), self.wave_success_pct, self.abort_failure_pct,
                     self.abort_min_finished, self.continuous,
                     "abort" if self.abort_action == "abort" else "pause",
                     self.rule_failed_base, self.rule_finished_base, self.gate_accepted_wave)

    def to_json(self, *, with_devices: bool = False) -> dict[str, Any]:
        """The campaign with its counts flat, as in ``ota.campaign_progress``: the open wave
        counted from 1, as everywhere people read it; the rate rounded."""
        out = asdict(self)
        counts = out.pop("counts")
        out.update(total=self.counts.total, remaining=self.counts.open, **counts)
        out["current_wave"] = self.current_wave + 1
        if self.rate_per_min is not None:
            out["rate_per_min"] = round(self.rate_per_min, 1)
        for key in ("created_at", "started_at", "finished_at", "eta_at"):
            out[key] = out[key].isoformat() if out[key] else None
        sel = dict(out["selector"])
        if "devices" in sel and not with_devices:
            sel["devices"] = f"{len(sel['devices'])} listed"
        out["selector"] = sel
        return out


def campaign_policy(policy: Policy, dispatch_timeout: float | None,
                    unreachable_after: float | None) -> Policy:
    """The service's policy with a campaign's own dispatch timeout and unreachable delay."""
    if dispatch_timeout is None and unreachable_after is None:
        return policy
    return dataclasses.replace(
        policy,
        dispatch_timeout=policy.dispatch_timeout if dispatch_timeout is None
        else dispatch_timeout,
        unreachable_after=policy.unreachable_after if unreachable_after is None
        else unreachable_after)


@dataclass(frozen=True, slots=True)
class RunningCampaign:
    campaign_id: int
    type: str
    current_wave: int
    max_per_minute: int | None
    dispatch_timeout: float | None = None
    unreachable_after: float = DEFAULT_UNREACHABLE_AFTER
    max_in_flight: int | None = None
    schedule: Schedule = field(default_factory=Schedule)
    gating: str = "radio"                # or "interval": the task's interval, as OneNET says
    max_per_cell: int | None = None


class Member(msgspec.Struct, frozen=True, gc=False):
    """One device's row in one campaign, as read (locked) by the store."""

    campaign_id: int
    dev_id: int
    rev: int
    wave: int
    row: DeviceRow
    type: str
    target_version: str
    dispatch_timeout: float | None = None     # the campaign's own, if it sets one
    unreachable_after: float = DEFAULT_UNREACHABLE_AFTER


class Claimed(msgspec.Struct, frozen=True, gc=False):
    """A due device claimed for checking, with what the check and the gate need."""

    member: Member
    manuf: str | None
    model: str | None
    version: str | None
    status: Status
    last_seen: float | None = None      # the device's last message of any kind
    radio: list[int] | None = None      # its radio profile (domain/radio.py)
    cell: str | None = None
    ce_level: int | None = None

    @property
    def campaign_id(self) -> int:
        return self.member.campaign_id

    @property
    def dev_id(self) -> int:
        return self.member.dev_id

    @property
    def rev(self) -> int:
        return self.member.rev

    @property
    def row(self) -> DeviceRow:
        return self.member.row


class Write(msgspec.Struct, frozen=True, gc=False):
    """One decided row to write, guarded by the revision it was read at."""

    campaign_id: int
    dev_id: int
    rev: int
    old_state: str
    row: DeviceRow
    reason: str
    event: bool = True       # False: written without an event (a folded progress step)
