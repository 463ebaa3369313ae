"""The southbound client: check (POST JSON or GET), version and progress reports, token
validation. One ``aiohttp.ClientSession`` per process, explicit timeouts, bounded
concurrency, a circuit breaker. Every answer becomes a typed outcome; nothing raises out.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from orchestrator.config import Settings
from orchestrator.domain.catalogue import UnknownModule, resolve
from orchestrator.domain.onenet import (
    MAX_ANSWER,
    CheckOutcome,
    CheckRequest,
    Failed,
    ProtocolError,
    Retryable,
    authorization,
    parse_check_response,
    parse_errno_answer,
    printable,
)
from orchestrator.domain.payloads import INT64_MAX
from orchestrator.domain.resilience import Breaker
from orchestrator.domain.versions import is_valid_version

log = structlog.get_logger(__name__)


class TokenSource:
    """The Authorization value: fixed, or generated from product id + access key and renewed
    ``margin`` seconds before its expiry."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 lifetime: int = 3600, margin: int = 300) -> None:
        self.fixed = settings.onenet_authorization
        self.product_id = settings.onenet_product_id
        self.access_key = settings.onenet_access_key
        self.method = settings.onenet_sign_method
        self.clock = clock
        self.lifetime = lifetime
        self.margin = margin
        self._value: str | None = None
        self._et = 0

    def header(self) -> str | None:
        if self.fixed:
            return self.fixed
        if not (self.product_id and self.access_key):
            return None
        now = self.clock()
        if self._value is None or now >= self._et - self.margin:
            self._et = int(now) + self.lifetime
            self._value = authorization(self.product_id, self.access_key, self._et, self.method)
        return self._value


def validate_request(req: CheckRequest, send: str) -> tuple[dict[str, Any], Failed | None]:
    """The JSON body of a check, or the local refusal the platform would have answered."""
    if not 0 < req.dev_id <= INT64_MAX:
        return {}, Failed(2, f"dev_id {req.dev_id} out of range", local=True)
    if req.type not in (1, 2):
        return {}, Failed(2, f"type {req.type} is neither 1 (fota) nor 2 (sota)", local=True)
    if not is_valid_version(req.version):
        return {}, Failed(27, f"version {req.version[:40]!r} is not [A-Za-z0-9_-.]{{1,20}}",
                          local=True)
    try:
        module = resolve(req.manuf, req.model)
    except UnknownModule as exc:
        return {}, Failed(2, str(exc), local=True)
    body: dict[str, Any] = {
        "dev_id": req.dev_id, "manuf": module.manuf(send), "model": module.model(send),
        "type": req.type, "version": req.version, "cdn": req.cdn,
    }
    if req.signals is not None:
        body["signals"] = req.signals
    if req.powers is not None:
        body["powers"] = req.powers
    return body, None


class OneNetClient:
    def __init__(self, settings: Settings, *, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 breaker: Breaker | None = None) -> None:
        self.settings = settings
        self.base = settings.onenet_url.rstrip("/")
        self._check_url = f"{self.base}/ota/south/check"
        self._check_get = settings.onenet_check_method == "GET"
        self.tokens = TokenSource(settings)
        self.clock = clock
        self.breaker = breaker or Breaker()
        self._session = session
        self._own_session = session is None
        self._headers_by_kind: dict[bool, tuple[str | None, dict[str, str]]] = {}
        self._sem = asyncio.Semaphore(settings.onenet_concurrency)
        self.timeout = aiohttp.ClientTimeout(total=settings.onenet_timeout,
                                             connect=min(5.0, settings.onenet_timeout))
        # our own session carries the timeout; a session handed in gets it per request
        self._per_request: dict[str, Any] = {} if session is None else {"timeout": self.timeout}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls = ssl.create_default_context(cafile=self.settings.onenet_ca_file) \
                if self.settings.onenet_ca_file else None
            connector = aiohttp.TCPConnector(limit=self.settings.onenet_concurrency,
                                             ssl=tls if tls is not None else True)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> OneNetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _headers(self, json_body: bool = True) -> dict[str, str]:
        """The request headers, built again only when the token changes."""
        value = self.tokens.header()
        cached = self._headers_by_kind.get(json_body)
        if cached is None or cached[0] != value:
            headers = {"Content-Type": "application/json"} if json_body else {}
            if value:
                headers["Authorization"] = value
            cached = self._headers_by_kind[json_body] = (value, headers)
        return cached[1]

    def breaker_open(self) -> bool:
        return self.breaker.is_open(self.clock())

    async def check(self, req: CheckRequest) -> CheckOutcome:
        body, refused = validate_request(req, self.settings.onenet_send)
        if refused is not None:
            return refused
        allowed, self.breaker = self.breaker.allow(self.clock())
        if not allowed:
            return Retryable("breaker_open", "check endpoint failing; calls paused")
        outcome = await self._check_call(body)
        failed = isinstance(outcome, Retryable | ProtocolError)
        before = self.breaker
        self.breaker = self.breaker.record(not failed, self.clock())
        if self.breaker.opened > before.opened:      # a transition, not every call
            log.warning("onenet check endpoint failing: calls paused", url=self._check_url,
                        failures=self.breaker.failures, last=str(outcome)[:200],
                        paused_for=round(self.breaker.open_until - self.clock(), 1))
        elif before.failures >= before.threshold and self.breaker.failures == 0:
            log.info("onenet check endpoint answering again: calls resumed",
                     url=self._check_url)
        return outcome

    async def _check_call(self, body: dict[str, Any]) -> CheckOutcome:
        url = self._check_url
        try:
            async with self._sem:
                if self._check_get:
                    params = {k: (str(v).lower() if isinstance(v, bool) else str(v))
                              for k, v in body.items()}
                    ctx = self.session.get(url, params=params, headers=self._headers(False),
                                           **self._per_request)
                else:
                    ctx = self.session.post(url, data=orjson.dumps(body),
                                            headers=self._headers(), **self._per_request)
                async with ctx as resp:
                    data = await resp.content.read(MAX_ANSWER + 1)
                    if len(data) > MAX_ANSWER:
                        return ProtocolError(f"answer larger than {MAX_ANSWER} bytes")
                    return parse_check_response(resp.status, data)
        except TimeoutError:
            return Retryable("timeout", f"no answer within {self.settings.onenet_timeout}s")
        except (aiohttp.ClientError, OSError) as exc:
            return Retryable("transport", printable(f"{type(exc).__name__}: {exc}"))

    async def _errno_call(self, method: str, path: str, *, params: dict[str, str],
                          json_body: Any = None) -> int | None:
        try:
            async with self._sem, self.session.request(
                    method, f"{self.base}{path}", params=params, json=json_body,
                    headers=self._headers(json_body is not None),
                    **self._per_request) as resp:
                return parse_errno_answer(resp.status, await resp.content.read(MAX_ANSWER))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("onenet call failed", path=path.split("/")[1:4], error=str(exc)[:200])
            return None

    async def report_version(self, dev_id: int, f_version: str | None = None,
                             s_version: str | None = None) -> int | None:
        """``POST /ota/device/version``: errno, or None when the call failed."""
        body = {k: v for k, v in (("f_version", f_version), ("s_version", s_version)) if v}
        return await self._errno_call("POST", "/ota/device/version",
                                      params={"dev_id": str(dev_id)}, json_body=body)

    async def report_progress(self, token: str, dev_id: int, step: int) -> int | None:
        """``POST /ota/south/device/download/{token}/progress``."""
        return await self._errno_call(
            "POST", f"/ota/south/device/download/{token}/progress",
            params={"dev_id": str(dev_id)}, json_body={"step": step})

    async def check_token(self, token: str, dev_id: int) -> int | None:
        """``GET /ota/south/download/{token}/check``: 0 valid, 4, 7, 12, 17, 20, 21, 22."""
        return await self._errno_call("GET", f"/ota/south/download/{token}/check",
                                      params={"dev_id": str(dev_id)})
