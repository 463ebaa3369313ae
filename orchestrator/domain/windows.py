"""Maintenance windows, pure: weekly wall-clock intervals in a time zone ("Mon-Fri
01:00-05:00" in Asia/Shanghai), when they are open, when they next open or close, and how
much wall time a given amount of open time takes.

A window that ends at or before its start crosses midnight: "Fri 22:00-02:00" runs from
Friday 22:00 to Saturday 02:00 (the days name the day a window starts). Wall-clock times
follow the zone's daylight-saving rules: on a spring-forward day a window inside the gap does
not happen, on a fall-back day the repeated hour is open twice if the window covers it."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_RE = re.compile(r"^\s*(?P<days>[A-Za-z*,\- ]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*"
                        r"(?P<end>\d{1,2}:\d{2})\s*$")
MAX_WINDOWS = 32
UTC = dt.UTC


class BadWindow(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]      # 0 = Monday: the days the window starts on
    start: int                # minutes after local midnight, 0..1439
    end: int                  # 1..1440; <= start: ends on the next day

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


def _minutes(text: str, what: str, *, allow_24: bool) -> int:
    h, m = (int(x) for x in text.split(":"))
    if m > 59 or h > 24 or (h == 24 and (m or not allow_24)):
        raise BadWindow(f"window: {what} {text!r} is not a time of day (00:00-"
                        f"{'24:00' if allow_24 else '23:59'})")
    return h * 60 + m


def _days(text: str) -> frozenset[int]:
    text = text.strip().lower()
    if text in ("*", "daily", "every day"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        a, dash, b = part.partition("-")
        try:
            first = DAYS.index(a.strip()[:3]) if len(a.strip()) >= 3 else -1
            last = DAYS.index(b.strip()[:3]) if dash and len(b.strip()) >= 3 else first
        except ValueError:
            first = last = -1
        if first < 0 or last < 0:
            raise BadWindow(f"window: {part!r} is not a day or range of days (Mon..Sun, "
                            "e.g. Mon-Fri or Sat,Sun)")
        d = first
        out.add(d)
        while d != last:      # ranges may wrap: Fri-Mon
            d = (d + 1) % 7
            out.add(d)
    return frozenset(out)


def parse_window(text: str) -> Window:
    """``"Mon-Fri 01:00-05:00"``, ``"Sat,Sun 00:00-24:00"``, ``"daily 22:00-02:00"``."""
    m = WINDOW_RE.match(text) if isinstance(text, str) and len(text) <= 100 else None
    if m is None:
        raise BadWindow(f"window: {str(text)[:60]!r} is not like 'Mon-Fri 01:00-05:00'")
    start = _minutes(m["start"], "start", allow_24=False)
    end = _minutes(m["end"], "end", allow_24=True)
    if start == end:
        raise BadWindow(f"window: {text.strip()!r} starts and ends at the same time")
    return Window(_days(m["days"]), start, end)


def zone(name: str) -> ZoneInfo:
    try:
        if not isinstance(name, str) or not name or len(name) > 64 or ".." in name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadWindow(f"timezone: {str(name)[:64]!r} is not an IANA time zone "
                        "(e.g. Asia/Shanghai, UTC)") from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A campaign's windows in its zone; no windows: always open."""

    windows: tuple[Window, ...] = ()
    tz: dt.tzinfo = UTC

    @classmethod
    def parse(cls, texts: Iterable[str], timezone: str = "UTC") -> Schedule:
        texts = list(texts)
        if len(texts) > MAX_WINDOWS:
            raise BadWindow(f"window: at most {MAX_WINDOWS}")
        return cls(tuple(parse_window(t) for t in texts), zone(timezone))

    @property
    def always(self) -> bool:
        return not self.windows

    def is_open(self, t: float) -> bool:
        if not self.windows:
            return True
        local = dt.datetime.fromtimestamp(t, self.tz)
        day = local.weekday()
        minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
        for w in self.windows:
            if w.crosses_midnight:
                if (day in w.days and minute >= w.start) or \
                        ((day - 1) % 7 in w.days and minute < w.end):
                    return True
            elif day in w.days and w.start <= minute < w.end:
                return True
        return False

    def _boundaries(self, t: float) -> list[float]:
        """Every instant after ``t`` (within eight days) at which openness may change:
        each window's start and end mapped both ways through a repeated hour, and the
        zone's offset changes."""
        local = dt.datetime.fromtimestamp(t, self.tz)
        first = local.date() - dt.timedelta(days=1)
        out: set[float] = set()
        for i in range(10):
            day = first + dt.timedelta(days=i)
            midnight = dt.datetime.combine(day, dt.time(), self.tz)
            for w in self.windows:
                if day.weekday() not in w.days:
                    continue
                end_day_offset = 1 if w.crosses_midnight else 0
                for minutes, extra in ((w.start, 0), (w.end, end_day_offset)):
                    wall = (dt.datetime.combine(day, dt.time()) +
                            dt.timedelta(days=extra, minutes=minutes))
                    for fold in (0, 1):
                        out.add(wall.replace(tzinfo=self.tz, fold=fold).timestamp())
            out.update(_offset_changes(self.tz, midnight.timestamp(),
                                       midnight.timestamp() + 86400.0))
        return sorted(x for x in out if x > t)

    def next_change(self, t: float, to_open: bool) -> float | None:
        """The first instant >= ``t`` at which the schedule is open (``to_open``) or
        closed; None if that does not happen within a week."""
        if self.is_open(t) == to_open:
            return t
        if not self.windows:
            return None
        for b in self._boundaries(t):
            if self.is_open(b) == to_open:
                return b
        return None

    def next_open(self, t: float) -> float | None:
        return self.next_change(t, True)

    def advance(self, t: float, open_seconds: float) -> float | None:
        """The instant by which ``open_seconds`` of open time have passed from ``t``
        (None: the windows never open)."""
        if not self.windows:
            return t + open_seconds
        left = open_seconds
        for _ in range(10_000):
            start = self.next_open(t)
            if start is None:
                return None
            end = self.next_change(start, False)
            if end is None:          # open for good (a window covering the whole week)
                return start + left
            if end - start >= left:
                return start + left
            left -= end - start
            t = end
        return None


NEVER = Schedule((Window(frozenset(), 0, 1),))     # a window on no day: never open


def _offset_changes(tz: dt.tzinfo, a: float, b: float) -> list[float]:
    """Instants in (a, b] where the zone's UTC offset changes (to the second)."""
    def offset(x: float) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(x, tz).utcoffset()

    if offset(a) == offset(b):
        return []
    lo, hi = a, b
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        if offset(mid) == offset(a):
            lo = mid
        else:
            hi = mid
    return [float(int(hi))] if offset(float(int(hi))) != offset(a) else [float(int(hi) + 1)]

