"""The ops API's contract, once: request bodies and query strings as msgspec Structs whose
constraints are the domain's own constants, and response shapes derived from the domain's
types. The API decodes with these (a bad field is named in the error) and the OpenAPI
document is generated from them (``openapi.py``); nothing else restates a field or a limit.

Rules a schema cannot say (waves increasing to 100, windows that parse, listed devices
existing) stay with the domain, which the handlers call next."""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from orchestrator.domain.campaign import (
    INT32_MAX,
    INT64_MAX,
    MAX_CANARY,
    MAX_DISPATCH_TIMEOUT,
    NAME_RE,
    REASON_RE,
    STATUSES,
    TEXT_RE,
    Campaign,
    CampaignSpec,
    Selector,
)
from orchestrator.domain.device import RETRYABLE_STATES, STATES
from orchestrator.domain.registry import Device
from orchestrator.domain.rehearsal import MAX_CHECK_RATE, MAX_RUNS, RUNS
from orchestrator.domain.rollout import COUNT_STATES, Counts
from orchestrator.domain.versions import VERSION_RE
from orchestrator.domain.windows import MAX_WINDOWS, WINDOW_RE

# named constrained types: each a component of the OpenAPI document
Id = Annotated[int, Meta(ge=1, le=INT64_MAX, title="Id")]
Count = Annotated[int, Meta(ge=1, le=INT32_MAX)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Seconds = Annotated[float, Meta(ge=1, le=MAX_DISPATCH_TIMEOUT,
                                description="seconds, at most a week")]
Text = Annotated[str, Meta(min_length=1, max_length=64, pattern=TEXT_RE.pattern)]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NAME_RE.pattern)]
Reason = Annotated[str, Meta(min_length=1, max_length=200, pattern=REASON_RE.pattern)]
Version = Annotated[str, Meta(pattern=f"^{VERSION_RE.pattern}$")]
Window = Annotated[str, Meta(max_length=100, pattern=re.sub(r"\(\?P<\w+>", "(",
                                                           WINDOW_RE.pattern),
                             description="a maintenance window, e.g. 'Mon-Fri 01:00-05:00'")]
TimeZone = Annotated[str, Meta(min_length=1, max_length=64, pattern="^[A-Za-z0-9_+/-]+$",
                               description="IANA time zone of the windows, e.g. "
                                           "Asia/Shanghai")]
Limit = Annotated[int, Meta(ge=1, le=10_000)]
Errno = Annotated[int, Meta(ge=-1, le=INT32_MAX)]

# enumerations from the domain's tuples
CampaignStatus = enum.StrEnum("CampaignStatus", [(s, s) for s in STATUSES])  # type: ignore[misc]
DeviceState = enum.StrEnum("DeviceState", [(s, s) for s in STATES])  # type: ignore[misc]
RetryState = enum.StrEnum("RetryState",  # type: ignore[misc]
                          [(s, s) for s in sorted(RETRYABLE_STATES)])


class CampaignCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A new campaign (POST /api/v1/campaigns). ``null`` means "not given"."""

    name: Name
    type: Literal["fota", "sota"]
    target: Version
    manuf: Text | None = None
    model: Text | None = None
    from_versions: list[Version] | None = None
    devices: Annotated[list[Id], Meta(min_length=1)] | None = None
    waves: Annotated[list[Annotated[int, Meta(ge=1, le=100)]], Meta(
        description="cumulative percentages ending at 100")] | None = None
    wave_success_pct: Percent | None = None
    max_per_minute: Count | None = None
    abort_failure_pct: Percent | None = None
    abort_min_finished: Count | None = None
    continuous: bool | None = None
    abort_action: Literal["pause", "abort"] | None = None
    dispatch_timeout: Seconds | None = None
    canary: Annotated[int, Meta(ge=1, le=MAX_CANARY, description=(
        "the first wave holds this many devices of every (manuf, model, from-version) "
        "group"))] | None = None
    unreachable_after: Seconds | None = None
    max_in_flight: Count | None = None
    max_per_cell: Annotated[Count, Meta(description="downloads at once per cell (default: by "
                                        "coverage level when devices report it)")] \
        | None = None
    gating: Annotated[Literal["radio", "interval"], Meta(
        description="radio: a device that fails the gate is checked when its history says "
                    "it is likely to pass; interval: after the task's interval")] | None = None
    windows: Annotated[list[Window], Meta(max_length=MAX_WINDOWS)] | None = None
    timezone: TimeZone | None = None
    all_devices: Annotated[bool, Meta(description="required when no selector is given")] \
        | None = None
    start: bool | None = None

    def spec(self) -> CampaignSpec:
        defaults = CampaignSpec("", "", "")
        given: dict[str, Any] = {k: v for k, v in (
            ("waves", tuple(self.waves) if self.waves else None),
            ("wave_success_pct", self.wave_success_pct),
            ("max_per_minute", self.max_per_minute),
            ("abort_failure_pct", self.abort_failure_pct),
            ("abort_min_finished", self.abort_min_finished),
            ("continuous", self.continuous), ("abort_action", self.abort_action),
            ("all_devices", self.all_devices), ("dispatch_timeout", self.dispatch_timeout),
            ("canary", self.canary), ("unreachable_after", self.unreachable_after),
            ("max_in_flight", self.max_in_flight),
            ("max_per_cell", self.max_per_cell), ("gating", self.gating),
            ("windows", tuple(self.windows) if self.windows is not None else None),
            ("timezone", self.timezone)) if v is not None}
        spec = dataclasses.replace(
            defaults, name=self.name, type=self.type, target=self.target,
            selector=Selector(self.manuf, self.model, tuple(self.from_versions or ()),
                              None if self.devices is None else tuple(self.devices)),
            **given)
        spec.validate()
        return spec


class CampaignUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Rules of a live campaign (PATCH /api/v1/campaigns/{id}); what is left out stays,
    ``null`` removes a limit."""

    max_per_minute: Count | UnsetType | None = UNSET
    wave_success_pct: Percent | UnsetType = UNSET
    abort_failure_pct: Percent | UnsetType | None = UNSET
    abort_min_finished: Count | UnsetType = UNSET
    abort_action: Literal["pause", "abort"] | UnsetType = UNSET
    dispatch_timeout: Seconds | UnsetType | None = UNSET
    unreachable_after: Seconds | UnsetType = UNSET
    max_in_flight: Count | UnsetType | None = UNSET
    max_per_cell: Count | UnsetType | None = UNSET
    gating: Literal["radio", "interval"] | UnsetType = UNSET
    windows: Annotated[list[Window], Meta(max_length=MAX_WINDOWS)] | UnsetType = UNSET
    timezone: TimeZone | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        """What is given (the domain checks the rest: at least one, windows that parse)."""
        return {f: getattr(self, f) for f in self.__struct_fields__
                if getattr(self, f) is not UNSET}


class RetryRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Devices to give a fresh budget (POST /api/v1/campaigns/{id}/retry)."""

    state: RetryState = RetryState("failed")
    errno: Errno | None = None
    reason: Reason = "by the operator"


class NoBody(msgspec.Struct, forbid_unknown_fields=True):
    """An empty object (or no body at all)."""


class CredentialsRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Broker accounts for these devices, or for every registered one (of a manufacturer
    and model); ``rotate`` renews the secrets of those that have one."""

    dev_ids: Annotated[list[Id], Meta(min_length=1, max_length=100_000)] | None = None
    all_registered: bool = False
    manuf: Text | None = None
    model: Text | None = None
    rotate: bool = False


class RevokeRequest(msgspec.Struct, forbid_unknown_fields=True):
    dev_ids: Annotated[list[Id], Meta(min_length=1, max_length=100_000)]


# --- query strings -------------------------------------------------------------------------

class CampaignListQuery(msgspec.Struct, forbid_unknown_fields=False):
    status: CampaignStatus | None = None
    limit: Limit = 100


class CampaignDevicesQuery(msgspec.Struct, forbid_unknown_fields=False):
    state: DeviceState | None = None
    limit: Limit = 100


class DeviceListQuery(msgspec.Struct, forbid_unknown_fields=False):
    manuf: Text | None = None
    model: Text | None = None
    after: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0
    limit: Limit = 100


class CreateQuery(msgspec.Struct, forbid_unknown_fields=False):
    dry_run: Annotated[bool, Meta(description="true: the plan (200), nothing written")] = False
    assume_signal: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1, description=(
        "dry run: count the devices whose fresh status would pass this threshold"))] \
        | None = None
    assume_power: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)] | None = None
    rehearse: Annotated[bool, Meta(description=(
        "true: the campaign played through in virtual time against a model of the fleet "
        "(200), nothing written"))] = False
    runs: Annotated[int, Meta(ge=1, le=MAX_RUNS, description="rehearse: seeded runs")] = RUNS
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1, description="rehearse: the first seed")] = 0
    check_rate: Annotated[float, Meta(gt=0, le=MAX_CHECK_RATE, description=(
        "rehearse: checks per second the service makes at most"))] | None = None


# --- responses: shapes derived from the domain's types ---------------------------------------

def _campaign_fields() -> list[tuple[str, Any]]:
    """The fields of :meth:`Campaign.to_json`: the dataclass's own (datetimes as ISO text,
    the counts flat) and what it derives (total, remaining)."""
    hints = typing.get_type_hints(Campaign)
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(Campaign):
        kind = hints[f.name]
        if f.name == "counts":
            out += [(s, int) for s in COUNT_STATES]
            continue
        if f.name == "selector":
            kind = dict[str, Any]
        elif "datetime" in str(kind):
            kind = str | None if "None" in str(kind) else str
        out.append((f.name, kind))
    return [*out, ("total", int), ("remaining", int)]


CampaignOut = msgspec.defstruct("Campaign", _campaign_fields(), forbid_unknown_fields=True)
assert {f for f, _ in _campaign_fields()} >= set(COUNT_STATES)
assert {f.name for f in dataclasses.fields(Counts)} == set(COUNT_STATES)


def _json_fields(kind: type) -> list[tuple[str, Any]]:
    """A dataclass's fields as its ``to_json`` gives them: datetimes as ISO text."""
    hints = typing.get_type_hints(kind)
    return [(f.name, (str | None if "None" in str(hints[f.name]) else str)
             if "datetime" in str(hints[f.name]) else hints[f.name])
            for f in dataclasses.fields(kind)]


DeviceOut = msgspec.defstruct("Device", _json_fields(Device), forbid_unknown_fields=True)


class Waiting(msgspec.Struct):
    dev_id: int
    wave: int
    state: str
    until: str | None
    reason: str | None


class Waits(msgspec.Struct):
    """What a campaign waits on before its next wave (or its end)."""

    campaign_id: int
    status: str
    wave: int
    waves: int
    then: str
    devices: int
    longest: list[Waiting]


class BestHour(msgspec.Struct):
    best_hour: int | None
    devices: int
    pass_probability: float | None
    next_check: str | None


class CellLoad(msgspec.Struct):
    cell: str
    ce_level: int | None
    in_flight: int


class GateOutlook(msgspec.Struct):
    """A campaign's devices waiting for signal or power, and the busiest cells."""

    campaign_id: int
    waiting: int
    by_best_hour: list[BestHour]
    cells: list[CellLoad]


class Error(msgspec.Struct):
    error: str


class RetryOut(msgspec.Struct):
    retried: int
    campaign: CampaignOut  # type: ignore[valid-type]


class Credential(msgspec.Struct):
    dev_id: int
    username: str
    password: str


class CredentialsOut(msgspec.Struct):
    created: int
    rotated: int
    credentials: list[Credential]


class RevokeOut(msgspec.Struct):
    revoked: list[int]
    without_account: int


Plan = dict[str, Any]
DeviceProgress = dict[str, Any]
