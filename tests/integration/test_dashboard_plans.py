"""At a million enrolled devices, no panel of the board and no query of the status page
reads campaign_devices or the event log sequentially."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from grafana import grafana_sql, panels
from orchestrator.domain.campaign import CampaignSpec
from orchestrator.store.queries import q
from orchestrator.usecases.campaigns import create as create_campaign

N = 1_000_000
SEQ = re.compile(r"Seq Scan on (campaign_devices|events\w*)")


async def test_no_panel_scans_a_million_devices_or_the_event_log(pool: Any) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ota.devices (dev_id, manuf, model, fota_version, signal, power,"
            " status_at, last_seen) SELECT g, 'China Mobile', 'M5310', '1.2', 20, 80, now(),"
            " now() FROM generate_series(1, $1::bigint) g", N)
        cid = await create_campaign(conn, CampaignSpec("big", "fota", "1.3", all_devices=True,
                                                       waves=(1, 10, 100)))
        # an hour into it: 60% succeeded, 1% failed, 0.1% unreachable, events to match
        await conn.execute(
            "UPDATE ota.campaign_devices SET state = CASE WHEN dev_id % 1000 = 0 THEN"
            " 'unreachable' WHEN dev_id % 100 = 0 THEN 'failed' WHEN dev_id % 10 < 6 THEN"
            " 'succeeded' ELSE state END, last_errno = CASE WHEN dev_id % 100 = 0 THEN 8 END"
            " WHERE campaign_id = $1", cid)
        await conn.execute(
            "INSERT INTO ota.events (at, campaign_id, dev_id, kind, from_state, to_state,"
            " reason, actor) SELECT now() - make_interval(secs => g % 3600), $1, g,"
            " 'transition', 'upgrading', CASE WHEN g % 100 = 0 THEN 'failed'"
            " WHEN g % 7 = 0 THEN 'gated' ELSE 'succeeded' END, 'gate: low_signal', 'x'"
            " FROM generate_series(1, $2::bigint) g", cid, N)
        for other in range(2, 6):     # other campaigns' history beside it
            await conn.execute(
                "INSERT INTO ota.events (at, campaign_id, kind, reason) SELECT"
                " now() - make_interval(secs => g), $1, 'transition', 'x'"
                " FROM generate_series(1, 20000) g", cid + other)
        await conn.execute("ANALYZE")
        await conn.fetchval(q("counts_fold"))
        now = dt.datetime.now(dt.UTC)
        queries = {p["title"]: grafana_sql(p["targets"][0]["rawSql"], cid,
                                           now - dt.timedelta(hours=6), now)
                   for p in panels()}
        queries["status_waves"] = q("status_waves").replace("$1", f"ARRAY[{cid}]::bigint[]")
        queries["status_failures"] = q("status_failures").replace(
            "$1", f"ARRAY[{cid}]::bigint[]").replace("$2", "5")
        queries["status_events"] = q("status_events").replace("$1", str(cid)).replace(
            "$2", "8")
        queries["status_campaigns"] = q("status_campaigns").replace("$1", "20")
        for title, sql in queries.items():
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql))
            assert not SEQ.search(plan), f"{title}:\n{plan}"
