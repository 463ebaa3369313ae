"""Ops HTTP API under ``/api/v1`` (contract section 5), with health, readiness, metrics.

Who may do what: with ``ORCH_API_TOKEN`` set, every ``/api/v1`` route needs a bearer token
(``ORCH_API_READ_TOKEN``, if set, is enough for reads); without it reads are open and
mutations are refused unless the API listens on loopback. ``/healthz``, ``/readyz``,
``/metrics`` and the OpenAPI document stay open. Mutations need ``Content-Type:
application/json`` (so a browser cannot send one cross-site without a CORS preflight we never
grant); bodies are at most 1 MiB; every bad input is a 4xx naming the field, never a 500."""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.specs import FIELDS, spec_from_body
from orchestrator.api.status_page import render as render_status
from orchestrator.config import Settings
from orchestrator.domain.campaign import (
    NAME_RE,
    REASON_RE,
    STATUSES,
    TEXT_RE,
    CampaignConflict,
    CampaignError,
    CampaignNotFound,
)
from orchestrator.domain.device import RETRYABLE_STATES, STATES
from orchestrator.metrics import Metrics
from orchestrator.ports import DataRejected
from orchestrator.store import campaigns as store
from orchestrator.store import devices as device_store
from orchestrator.store import members
from orchestrator.store import status as status_store
from orchestrator.store.database import is_transient, translate
from orchestrator.store.db import Pool


@dataclass
class ApiState:
    settings: Settings
    pool: Pool
    metrics: Metrics
    ready: Callable[[], dict[str, bool]]


STATE: web.AppKey[ApiState] = web.AppKey("state", ApiState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad input is a 4xx naming the field; a database outage a 503; never a 5xx trace."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body: larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = _error(exc.status, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        raise
    except CampaignNotFound as exc:
        return _error(404, str(exc))
    except CampaignConflict as exc:
        return _error(409, str(exc))
    except CampaignError as exc:
        return _error(400, str(exc))
    except Exception as exc:
        if is_transient(exc):
            return _error(503, f"database unavailable: {type(exc).__name__}")
        if isinstance(translate(exc), DataRejected):
            # a value our checks let through and PostgreSQL does not (a bug to report, but
            # the caller's input all the same): a 400, never a 500
            return _error(400, f"input: refused by the database ({type(exc).__name__})")
        raise


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 1024 * 1024


def _bearer(request: web.Request) -> bytes | None:
    """The token of the request (scheme case-insensitive), or None: a bearer token, or the
    password of HTTP Basic credentials (what a browser sends for the status page)."""
    raw = request.headers.get("Authorization", "")
    scheme, _, token = raw.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "basic" and token:
        try:
            token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    if not token:
        return None
    try:
        return token.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return None


def _matches(given: bytes | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(
        given, expected.encode())


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS or request.method == "OPTIONS" \
            or request.match_info.http_exception is not None:
        return await handler(request)      # open, or a 404/405 with nothing to guard
    settings = request.app[STATE].settings
    mutating = request.method in MUTATING
    given = _bearer(request)
    if settings.api_token:
        if not (_matches(given, settings.api_token)
                or (not mutating and _matches(given, settings.api_read_token))):
            response = _error(401, "this route needs 'Authorization: Bearer <ORCH_API_TOKEN>'"
                              + ("" if mutating else " (or ORCH_API_READ_TOKEN)"))
            if request.path == "/":     # a browser asks for the token (as the password)
                response.headers["WWW-Authenticate"] = 'Basic realm="orchestrator"'
            return response
    elif mutating and not _loopback(settings.api_host):
        return _error(403, "set ORCH_API_TOKEN: without it mutating calls are refused unless "
                           "the API listens on loopback")
    if mutating and request.content_type != "application/json":
        return _error(415, "Content-Type: mutating calls need application/json")
    return await handler(request)


def _int(request: web.Request, name: str, default: int | None = None, *, lo: int = 0,
         hi: int = 2**63 - 1) -> int:
    raw = request.match_info.get(name) or request.query.get(name)
    if raw is None:
        if default is None:
            raise CampaignError(f"{name}: required")
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise CampaignError(f"{name}: expected an integer in [{lo}, {hi}], got {raw[:30]!r}")
    return int(raw)


def _signed(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    body = raw[1:] if raw[:1] == "-" else raw
    if not body.isascii() or not body.isdigit() or len(body) > 10 \
            or not -(2**31) <= int(raw) < 2**31:
        raise CampaignError(f"{name}: expected a 32-bit integer, got {raw[:30]!r}")
    return int(raw)


def _text(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is not None and not TEXT_RE.fullmatch(raw):
        raise CampaignError(f"{name}: 1-64 characters, no control characters")
    return raw


async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    checks = dict(request.app[STATE].ready())
    try:
        async with request.app[STATE].pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["database"] = True
    except Exception as exc:
        if not is_transient(exc):
            raise
        checks["database"] = False
    ok = all(checks.values())
    return _json({"ready": ok, "checks": checks}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(),
                        content_type="text/plain", charset="utf-8")


async def list_campaigns(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in STATUSES:
        raise CampaignError(f"status: unknown status {status[:30]!r}")
    limit = _int(request, "limit", 100, lo=1, hi=10000)
    async with request.app[STATE].pool.acquire() as conn:
        rows = await store.list_campaigns(conn, status, limit)
    return _json([c.to_json() for c in rows])


async def _body(request: web.Request, empty: Any = None) -> Any:
    """The request's JSON (strict UTF-8, nesting at most 1024); ``empty`` for no body."""
    raw = await request.read()
    if not raw.strip() and empty is not None:
        return empty
    try:
        return orjson.loads(raw)
    except (ValueError, RecursionError):
        raise CampaignError("body: not valid JSON") from None


async def create_campaign(request: web.Request) -> web.Response:
    body = await _body(request)
    spec, start = spec_from_body(body)
    dry = request.query.get("dry_run", "false")
    if dry not in ("true", "false"):
        raise CampaignError("dry_run: true or false")
    if dry == "true":
        settings = request.app[STATE].settings
        assumed = {k: _signed(request, k) for k in ("assume_signal", "assume_power")}
        async with request.app[STATE].pool.acquire() as conn:
            plan = await store.plan_campaign(conn, spec, settings.status_max_age, **assumed,
                                             fleet_cap=settings.max_in_flight)
        return _json(plan)
    if "assume_signal" in request.query or "assume_power" in request.query:
        raise CampaignError("assume_signal, assume_power: only with dry_run=true")
    async with request.app[STATE].pool.acquire() as conn:
        cid = await store.create_campaign(conn, spec, start=start, actor="api")
        campaign = await store.get_campaign(conn, cid)
    assert campaign is not None
    return _json(campaign.to_json(), 201)


async def show_campaign(request: web.Request) -> web.Response:
    cid = _int(request, "id", lo=1)
    async with request.app[STATE].pool.acquire() as conn:
        campaign = await store.get_campaign(conn, cid)
    if campaign is None:
        raise CampaignNotFound(f"campaign {cid} not found")
    return _json(campaign.to_json())


async def campaign_devices(request: web.Request) -> web.Response:
    cid = _int(request, "id", lo=1)
    state = _text(request, "state")
    if state is not None and state not in STATES:
        raise CampaignError(f"state: one of {', '.join(STATES)}")
    limit = _int(request, "limit", 100, lo=1, hi=10000)
    async with request.app[STATE].pool.acquire() as conn:
        if await store.get_campaign(conn, cid) is None:
            raise CampaignNotFound(f"campaign {cid} not found")
        rows = await members.progress(conn, cid, state, limit)
    return _json(rows)


def _action(action: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        cid = _int(request, "id", lo=1)
        if await _body(request, empty={}) != {}:
            raise CampaignError("body: expected {} (or none)")
        async with request.app[STATE].pool.acquire() as conn:
            campaign = await store.set_status(conn, cid, action, actor="api")
        return _json(campaign.to_json())

    return handle


async def update_campaign(request: web.Request) -> web.Response:
    cid = _int(request, "id", lo=1)
    body = await _body(request)
    if not isinstance(body, dict):
        raise CampaignError("body: expected a JSON object")
    async with request.app[STATE].pool.acquire() as conn:
        campaign = await store.update_rules(conn, cid, body, actor="api")
    return _json(campaign.to_json())


async def retry_devices(request: web.Request) -> web.Response:
    cid = _int(request, "id", lo=1)
    body = await _body(request, empty={})
    if not isinstance(body, dict) or set(body) - {"state", "errno", "reason"}:
        raise CampaignError("body: an object with state, errno, reason")
    async with request.app[STATE].pool.acquire() as conn:
        n = await store.retry(conn, cid, [body.get("state", "failed")], body.get("errno"),
                              body.get("reason", "by the operator"), actor="api")
        campaign = await store.get_campaign(conn, cid)
    assert campaign is not None
    return _json({"retried": n, "campaign": campaign.to_json()})


async def list_devices(request: web.Request) -> web.Response:
    async with request.app[STATE].pool.acquire() as conn:
        rows = await device_store.list_devices(
            conn, manuf=_text(request, "manuf"), model=_text(request, "model"),
            after=_int(request, "after", 0), limit=_int(request, "limit", 100, lo=1, hi=10000))
    return _json([d.to_json() for d in rows])


async def show_device(request: web.Request) -> web.Response:
    dev_id = _int(request, "id", lo=1)
    async with request.app[STATE].pool.acquire() as conn:
        device = await device_store.get_device(conn, dev_id)
    if device is None:
        return _error(404, f"device {dev_id} not found")
    return _json(device.to_json())


async def status_page(request: web.Request) -> web.Response:
    """A page for people: campaigns, progress, waves, rate, ETA, failures, last events."""
    async with request.app[STATE].pool.acquire() as conn:
        data = await status_store.page_data(conn)
    return web.Response(text=render_status(data), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src data:"})


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def build_app(state: ApiState) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[STATE] = state
    app.add_routes([
        web.get("/", status_page),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/campaigns", list_campaigns),
        web.post("/api/v1/campaigns", create_campaign),
        web.get("/api/v1/campaigns/{id}", show_campaign),
        web.patch("/api/v1/campaigns/{id}", update_campaign),
        web.get("/api/v1/campaigns/{id}/devices", campaign_devices),
        *[web.post(f"/api/v1/campaigns/{{id}}/{a}", _action(a))
          for a in ("start", "pause", "resume", "cancel")],
        web.post("/api/v1/campaigns/{id}/retry", retry_devices),
        web.get("/api/v1/devices", list_devices),
        web.get("/api/v1/devices/{id}", show_device),
    ])
    return app


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERR = {"description": "error", "content": {"application/json": {"schema": _ref("Error")}}}


def _ok(schema: dict[str, Any], code: str = "200") -> dict[str, Any]:
    return {code: {"description": "ok", "content": {"application/json": {"schema": schema}}},
            "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "413": _ERR, "415": _ERR,
            "503": _ERR}


_INT64 = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_INT32 = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": TEXT_RE.pattern}
_NO_BODY = {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "maxProperties": 0}}}}
_PCT = {"type": "number", "minimum": 0, "maximum": 100}
_SECONDS = {"type": "number", "minimum": 1, "maximum": 7 * 24 * 3600}
_WINDOWS = {"type": "array", "maxItems": 32, "items": {
    "type": "string", "maxLength": 100, "pattern": r"^\s*[A-Za-z*,\- ]+?\s+\d{1,2}:\d{2}"
                                                  r"\s*-\s*\d{1,2}:\d{2}\s*$"},
    "description": "maintenance windows, e.g. 'Mon-Fri 01:00-05:00'"}
_TZ = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_+/-]+$",
       "description": "IANA time zone of the windows, e.g. Asia/Shanghai"}
_ID = {"name": "id", "in": "path", "required": True, "schema": _INT64}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                      "maximum": 10000}}
_SECURE: list[dict[str, list[str]]] = [{"bearer": []}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "orchestrator ops API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            "CampaignCreate": {
                "type": "object", "required": ["name", "type", "target"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200,
                             "pattern": NAME_RE.pattern},
                    "type": {"type": "string", "enum": ["fota", "sota"]},
                    "target": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,20}$"},
                    "manuf": {**_TEXT}, "model": {**_TEXT},
                    "from_versions": {"type": "array", "items": {
                        "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,20}$"}},
                    "devices": {"type": "array", "minItems": 1, "items": _INT64},
                    "waves": {"type": "array", "items": {"type": "integer", "minimum": 1,
                                                        "maximum": 100},
                              "description": "cumulative percentages ending at 100"},
                    "wave_success_pct": {**_PCT},
                    "max_per_minute": {**_INT32},
                    "abort_failure_pct": {**_PCT},
                    "abort_min_finished": {**_INT32},
                    "continuous": {"type": "boolean"},
                    "abort_action": {"type": "string", "enum": ["pause", "abort"]},
                    "dispatch_timeout": {"type": "number", "minimum": 1,
                                         "maximum": 7 * 24 * 3600},
                    "canary": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                               "description": "the first wave holds this many devices of "
                                              "every (manuf, model, from-version) group"},
                    "unreachable_after": {**_SECONDS},
                    "max_in_flight": {**_INT32},
                    "windows": {**_WINDOWS},
                    "timezone": {**_TZ},
                    "all_devices": {"type": "boolean",
                                    "description": "required when no selector is given"},
                    "start": {"type": "boolean"},
                },
            },
            "Campaign": {"type": "object", "properties": {
                k: {} for k in ("campaign_id", "name", "status", "type", "target_version",
                                "selector", "waves", "current_wave", "status_reason", "total",
                                "pending", "in_progress", "succeeded", "failed", "no_task",
                                "cancelled", "started_at", "finished_at", "unreachable",
                                "remaining", "rate_per_min", "eta_at", "canary",
                                "unreachable_after", "max_in_flight", "windows", "timezone")}},
            "Device": {"type": "object", "properties": {
                k: {} for k in ("dev_id", "manuf", "model", "fota_version", "sota_version",
                                "signal", "power", "status_at", "last_seen")}},
        },
    },
    "paths": {
        "/healthz": {"get": {"responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "ready"},
                                          "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus metrics"}}}},
        "/api/v1/campaigns": {
            "get": {"security": _SECURE, "parameters": [
                {"name": "status", "in": "query",
                 "schema": {"type": "string", "enum": list(STATUSES)}}, _LIMIT],
                "responses": _ok({"type": "array", "items": _ref("Campaign")})},
            "post": {"security": _SECURE,
                     "parameters": [{"name": "dry_run", "in": "query", "schema": {
                         "type": "string", "enum": ["true", "false"]},
                         "description": "true: the plan (200), nothing written"},
                         *({"name": k, "in": "query", "description": "dry run: count the "
                            "devices whose fresh status would pass this threshold",
                            "schema": {"type": "integer", "minimum": -(2**31),
                                       "maximum": 2**31 - 1}}
                           for k in ("assume_signal", "assume_power"))],
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("CampaignCreate")}}},
                     "responses": {**_ok(_ref("Campaign"), "201"),
                                   "200": {"description": "the plan of a dry run",
                                           "content": {"application/json": {
                                               "schema": {"type": "object"}}}}}},
        },
        "/api/v1/campaigns/{id}": {
            "get": {"security": _SECURE, "parameters": [_ID],
                    "responses": _ok(_ref("Campaign"))},
            "patch": {"security": _SECURE, "parameters": [_ID],
                      "requestBody": {"required": True, "content": {"application/json": {
                          "schema": {"type": "object", "additionalProperties": False,
                                     "minProperties": 1, "properties": {
                                         "max_per_minute": {**_INT32, "nullable": True},
                                         "wave_success_pct": _PCT,
                                         "abort_failure_pct": {**_PCT, "nullable": True},
                                         "abort_min_finished": _INT32,
                                         "abort_action": {"type": "string",
                                                          "enum": ["pause", "abort"]},
                                         "dispatch_timeout": {
                                             "type": "number", "minimum": 1,
                                             "maximum": 7 * 24 * 3600,
                                             "nullable": True},
                                         "unreachable_after": _SECONDS,
                                         "max_in_flight": {**_INT32, "nullable": True},
                                         "windows": _WINDOWS,
                                         "timezone": _TZ}}}}},
                      "responses": {**_ok(_ref("Campaign")), "409": _ERR}}},
        "/api/v1/campaigns/{id}/devices": {"get": {"security": _SECURE, "parameters": [
            _ID, {"name": "state", "in": "query",
                  "schema": {"type": "string", "enum": list(STATES)}}, _LIMIT],
            "responses": _ok({"type": "array", "items": {"type": "object"}})}},
        **{f"/api/v1/campaigns/{{id}}/{a}": {"post": {
            "security": _SECURE, "parameters": [_ID], "requestBody": _NO_BODY,
            "responses": {**_ok(_ref("Campaign")), "409": _ERR}}}
           for a in ("start", "pause", "resume", "cancel")},
        "/api/v1/campaigns/{id}/retry": {"post": {
            "security": _SECURE, "parameters": [_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "properties": {
                    "state": {"type": "string", "enum": sorted(RETRYABLE_STATES)},
                    "errno": {"type": "integer", "minimum": -1, "maximum": 2**31 - 1,
                              "nullable": True},
                    "reason": {"type": "string", "minLength": 1, "maxLength": 200,
                               "pattern": REASON_RE.pattern}}}}}},
            "responses": {**_ok({"type": "object"}), "409": _ERR}}},
        "/api/v1/devices": {"get": {"security": _SECURE, "parameters": [
            {"name": "manuf", "in": "query", "schema": _TEXT},
            {"name": "model", "in": "query", "schema": _TEXT},
            {"name": "after", "in": "query",
             "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}}, _LIMIT],
            "responses": _ok({"type": "array", "items": _ref("Device")})}},
        "/api/v1/devices/{id}": {"get": {"security": _SECURE, "parameters": [_ID],
                                         "responses": _ok(_ref("Device"))}},
    },
}
assert set(OPENAPI["components"]["schemas"]["CampaignCreate"]["properties"]) == FIELDS
for _key, _prop in OPENAPI["components"]["schemas"]["CampaignCreate"]["properties"].items():
    if _key not in ("name", "type", "target"):
        _prop.update(nullable=True)     # null means "not given"
