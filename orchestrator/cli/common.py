"""What every command group shares: the usage error, a database connection per command,
and output (tables, JSON, the live progress view shared by ``campaign watch`` and the
demo)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO, TypeVar

from orchestrator.config import Settings
from orchestrator.domain.campaign import Campaign
from orchestrator.domain.rollout import COUNT_STATES
from orchestrator.usecases.common import Connection, connection

T = TypeVar("T")
BAR_STATES = COUNT_STATES


class UsageError(Exception):
    """Bad input from the operator: printed as one line, exit 2."""


async def with_conn(settings: Settings, fn: Callable[[Connection], Awaitable[T]]) -> T:
    """``fn`` with a connection of its own (database errors leave as the port's)."""
    async with connection(settings.require_database()) as conn:
        return await fn(conn)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def render(campaign: Campaign, width: int = 40, waits: str | None = None) -> list[str]:
    """A campaign as a header line, one bar per state, its pace, and what it waits on."""
    total = max(campaign.counts.total, 1)
    lines = [f"campaign {campaign.campaign_id} {campaign.name!r} [{campaign.status}]"
             f" wave {campaign.current_wave + 1}/{len(campaign.waves)}"
             + (f" — {campaign.status_reason}" if campaign.status_reason else "")]
    for state in BAR_STATES:
        n = getattr(campaign.counts, state)
        filled = round(width * n / total)
        lines.append(f"  {state:12} {'#' * filled}{'.' * (width - filled)} {n:>8} "
                     f"{100.0 * n / total:5.1f}%")
    lines.append("  " + pace_line(campaign))
    if waits:
        lines.append("  " + waits)
    return lines


def pace_line(campaign: Campaign) -> str:
    """Remaining devices, the measured rate and the ETA (as the views show them), or why
    there is no ETA."""
    rate = campaign.rate_per_min
    eta = campaign.eta_at
    if campaign.status not in ("running", "paused"):
        when = "-"
    elif eta is None:
        when = f"- ({campaign.eta_note})" if campaign.eta_note else "-"
    else:
        when = eta.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return (f"remaining {campaign.counts.open:,}  rate "
            + ("-" if rate is None else f"{rate:.1f}/min") + f"  eta {when}")


class LiveView:
    """Redraws a campaign in place on a terminal; elsewhere prints a snapshot every
    ``every`` seconds and the last one."""

    def __init__(self, out: TextIO | None = None, every: float = 10.0) -> None:
        self.out = out or sys.stdout
        self.tty = getattr(self.out, "isatty", lambda: False)()
        self.every = every
        self._drawn = 0
        self._last = 0.0

    def show(self, campaign: Campaign, final: bool = False, waits: str | None = None) -> None:
        lines = render(campaign, waits=waits)
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")
            self.out.write("".join(f"{line}\x1b[K\n" for line in lines))
            self.out.flush()
            self._drawn = len(lines)
        elif final or time.monotonic() - self._last >= self.every:
            print("\n".join(lines), file=self.out, flush=True)
            self._last = time.monotonic()
