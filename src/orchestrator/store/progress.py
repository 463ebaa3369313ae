"""Applying device messages to campaign membership, batched, through the domain's
transitions: progress steps, and status reports that reach the target version."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.engine import Policy, on_progress, on_version
from orchestrator.domain.payloads import ProgressReport, Rejection, StatusReport
from orchestrator.store import campaigns as store
from orchestrator.store.campaigns import Write


@dataclass(frozen=True, slots=True)
class Relay:
    """A progress step to pass on to OneNET's progress endpoint."""

    token: str
    dev_id: int
    step: int


async def apply_progress(conn: Any, reports: Sequence[ProgressReport], policy: Policy
                         ) -> tuple[list[Rejection], list[Relay]]:
    """Apply each report, in arrival order, to its (campaign, device) row."""
    rows = await store.read_rows(conn, [(r.campaign, r.dev_id) for r in reports])
    current = {k: store.device_row(r) for k, r in rows.items()}
    first_state = {k: v.state for k, v in current.items()}
    reasons: dict[tuple[int, int], list[str]] = {}
    rejected: list[Rejection] = []
    relays: list[Relay] = []
    now = time.time()
    for r in reports:
        key = (r.campaign, r.dev_id)
        row = current.get(key)
        if row is None:
            rejected.append(Rejection("unknown_campaign", f"device {r.dev_id} is not in "
                                      f"campaign {r.campaign}", f"{r.dev_id}/progress"))
            continue
        decision = on_progress(row, r.step, now, policy)
        if r.version is not None and decision.row.state != "succeeded":
            target = rows[key]["target_version"]
            by_version = on_version(decision.row, r.version, target)
            if by_version.row.state == "succeeded":
                decision = by_version
        if row.task is not None:   # what the device did, whatever we decided of it
            relays.append(Relay(row.task.token, r.dev_id, r.step))
        current[key] = decision.row
        reasons.setdefault(key, []).append(decision.reason)
    writes = [Write(k[0], k[1], rows[k]["rev"], first_state[k], current[k],
                    "; ".join(reasons[k])[:500])
              for k in reasons if current[k] != store.device_row(rows[k])]
    await store.write_rows(conn, writes, "device")
    return rejected, relays


async def complete_by_version(conn: Any, statuses: Sequence[StatusReport]) -> int:
    """A status whose version equals an open campaign's target completes that device."""
    reported = [s for s in statuses if s.fota_version or s.sota_version]
    if not reported:
        return 0
    keys = await conn.fetch(
        """SELECT cd.campaign_id, cd.dev_id
           FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(dev_id, fota, sota)
           JOIN ota.campaign_devices cd ON cd.dev_id = u.dev_id
           JOIN ota.campaigns c ON c.campaign_id = cd.campaign_id
           WHERE cd.state = ANY($4)
             AND ((c.type = 'fota' AND u.fota = c.target_version)
                  OR (c.type = 'sota' AND u.sota = c.target_version))""",
        [s.dev_id for s in reported], [s.fota_version for s in reported],
        [s.sota_version for s in reported], store.NON_TERMINAL)
    if not keys:
        return 0
    rows = await store.read_rows(conn, [(k["campaign_id"], k["dev_id"]) for k in keys])
    versions = {s.dev_id: s for s in reported}
    writes = []
    for key, r in rows.items():
        s = versions[key[1]]
        version = s.fota_version if r["type"] == "fota" else s.sota_version
        decision = on_version(store.device_row(r), version or "", r["target_version"])
        if decision.row.state == "succeeded":
            writes.append(Write(key[0], key[1], r["rev"], r["state"], decision.row,
                                decision.reason))
    return len(await store.write_rows(conn, writes, "device"))
