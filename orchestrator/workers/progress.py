"""The ingest sink: device messages applied to the record in one transaction per batch,
through the domain's transitions — progress steps, and status reports that reach a
campaign's target version. Every membership row the batch touches is locked once, in key
order, before anything is written (two replicas' batches cannot deadlock)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.domain.campaign import Member, Write
from orchestrator.domain.device import DeviceRow, Policy, on_progress, on_version
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.ports import Database, Key, Tx


@dataclass(frozen=True, slots=True)
class Relay:
    """A progress step to pass on to OneNET's progress endpoint."""

    token: str
    dev_id: int
    step: int


def apply_progress(members: dict[Key, Member], reports: Sequence[ProgressReport],
                   now: float, policy: Policy
                   ) -> tuple[dict[Key, DeviceRow], dict[Key, list[str]], list[Rejection],
                              list[Relay]]:
    """Each report, in arrival order, on its (campaign, device) row (pure)."""
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
        decision = on_progress(row, r.step, now, policy)
        if r.version is not None and decision.row.state != "succeeded":
            by_version = on_version(decision.row, r.version, members[key].target_version)
            if by_version.row.state == "succeeded":
                decision = by_version
        if row.task is not None:   # what the device did, whatever we decided of it
            relays.append(Relay(row.task.token, r.dev_id, r.step))
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


class ProgressSink:
    """The port ``IngestSink``: one transaction per batch."""

    def __init__(self, db: Database, policy: Policy | None = None,
                 relay: Callable[[Sequence[Relay]], None] | None = None) -> None:
        self.db = db
        self.policy = policy or Policy()
        self.relay = relay

    async def apply(self, statuses: Sequence[StatusReport],
                    reports: Sequence[ProgressReport]) -> Sequence[Rejection]:
        async def write(tx: Tx) -> tuple[list[Rejection], list[Relay]]:
            keys: list[Key] = [(r.campaign, r.dev_id) for r in reports]
            reported = [s for s in statuses if s.fota_version or s.sota_version]
            if reported:
                keys += await tx.members_reaching_target(reported)
            rejected: list[Rejection] = []
            relays: list[Relay] = []
            if keys:
                members = await tx.lock_members(keys)
                # progress first: a device's 201 and its new version often share a batch,
                # and the step is the more precise record
                current, reasons, rejected, relays = apply_progress(
                    members, reports, time.time(), self.policy)
                apply_versions(members, current, reasons, reported)
                writes = [Write(k[0], k[1], members[k].rev, members[k].row.state, current[k],
                                "; ".join(reasons[k])[:500])
                          for k in reasons if current[k] != members[k].row]
                await tx.write_members(writes, "device", locked=True)
            if statuses:
                await tx.upsert_status(statuses)
            return rejected, relays

        rejected, relays = await self.db.run(write)
        if relays and self.relay is not None:
            self.relay(relays)
        return rejected
