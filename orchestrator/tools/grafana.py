"""The provisioned Grafana board's panels, and Grafana's PostgreSQL macros as Grafana expands
them, so tests and ``bench scale`` run every panel's SQL without Grafana."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]     # the checkout: deploy/ is not packaged
BOARD = ROOT / "deploy" / "grafana" / "dashboards" / "orchestrator.json"


def panels() -> list[dict[str, Any]]:
    board: dict[str, Any] = json.loads(BOARD.read_text())
    return list(board["panels"])


def grafana_sql(sql: str, campaign: int, start: dt.datetime, end: dt.datetime) -> str:
    """Grafana's PostgreSQL macros as Grafana expands them, and the campaign variable."""
    def group(m: re.Match[str], alias: bool) -> str:
        unit = {"s": 1, "m": 60, "h": 3600}[m[3]]
        seconds = int(m[2]) * unit
        expr = f"floor(extract(epoch from {m[1]})/{seconds})*{seconds}"
        return expr + (' AS "time"' if alias else "")

    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*'(\d+)([smh])'\)",
                 lambda m: group(m, True), sql)
    sql = re.sub(r"\$__timeGroup\((\w+),\s*'(\d+)([smh])'\)", lambda m: group(m, False), sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m[1]} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql)
    sql = sql.replace("$campaign", str(campaign))
    if "$" in sql:
        raise ValueError(f"a Grafana macro or variable left unexpanded: {sql}")
    return sql
