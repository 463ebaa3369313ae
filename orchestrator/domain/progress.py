"""Device messages applied to campaign rows, pure: progress steps in arrival order, status
reports that reach a campaign's target, which steps are worth an event, and what is passed
on to OneNET."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.domain.campaign import Member, campaign_policy
from orchestrator.domain.device import (
    DeviceRow,
    Policy,
    Status,
    on_heard,
    on_progress,
    on_status_while_dispatched,
    on_status_while_gated,
    on_version,
    progress_refusal,
)
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport

Key = tuple[int, int]
EVENT_EVERY_PERCENT = 10


@dataclass(frozen=True, slots=True)
class Relay:
    """A progress step to pass on to OneNET's progress endpoint."""

    token: str
    dev_id: int
    step: int
    id: int | None = None      # its row in ota.relays, once stored
    attempts: int = 0


RELAY_GIVE_UP_AFTER = 20      # tries; 30-60 min with the relay's capped backoff


def relay_fate(answered: bool, attempts: int,
               give_up_after: int = RELAY_GIVE_UP_AFTER) -> str:
    """What becomes of a relayed step after one more try, ``attempts`` failed tries before
    it: ``sent`` when OneNET answered (any errno: an answer is final, another try would get
    the same), ``dropped`` when it did not and this was the last allowed try, else
    ``retried``."""
    if answered:
        return "sent"
    return "dropped" if attempts >= give_up_after - 1 else "retried"


def apply_progress(members: dict[Key, Member], reports: Sequence[ProgressReport],
                   now: float, policy: Policy, require_attempt: bool = True,
                   versions: list[StatusReport] | None = None
                   ) -> tuple[dict[Key, DeviceRow], dict[Key, list[str]], list[Rejection],
                              list[Relay]]:
    """Each report, in arrival order, on its (campaign, device) row (pure). A report not
    bound to the device's dispatch is refused with a counted reason and never relayed.
    ``versions`` receives, for the registry, the version an accepted step 201 names (the
    device runs it now, whether or not a status follows)."""
    current = {k: m.row for k, m in members.items()}
    reasons: dict[Key, list[str]] = {}
    rejected: list[Rejection] = []
    relays: list[Relay] = []
    for r in reports:
        key = (r.campaign, r.dev_id)
        row = current.get(key)
        if row is None:
            rejected.append(Rejection("unknown_campaign", f"device {r.dev_id} is not in "
                                      f"campaign {r.campaign}", f"{r.dev_id}/progress"))
            continue
        refused = progress_refusal(row, r.step, r.attempt, require_attempt)
        if refused is not None:
            rejected.append(Rejection(refused, f"step {r.step} for device {r.dev_id} in "
                                      f"{row.state}", f"{r.dev_id}/progress"))
            continue
        decision = on_progress(row, r.step, now, policy_for(policy, members[key]))
        if r.version is not None and decision.row.state != "succeeded":
            by_version = on_version(decision.row, r.version, members[key].target_version)
            if by_version.row.state == "succeeded":
                decision = by_version
        if row.task is not None:   # what the device did, whatever we decided of it
            relays.append(Relay(row.task.token, r.dev_id, r.step))
        if versions is not None and r.version and decision.row.state == "succeeded":
            fota = members[key].type == "fota"
            versions.append(StatusReport(r.dev_id, fota_version=r.version if fota else None,
                                         sota_version=None if fota else r.version))
        current[key] = decision.row
        reasons.setdefault(key, []).append(decision.reason)
    return current, reasons, rejected, relays


def apply_versions(members: dict[Key, Member], current: dict[Key, DeviceRow],
                   reasons: dict[Key, list[str]], statuses: Sequence[StatusReport]) -> None:
    """A status whose version equals an open campaign's target completes that device."""
    by_dev = {s.dev_id: s for s in statuses}
    for key, m in members.items():
        s = by_dev.get(key[1])
        if s is None:
            continue
        version = s.fota_version if m.type == "fota" else s.sota_version
        decision = on_version(current[key], version or "", m.target_version)
        if decision.row.state == "succeeded" and current[key].state != "succeeded":
            current[key] = decision.row
            reasons.setdefault(key, []).append(decision.reason)


def apply_heard(members: dict[Key, Member], current: dict[Key, DeviceRow],
                reasons: dict[Key, list[str]], statuses: Sequence[StatusReport],
                now: float, policy: Policy | None = None) -> None:
    """Any status from an unreachable device puts it back in line; a status on the old
    version from a device commanded a while ago that sent no progress says its command was
    lost: checked again at once. (After the versions: one that reports the target has
    succeeded.)"""
    heard = {s.dev_id for s in statuses}
    versions: dict[tuple[int, str], str] = {}     # (device, type) -> the last version reported
    radio: dict[int, Status] = {}                 # device -> its last signal and power
    for r in statuses:
        for kind, version in (("fota", r.fota_version), ("sota", r.sota_version)):
            if version:
                versions[(r.dev_id, kind)] = version
        if r.signal is not None and r.power is not None:
            radio[r.dev_id] = Status(r.signal, r.power, now)
    for key, m in members.items():
        if key[1] not in heard:
            continue
        version = versions.get((key[1], m.type))
        rules = policy_for(policy or Policy(), m)
        decision = on_heard(current[key], now)
        if decision.row == current[key]:
            decision = on_status_while_dispatched(
                current[key], version, m.target_version, now, rules.lost_command_grace)
        if decision.row == current[key] and key[1] in radio:
            decision = on_status_while_gated(current[key], radio[key[1]], now, rules)
        if decision.row != current[key]:
            current[key] = decision.row
            reasons.setdefault(key, []).append(decision.reason)


def policy_for(policy: Policy, member: Member) -> Policy:
    """The service's policy with the campaign's own settings."""
    return campaign_policy(policy, member.dispatch_timeout, member.unreachable_after)


def worth_an_event(old: DeviceRow, new: DeviceRow) -> bool:
    """A state change, a result step, a download crossing a 10% mark, or a gated device
    woken by a report: a device's whole upgrade is a handful of events, not one per
    percent."""
    if old.state != new.state:
        return True
    if new.state == "gated" and old.next_attempt_at is not None \
            and new.next_attempt_at is not None and new.next_attempt_at < old.next_attempt_at:
        return True
    step, before = new.last_step, old.last_step
    if step is None or not 0 <= step <= 100:
        return step != before
    if before is None or not 0 <= before <= 100:
        return True
    return step // EVENT_EVERY_PERCENT != before // EVENT_EVERY_PERCENT
