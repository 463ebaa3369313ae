"""What the status page shows, read from the stable views in a handful of queries."""

from __future__ import annotations

from typing import Any

from orchestrator.store.db import Connection
from orchestrator.store.queries import q

CAMPAIGNS = 20
FAILURES = 5
EVENTS = 8


async def page_data(conn: Connection) -> dict[str, Any]:
    """Campaigns (live first) with their waves, top failure reasons and last events, and
    the fleet's in-flight count against its cap."""
    campaigns = [dict(r.items()) for r in await conn.fetch(q("status_campaigns"), CAMPAIGNS)]
    ids = [c["campaign_id"] for c in campaigns]
    waves: dict[int, list[dict[str, Any]]] = {}
    for r in await conn.fetch(q("status_waves"), ids):
        waves.setdefault(r["campaign_id"], []).append(dict(r.items()))
    failures: dict[int, list[dict[str, Any]]] = {}
    for r in await conn.fetch(q("status_failures"), ids, FAILURES):
        failures.setdefault(r["campaign_id"], []).append(dict(r.items()))
    for c in campaigns:
        cid = c["campaign_id"]
        c["waves"] = waves.get(cid, [])
        c["failures"] = failures.get(cid, [])
        c["events"] = [dict(r.items()) for r in
                       await conn.fetch(q("status_events"), cid, EVENTS)]
    fleet = await conn.fetchrow(q("status_fleet"))
    return {"campaigns": campaigns, "fleet": dict(fleet.items()) if fleet else {}}
