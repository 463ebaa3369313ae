"""What the status page shows (read from the dashboards' stable views), with what each live
campaign waits on and the devices it waits on for signal or power."""

from __future__ import annotations

from typing import Any

from orchestrator.store.db import Connection
from orchestrator.store.status import page_data as _page_data
from orchestrator.usecases.campaigns import describe_outlook, describe_waits, gate_outlook, waits


async def page_data(conn: Connection) -> dict[str, Any]:
    data = await _page_data(conn)
    for c in data["campaigns"]:
        if c["status"] in ("running", "paused"):
            c["waits"] = describe_waits(await waits(conn, c["campaign_id"]))
            c["radio"] = describe_outlook(await gate_outlook(conn, c["campaign_id"],
                                                             cells=False))
    return data


__all__ = ["page_data"]
