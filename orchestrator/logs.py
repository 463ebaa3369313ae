"""structlog set-up: JSON off a terminal, console on one; stdlib loggers share the chain.

Secrets never leave: keys that look like credentials are masked, and DSN/URL passwords
and Authorization values inside strings are scrubbed.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|authorization|access_key|api_key)",
                          re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_AUTH_SIGN = re.compile(r"(sign=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)
_NOT_SECRET = {"token_expires_at", "tokens", "token_count"}


def scrub(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<pre>***@", text)
    text = _AUTH_SIGN.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


def _clean(key: str, value: Any, depth: int = 0) -> Any:
    if key not in _NOT_SECRET and _SECRET_KEYS.search(key) and value is not None:
        return "***"
    if isinstance(value, str):
        return scrub(value)
    if depth < 8 and isinstance(value, dict):
        return {k: _clean(str(k), v, depth + 1) for k, v in value.items()}
    if depth < 8 and isinstance(value, list | tuple):
        return [_clean(key, v, depth + 1) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask credential-looking keys and scrub strings, nested values included."""
    for key, value in list(event.items()):
        event[key] = _clean(key, value)
    return event


def scrub_rendered(_: Any, __: str, line: Any) -> Any:
    """The last step: scrub the rendered line itself, so a traceback or a repr formatted
    after ``redact`` ran is scrubbed too."""
    return scrub(line) if isinstance(line, str) else line


def configure(fmt: str | None = None, level: str = "info") -> None:
    """Configure structlog and the standard library once, at start-up."""
    if fmt is None:
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:-1], structlog.stdlib.ExtraAdder(), redact],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _identity,
            renderer,
            scrub_rendered,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it at WARNING unless asked
    logging.getLogger("mqtt").setLevel(max(logging.WARNING, root.level))


def _identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


class RateLimitedLog:
    """One warning per key per ``interval`` seconds, carrying how many were seen since the
    last one: an attacker who floods bad input cannot flood the log (metrics still count
    every one)."""

    def __init__(self, logger: Any, event: str, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.event = event
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, key: str, **fields: Any) -> bool:
        """Count one; log it (with the count) when this key's interval has passed."""
        self._count[key] = self._count.get(key, 0) + 1
        now = self.clock()
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        self.logger.warning(self.event, reason=key, count=self._count[key], **fields)
        self._last[key] = now
        self._count[key] = 0
        return True
