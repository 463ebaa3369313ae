"""The status page (``GET /``): server-rendered HTML, no scripts, no assets from anywhere,
refreshing itself. Every number carries ``data-campaign``/``data-field`` so a test (or a
scraper) reads exactly what a person sees."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

REFRESH_SECONDS = 5
BAR = (("succeeded", "#2e7d32"), ("failed", "#c62828"), ("no_task", "#9e9e9e"),
       ("unreachable", "#ef6c00"), ("cancelled", "#616161"), ("in_progress", "#1565c0"),
       ("pending", "#cfd8dc"))
COUNTS = ("total", "pending", "in_progress", "succeeded", "failed", "no_task", "cancelled",
          "unreachable", "remaining")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:0}
.meta{color:#666;margin-bottom:16px}
.c{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:0 0 14px}
.bar{display:flex;height:14px;border-radius:3px;overflow:hidden;background:#eceff1;margin:8px 0}
.bar span{display:block;height:100%}
table{border-collapse:collapse;margin:6px 0} td,th{padding:2px 10px 2px 0;text-align:left}
th{color:#555;font-weight:600} .num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:0 6px;border-radius:3px;background:#e3f2fd;margin-left:6px}
.cols{display:flex;gap:28px;flex-wrap:wrap} small{color:#666}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _num(cid: int, field: str, value: Any) -> str:
    return (f'<td class="num" data-campaign="{cid}" data-field="{field}">'
            f"{escape(_fmt(value))}</td>")


def _move(e: dict[str, Any]) -> str:
    if not e["from_state"] and not e["to_state"]:
        return ""
    return f"{e['from_state'] or ''}→{e['to_state'] or ''}"


def _bar(c: dict[str, Any]) -> str:
    total = max(int(c["total"]), 1)
    parts = "".join(
        f'<span title="{state}: {c[state]}" style="width:{100.0 * c[state] / total:.3f}%;'
        f'background:{color}"></span>' for state, color in BAR if c[state])
    return f'<div class="bar" role="img" aria-label="progress">{parts}</div>'


def _campaign(c: dict[str, Any]) -> str:
    cid = int(c["campaign_id"])
    head = (f'<h2>#{cid} {escape(c["name"])}<span class="status" data-campaign="{cid}" '
            f'data-field="status">{escape(c["status"])}</span></h2>'
            f'<small>{escape(c["type"])} → {escape(c["target_version"])} · wave '
            f'<span data-campaign="{cid}" data-field="current_wave">{c["current_wave"]}</span>'
            f' of {c["waves_total"]}</small>')
    if c.get("status_reason"):
        head += (f'<p data-campaign="{cid}" data-field="status_reason">'
                 f'{escape(c["status_reason"])}</p>')
    if c.get("waits"):
        head += f'<p data-campaign="{cid}" data-field="waits">{escape(c["waits"])}</p>'
    if c.get("radio"):
        head += (f'<p data-campaign="{cid}" data-field="radio">waiting for radio: '
                 f'{escape(c["radio"])}</p>')
    counts = ("<table><tr>" + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in COUNTS)
              + "</tr><tr>" + "".join(_num(cid, k, c[k]) for k in COUNTS) + "</tr></table>")
    live = c["status"] in ("running", "paused")
    eta: Any = c["eta_at"] if live else None
    if live and eta is None and c.get("eta_note"):
        eta = c["eta_note"]
    pace = ("<table><tr><th>rate / min</th><th>ETA</th>"
            "<th>in flight (commanded, downloading, upgrading)</th></tr><tr>"
            + _num(cid, "rate_per_min", c["rate_per_min"]) + _num(cid, "eta_at", eta)
            + _num(cid, "in_flight", c["in_flight"]) + "</tr></table>")
    waves = "<table><tr><th>wave</th><th>open</th><th>total</th><th>pending</th>" \
            "<th>in progress</th><th>succeeded</th><th>failed</th><th>unreachable</th>" \
            "</tr>" + "".join(
                f"<tr><td>{w['wave']}</td><td>{'yes' if w['opened'] else 'no'}</td>"
                f"<td class=num>{w['total']}</td><td class=num>{w['pending']}</td>"
                f"<td class=num>{w['in_progress']}</td><td class=num>{w['succeeded']}</td>"
                f"<td class=num>{w['failed']}</td><td class=num>{w['unreachable']}</td></tr>"
                for w in c["waves"]) + "</table>"
    failures = ("<table><tr><th>top failure reasons</th><th>devices</th></tr>" + "".join(
        f"<tr><td>{escape(f['reason'] or '')}</td><td class=num>{f['devices']}</td></tr>"
        for f in c["failures"]) + "</table>") if c["failures"] else "<p><small>no failures" \
        "</small></p>"
    events = "<table><tr><th>last events</th><th></th><th></th></tr>" + "".join(
        f"<tr><td><small>{escape(_fmt(e['at']))}</small></td>"
        f"<td>{'device ' + str(e['dev_id']) if e['dev_id'] else 'campaign'}</td>"
        f"<td>{escape(_move(e))} {escape((e['reason'] or '')[:120])}</td></tr>"
        for e in c["events"]) + "</table>"
    return (f'<section class="c" id="campaign-{cid}">{head}{_bar(c)}{counts}{pace}'
            f'<div class="cols"><div>{waves}</div><div>{failures}</div></div>{events}</section>')


def render(data: dict[str, Any], now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    fleet = data.get("fleet") or {}
    cap = fleet.get("max_in_flight")
    busy = int(fleet.get("in_flight") or 0) + int(fleet.get("checking") or 0)
    body = "".join(_campaign(c) for c in data["campaigns"]) or "<p>No campaigns yet.</p>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>OTA campaigns</title><style>{STYLE}</style></head><body>"
        "<h1>OTA campaigns</h1>"
        f'<div class="meta">updated {escape(_fmt(now))} · refreshes every {REFRESH_SECONDS} s'
        f' · checking or in flight, fleet-wide <b data-field="fleet_busy">{busy}</b>'
        f'{" of " + str(cap) if cap else ""}</div>'
        f"{body}</body></html>")
