"""The ingest sink: device messages applied to the record in one transaction per batch,
through the domain's transitions — progress steps, and status reports that reach a
campaign's target version. Every membership row the batch touches is locked once, in key
order, before anything is written (two replicas' batches cannot deadlock)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from orchestrator.domain.campaign import Write
from orchestrator.domain.device import Policy
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport, registers
from orchestrator.domain.progress import (
    Key,
    apply_heard,
    apply_progress,
    apply_versions,
    worth_an_event,
)
from orchestrator.domain.registry import canonical_modules
from orchestrator.ports import Database, IngestTx


class ProgressSink:
    """The port ``IngestSink``: one transaction per batch."""

    def __init__(self, db: Database, policy: Policy | None = None, *,
                 relay: bool = False, require_attempt: bool = True) -> None:
        self.db = db
        self.policy = policy or Policy()
        self.relay = relay      # queue progress steps for OneNET (ota.relays)
        self.require_attempt = require_attempt

    async def apply(self, statuses: Sequence[StatusReport],
                    reports: Sequence[ProgressReport]) -> Sequence[Rejection]:
        async def write(tx: IngestTx) -> list[Rejection]:
            keys: list[Key] = [(r.campaign, r.dev_id) for r in reports]
            reported = [s for s in statuses if s.fota_version or s.sota_version]
            if reported:
                keys += await tx.members_reaching_target(reported)
            if statuses:     # any word from an unreachable device puts it back in line
                keys += await tx.members_listening([s.dev_id for s in statuses])
            rejected: list[Rejection] = []
            upgraded: list[StatusReport] = []     # versions that accepted 201s name
            if keys:
                members = await tx.lock_members(keys)
                now = time.time()
                # progress first: a device's 201 and its new version often share a batch,
                # and the step is the more precise record
                current, reasons, rejected, relays = apply_progress(
                    members, reports, now, self.policy, self.require_attempt, upgraded)
                apply_versions(members, current, reasons, reported)
                apply_heard(members, current, reasons, statuses, now, self.policy)
                writes = [Write(k[0], k[1], members[k].rev, members[k].row.state, current[k],
                                "; ".join(reasons[k])[:500],
                                worth_an_event(members[k].row, current[k]))
                          for k in reasons if current[k] != members[k].row]
                await tx.write_members(writes, "device", locked=True)
                if self.relay:
                    await tx.add_relays(relays)
            if statuses:
                accepted, refused = await self._registry_hygiene(tx, statuses)
                rejected.extend(refused)
            else:
                accepted = []
            # the device's own status comes after its 201 in a batch: it wins (merged later)
            if upgraded or accepted:
                await tx.upsert_status([*upgraded, *accepted], self.policy.radio_period)
            return rejected

        return await self.db.run(write)

    @staticmethod
    async def _registry_hygiene(tx: IngestTx, statuses: Sequence[StatusReport]
                                ) -> tuple[list[StatusReport], list[Rejection]]:
        """Reports of devices the registry does not know are kept only when they register
        the device (manufacturer, model and a version); the rest are refused."""
        known = await tx.known_devices(sorted({s.dev_id for s in statuses}))
        by_dev: dict[int, list[StatusReport]] = {}
        for s in statuses:
            if s.dev_id not in known:
                by_dev.setdefault(s.dev_id, []).append(s)
        refused_ids = {d for d, reports in by_dev.items() if not registers(reports)}
        accepted = [s for s in statuses if s.dev_id not in refused_ids]
        refused = [Rejection("unknown_device", "a device's first status needs manuf, model and "
                             "a version", f"{s.dev_id}/status")
                   for s in statuses if s.dev_id in refused_ids]
        accepted, unknown = canonical_modules(accepted)
        refused += [Rejection("unknown_module", f"{s.manuf!r}/{s.model!r} is not in OneNET's "
                              "tables: registered, left out of campaigns", f"{s.dev_id}/status",
                              applied=True) for s in unknown]
        return accepted, refused
