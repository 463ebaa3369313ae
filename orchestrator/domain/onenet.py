"""OneNET OTA southbound vocabulary, pure: the check answer's types and how to read them,
and the Authorization token algorithm (the client's side; the platform's side is in
``orchestrator.sim.auth``).

The authority is the seed (``shared/seed/000_4904d9e5834586b6.txt``); ``onenet-ota.md``
restates it with the sibling calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any, Literal

import msgspec
import orjson

from orchestrator.domain.versions import VERSION_RE

IP_PORT = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?")
MAX_ANSWER = 1024 * 1024      # bytes of a check answer we read at most

FOTA, SOTA = 1, 2
TYPE_CODES = {"fota": FOTA, "sota": SOTA}
FULL_PACKAGE, DIFF_PACKAGE = 1, 2

ERRNO_TEXT = {
    0: "succ",
    1: "authentication failed (or the device does not exist)",
    2: "request parameter error",
    7: "OneNET internal error",
    8: "task failed: manuf or model inconsistent",
    9: "task failed: version inconsistent (differential package)",
    11: "no upgrade task for this type",
    27: "version number format error",
    32: "task exists but no matching differential package (no reported version)",
}
ERRNO_ACTION = {
    0: "gate on signal and power, then command the upgrade",
    1: "device failed (not retried)",
    2: "device failed (not retried)",
    7: "retried with backoff on its own budget; the breaker opens if it persists",
    8: "device failed (not retried)",
    9: "device failed (not retried)",
    11: "device ends no_task",
    27: "device failed (not retried)",
    32: "device failed (not retried)",
}
TERMINAL_ERRNOS = frozenset({1, 2, 8, 9, 27, 32})
RETRYABLE_ERRNOS = frozenset({7})
NO_TASK = 11

# progress step codes (onenet-ota.md section 5)
DOWNLOAD_FAILED_STEPS = frozenset(range(102, 108))
INSTALL_FAILED_STEPS = frozenset(range(202, 207))
STEP_DOWNLOADED, STEP_SUCCEEDED = 101, 201


class Task(msgspec.Struct, frozen=True, gc=False):
    """The ``data`` of an errno-0 check answer."""

    target: str
    token: str
    size: int
    signal: int
    power: int
    retry: int
    interval: int
    md5: str
    type: int
    ip_port: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target, "token": self.token, "size": self.size,
            "signal": self.signal, "power": self.power, "retry": self.retry,
            "interval": self.interval, "md5": self.md5, "type": self.type,
        }
        if self.ip_port is not None:
            out["ipPort"] = self.ip_port
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        """The stored form back (the same reading and checks as a check answer's)."""
        return parse_task(data)


class TaskFound(msgspec.Struct, frozen=True, gc=False):
    task: Task
    kind: Literal["task"] = "task"


class NoTask(msgspec.Struct, frozen=True, gc=False):
    kind: Literal["no_task"] = "no_task"

    @property
    def errno(self) -> int:
        return NO_TASK


class Failed(msgspec.Struct, frozen=True, gc=False):
    """A terminal answer for this device (errno 1, 2, 8, 9, 27, 32), or a local refusal
    before any call (``local=True``), which carries the errno the platform would give."""

    errno: int
    error: str
    local: bool = False
    kind: Literal["failed"] = "failed"


class Retryable(msgspec.Struct, frozen=True, gc=False):
    """Try again later: errno 7, a timeout, a transport error, a 5xx, an open breaker."""

    reason: str
    detail: str
    errno: int | None = None
    kind: Literal["retry"] = "retry"


class ProtocolError(msgspec.Struct, frozen=True, gc=False):
    """The endpoint answered something that is not the documented API (never a guessed task)."""

    detail: str
    kind: Literal["protocol"] = "protocol"


CheckOutcome = TaskFound | NoTask | Failed | Retryable | ProtocolError


class CheckRequest(msgspec.Struct, frozen=True, gc=False):
    """What the orchestrator asks ``/ota/south/check`` for one device."""

    dev_id: int
    manuf: str
    model: str
    type: int
    version: str
    cdn: bool = True
    signals: int | None = None
    powers: int | None = None


def local_refusal(manuf: str | None, model: str | None, version: str | None,
                  kind: str) -> Failed | None:
    """Why a device cannot be checked at all (the errno the platform would answer), or
    None: it has not reported its manufacturer and model, or its version."""
    if not manuf or not model:
        return Failed(2, "device has not reported its manufacturer and model", local=True)
    if not version:
        return Failed(27, f"device has not reported its {kind} version", local=True)
    return None


def outcome_errno(outcome: CheckOutcome) -> int:
    """The errno label for metrics and ``ota.check_outcomes`` (-1: no errno was answered)."""
    if isinstance(outcome, TaskFound):
        return 0
    if isinstance(outcome, NoTask):
        return NO_TASK
    if isinstance(outcome, Failed):
        return outcome.errno
    if isinstance(outcome, Retryable) and outcome.errno is not None:
        return outcome.errno
    return -1


# (JSON key, type): JSON decoding gives exactly these types, so ``type(v) is kind`` is the
# whole check (a bool is not an int here). The common case, every field right, is one
# tuple comparison made in C; the loop that names the wrong field runs only on a bad answer.
_TASK_FIELDS = (("target", str), ("token", str), ("size", int), ("signal", int),
                ("power", int), ("retry", int), ("interval", int), ("md5", str), ("type", int))
_TASK_KEYS = tuple(key for key, _ in _TASK_FIELDS)
_TASK_KINDS = tuple(kind for _, kind in _TASK_FIELDS)


def parse_task(data: Any) -> Task:
    if not isinstance(data, dict):
        raise ValueError(f"data: expected an object, got {type(data).__name__}")
    values: tuple[Any, ...] = tuple(map(data.get, _TASK_KEYS))
    if tuple(map(type, values)) != _TASK_KINDS:
        for (key, kind), value in zip(_TASK_FIELDS, values, strict=True):
            if type(value) is not kind:
                raise ValueError(f"data.{key}: expected "
                                 f"{'an integer' if kind is int else 'str'}, got {value!r:.40}")
    target, token, size, signal, power, retry, interval, md5, package = values
    ip_port = data.get("ipPort")
    if ip_port is not None and type(ip_port) is not str:
        raise ValueError(f"data.ipPort: expected str, got {ip_port!r:.40}")
    if VERSION_RE.fullmatch(target) is None:
        raise ValueError(f"data.target: {target[:40]!r} is not a valid version")
    if not token or "/" in token or "?" in token or "#" in token or len(token) > 256:
        raise ValueError("data.token: empty or not a path segment")
    if size < 0 or retry < 0 or interval < 0:
        raise ValueError("data: size, retry and interval must be >= 0")
    if package not in (FULL_PACKAGE, DIFF_PACKAGE):
        raise ValueError(f"data.type: {package} is neither 1 nor 2")
    if ip_port is not None and not IP_PORT.fullmatch(ip_port):
        # it becomes the host of the device's download URL: host[:port], nothing else
        raise ValueError(f"data.ipPort: {ip_port[:60]!r} is not host[:port]")
    return Task(target, token, size, signal, power, retry, interval, md5, package, ip_port)


# control characters (NUL among them, which PostgreSQL's text refuses) in text an endpoint
# chose, before it is stored or logged
_CONTROLS = dict.fromkeys((*range(32), *range(127, 160)), "�")
MAX_TEXT = 200


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """An endpoint's free text as we keep it: at most ``limit`` characters, control
    characters replaced by U+FFFD."""
    return text[:limit].translate(_CONTROLS)


def parse_check_response(status: int, body: bytes) -> CheckOutcome:
    """Map an HTTP answer of ``/ota/south/check`` to an outcome. Never raises."""
    if status >= 500 or status == 429:
        return Retryable("http", f"HTTP {status}")
    if status != 200:
        return ProtocolError(f"HTTP {status}")
    try:
        doc = orjson.loads(body)
    except (ValueError, RecursionError):
        return ProtocolError(f"body is not JSON: {body[:60]!r}")
    if not isinstance(doc, dict):
        return ProtocolError(f"body is a JSON {type(doc).__name__}, not an object")
    errno = doc.get("errno")
    if isinstance(errno, bool) or not isinstance(errno, int):
        return ProtocolError(f"errno missing or not an integer: {errno!r:.40}")
    if errno == 0:
        try:
            return TaskFound(parse_task(doc.get("data")))
        except (ValueError, KeyError, TypeError) as exc:
            return ProtocolError(f"errno 0 without a valid task: {exc}")
    if errno == NO_TASK:
        return NoTask()
    error = doc.get("error")
    error_text = printable(error) if isinstance(error, str) else ERRNO_TEXT.get(errno, "")
    if errno in RETRYABLE_ERRNOS:
        return Retryable("errno", error_text or ERRNO_TEXT[7], errno=errno)
    if errno in TERMINAL_ERRNOS:
        return Failed(errno, error_text or ERRNO_TEXT[errno])
    return ProtocolError(f"undocumented errno {errno}")


def parse_errno_answer(status: int, body: bytes) -> int | None:
    """The errno of a sibling call's JSON answer, or None when there is none."""
    if status != 200:
        return None
    try:
        doc = orjson.loads(body)
    except (ValueError, RecursionError):
        return None
    errno = doc.get("errno") if isinstance(doc, dict) else None
    return errno if isinstance(errno, int) and not isinstance(errno, bool) else None


# --- Authorization (onenet-ota.md section 6) -----------------------------------------------

TOKEN_VERSION = "2018-10-31"
SIGN_METHODS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}
ESCAPES = {"+": "%2B", " ": "%20", "/": "%2F", "?": "%3F", "%": "%25", "#": "%23",
            "&": "%26", "=": "%3D"}


def quote_value(value: str) -> str:
    """Percent-encode only ``+ space / ? % # & =``, as OneNET's token format wants."""
    return "".join(ESCAPES.get(c, c) for c in value)


def sign(access_key: str, res: str, et: int, method: str, version: str = TOKEN_VERSION) -> str:
    """``base64(HMAC_method(base64decode(key), et\\nmethod\\nres\\nversion))``."""
    if method not in SIGN_METHODS:
        raise ValueError(f"sign method must be one of {', '.join(SIGN_METHODS)}")
    key = base64.b64decode(access_key)
    text = f"{et}\n{method}\n{res}\n{version}".encode()
    return base64.b64encode(hmac.new(key, text, SIGN_METHODS[method]).digest()).decode()


def authorization(product_id: str, access_key: str, et: int, method: str = "sha256") -> str:
    res = f"products/{product_id}"
    signature = sign(access_key, res, et, method)
    return (f"version={TOKEN_VERSION}&res={quote_value(res)}&et={et}&method={method}"
            f"&sign={quote_value(signature)}")
