"""Ops HTTP API under ``/api/v1`` (contract section 5), with health, readiness, metrics and
the status page.

One table of routes: each names its body, query and response types (``schema``), from
which requests are decoded (a bad field named in a 400) and the OpenAPI document is
generated (``openapi``). Handlers call the operator's use cases (``orchestrator.usecases``),
the same the CLI calls; none runs SQL.

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
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from orchestrator import __version__
from orchestrator.api import schema as s
from orchestrator.api.openapi import document
from orchestrator.api.status_page import render as render_status
from orchestrator.config import Settings
from orchestrator.domain.accounts import AccountsInputError, Issued
from orchestrator.domain.campaign import (
    CampaignConflict,
    CampaignError,
    CampaignNotFound,
)
from orchestrator.metrics import Metrics
from orchestrator.usecases import campaigns, credentials, devices, rehearsals, status
from orchestrator.usecases.common import (
    Connection,
    DatabaseUnavailable,
    DataRejected,
    Pool,
    acquire,
    database_error,
    ping,
)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 1024 * 1024
MAX_API_CREDENTIALS = 100_000


@dataclass
class ApiState:
    settings: Settings
    pool: Pool
    metrics: Metrics
    ready: Callable[[], dict[str, bool]]


STATE: web.AppKey[ApiState] = web.AppKey("state", ApiState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Call:
    """What a handler gets: the decoded path id, body and query, and a connection."""

    request: web.Request
    conn: Connection
    id: int
    body: Any
    query: Any

    @property
    def settings(self) -> Settings:
        return self.request.app[STATE].settings


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[Call], Awaitable[Any]]
    summary: str
    body: Any = None
    query: Any = None
    response: Any = None
    status: int = 200
    conflict: bool = False
    secured: bool = True
    content_type: str = "application/json"
    raw: Handler | None = None       # answers by itself (health, metrics, the page)
    also: tuple[int, Any, str] | None = None   # another success: (status, type, what)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


_PATH = re.compile(r"^\$\.?")


def _field_error(exc: msgspec.ValidationError, where: str) -> str:
    """msgspec's ``Expected ... - at `$.a[0]``` as ``a[0]: expected ...``."""
    text = str(exc)
    message, _, path = text.rpartition(" - at ")
    if not message:
        message, path = text, "`$`"
    field = _PATH.sub("", path.strip("`"))
    named = re.search(r"(?:unknown|required) field `([^`]+)`", message)
    if named:
        field = f"{field}.{named[1]}" if field else named[1]
    return f"{field or where}: {message[:1].lower()}{message[1:]}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BadRequest(Exception):
    pass


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
    except BadRequest as exc:
        return _error(400, str(exc))
    except CampaignNotFound as exc:
        return _error(404, str(exc))
    except CampaignConflict as exc:
        return _error(409, str(exc))
    except (CampaignError, AccountsInputError) as exc:
        return _error(400, str(exc))
    except DatabaseUnavailable as exc:
        return _error(503, f"database unavailable: {str(exc).split(':')[0]}")
    except DataRejected:
        # a value our checks let through and PostgreSQL does not (a bug to report, but
        # the caller's input all the same): a 400, never a 500
        return _error(400, "input: refused by the database")
    except Exception as exc:
        ported = database_error(exc)
        if isinstance(ported, DatabaseUnavailable):
            return _error(503, f"database unavailable: {type(exc).__name__}")
        if isinstance(ported, DataRejected):
            return _error(400, f"input: refused by the database ({type(exc).__name__})")
        raise


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


def _decode(route: Route, request: web.Request, raw: bytes) -> tuple[int, Any, Any]:
    path_id = 0
    if "id" in request.match_info:
        try:
            path_id = msgspec.convert(request.match_info["id"], s.Id, strict=False)
        except msgspec.ValidationError as exc:
            raise BadRequest(_field_error(exc, "id").replace("id: ", "id: ", 1)) from None
    query = None
    if route.query is not None:
        try:
            query = msgspec.convert(dict(request.query), route.query, strict=False)
        except msgspec.ValidationError as exc:
            raise BadRequest(_field_error(exc, "query")) from None
    body = None
    if route.body is not None:
        try:
            body = msgspec.json.decode(raw if raw.strip() or route.body is not s.NoBody
                                       else b"{}", type=route.body)
        except msgspec.ValidationError as exc:
            raise BadRequest(_field_error(exc, "body")) from None
        except msgspec.DecodeError:
            raise BadRequest("body: not valid JSON") from None
    return path_id, body, query


def _handle(route: Route) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read() if route.body is not None else b""
        path_id, body, query = _decode(route, request, raw)
        async with acquire(request.app[STATE].pool) as conn:
            result = await route.handler(Call(request, conn, path_id, body, query))
        if isinstance(result, web.StreamResponse):
            return result
        return _json(result, route.status)

    return handle


# --- handlers ----------------------------------------------------------------------------

def _campaign(c: Any) -> Any:
    return msgspec.convert(c.to_json(), s.CampaignOut)


async def list_campaigns(call: Call) -> Any:
    q: s.CampaignListQuery = call.query
    return [_campaign(c) for c in await campaigns.listing(
        call.conn, None if q.status is None else str(q.status), q.limit)]


async def create_campaign(call: Call) -> Any:
    q: s.CreateQuery = call.query
    spec = call.body.spec()
    if q.rehearse:
        if q.dry_run:
            raise BadRequest("dry_run, rehearse: one or the other")
        settings = call.settings
        return _json(await rehearsals.plan_rehearsal(
            call.conn, [("", spec)], policy=settings.policy(), fleet_cap=settings.max_in_flight,
            fleet_cell_cap=settings.max_per_cell, batch=settings.scheduler_batch_size,
            poll=settings.scheduler_poll_interval, checks_per_second=q.check_rate,
            concurrency=settings.onenet_concurrency,
            runs=q.runs, seed=q.seed), 200)
    if q.dry_run:
        settings = call.settings
        return _json(await campaigns.plan(call.conn, spec, settings.status_max_age,
                                          assume_signal=q.assume_signal,
                                          assume_power=q.assume_power,
                                          fleet_cap=settings.max_in_flight,
                                          radio_period=settings.radio_period), 200)
    if q.assume_signal is not None or q.assume_power is not None:
        raise BadRequest("assume_signal, assume_power: only with dry_run=true")
    cid = await campaigns.create(call.conn, spec, start=bool(call.body.start), actor="api")
    return _campaign(await campaigns.get(call.conn, cid))


async def show_campaign(call: Call) -> Any:
    return _campaign(await campaigns.get(call.conn, call.id))


async def update_campaign(call: Call) -> Any:
    return _campaign(await campaigns.update(call.conn, call.id, call.body.changes(),
                                            actor="api", policy=call.settings.policy()))


async def campaign_devices(call: Call) -> Any:
    q: s.CampaignDevicesQuery = call.query
    return await campaigns.member_progress(call.conn, call.id,
                                           None if q.state is None else str(q.state), q.limit)


async def campaign_waits(call: Call) -> Any:
    return msgspec.convert(await campaigns.waits(call.conn, call.id, 20), s.Waits)


async def campaign_gate_outlook(call: Call) -> Any:
    return msgspec.convert(await campaigns.gate_outlook(call.conn, call.id), s.GateOutlook)


def _action(action: str) -> Callable[[Call], Awaitable[Any]]:
    async def handle(call: Call) -> Any:
        return _campaign(await campaigns.act(call.conn, call.id, action, actor="api"))

    return handle


async def retry_devices(call: Call) -> Any:
    body: s.RetryRequest = call.body
    n = await campaigns.retry(call.conn, call.id, [str(body.state)], body.errno, body.reason,
                              actor="api")
    return s.RetryOut(n, _campaign(await campaigns.get(call.conn, call.id)))


async def list_devices(call: Call) -> Any:
    q: s.DeviceListQuery = call.query
    return [d.to_json() for d in await devices.listing(call.conn, manuf=q.manuf, model=q.model,
                                                       after=q.after, limit=q.limit)]


async def show_device(call: Call) -> Any:
    device, _ = await devices.show(call.conn, call.id)
    if device is None:
        return _error(404, f"device {call.id} not found")
    return device.to_json()


async def device_credentials(call: Call) -> Any:
    """Broker accounts; the secrets are in this answer only (stored hashed)."""
    body: s.CredentialsRequest = call.body
    issued: list[Issued] = []

    def keep(chunk: Any) -> None:
        issued.extend(chunk)
        if len(issued) > MAX_API_CREDENTIALS:
            raise AccountsInputError(
                f"devices: more than {MAX_API_CREDENTIALS:,} in one call: use the CLI "
                "('orchestrator device credentials --all-registered --out FILE')")

    outcome = await credentials.provision(
        call.conn, credentials.Selection(None if body.dev_ids is None else tuple(body.dev_ids),
                                         body.all_registered, body.manuf, body.model),
        rotate=body.rotate, sink=keep)
    return s.CredentialsOut(outcome.created, outcome.rotated,
                            [s.Credential(i.dev_id or 0, i.username, i.secret)
                             for i in issued])


async def revoke_devices(call: Call) -> Any:
    done = await credentials.revoke(call.conn, call.body.dev_ids)
    return s.RevokeOut(done.revoked, done.without_account)


# --- open routes ------------------------------------------------------------------------

async def healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    checks = dict(request.app[STATE].ready())
    checks["database"] = await ping(request.app[STATE].pool)
    ok = all(checks.values())
    return _json({"ready": ok, "checks": checks}, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.render(),
                        content_type="text/plain", charset="utf-8")


async def status_page(request: web.Request) -> web.Response:
    """A page for people: campaigns, progress, waves, rate, ETA, failures, last events."""
    async with acquire(request.app[STATE].pool) as conn:
        data = await status.page_data(conn)
    return web.Response(text=render_status(data), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'none'; "
                                 "style-src 'unsafe-inline'; img-src data:"})


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


async def _none(call: Call) -> Any:
    return None


V1 = "/api/v1"
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", _none, "alive", secured=False, raw=healthz),
    Route("GET", "/readyz", _none, "ready: MQTT subscribed, breaker closed, database up",
          secured=False, raw=readyz),
    Route("GET", "/metrics", _none, "Prometheus metrics", secured=False, raw=metrics,
          response=str, content_type="text/plain"),
    Route("GET", f"{V1}/openapi.json", _none, "this document", secured=False, raw=openapi),
    Route("GET", f"{V1}/campaigns", list_campaigns, "list campaigns",
          query=s.CampaignListQuery, response=list[s.CampaignOut]),  # type: ignore[valid-type]
    Route("POST", f"{V1}/campaigns", create_campaign,
          "create a campaign (201); dry_run=true: its plan, rehearse=true: its rehearsal "
          "(200), nothing written",
          body=s.CampaignCreate, query=s.CreateQuery, response=s.CampaignOut, status=201,
          also=(200, s.Plan, "the plan of a dry run, or the rehearsal")),
    Route("GET", f"{V1}/campaigns/{{id}}", show_campaign, "one campaign",
          response=s.CampaignOut),
    Route("PATCH", f"{V1}/campaigns/{{id}}", update_campaign, "change a live campaign's rules",
          body=s.CampaignUpdate, response=s.CampaignOut, conflict=True),
    Route("GET", f"{V1}/campaigns/{{id}}/devices", campaign_devices,
          "the campaign's devices as ota.device_progress shows them",
          query=s.CampaignDevicesQuery, response=list[s.DeviceProgress]),
    Route("GET", f"{V1}/campaigns/{{id}}/waits", campaign_waits,
          "what the campaign waits on before its next wave or its end: the open waves' "
          "devices not finished, the 20 it waits for longest, each until when",
          response=s.Waits),
    Route("GET", f"{V1}/campaigns/{{id}}/gate-outlook", campaign_gate_outlook,
          "the campaign's devices waiting for signal or power, by the hour their radio "
          "profile likes best; the busiest cells", response=s.GateOutlook),
    *(Route("POST", f"{V1}/campaigns/{{id}}/{a}", _action(a), f"{a} the campaign",
            body=s.NoBody, response=s.CampaignOut, conflict=True)
      for a in ("start", "pause", "resume", "cancel")),
    Route("POST", f"{V1}/campaigns/{{id}}/retry", retry_devices,
          "give the campaign's failed (or unreachable) devices a fresh budget",
          body=s.RetryRequest, response=s.RetryOut, conflict=True),
    Route("GET", f"{V1}/devices", list_devices, "list registered devices",
          query=s.DeviceListQuery, response=list[s.DeviceOut]),  # type: ignore[valid-type]
    Route("GET", f"{V1}/devices/{{id}}", show_device, "one device", response=s.DeviceOut),
    Route("POST", f"{V1}/credentials", device_credentials,
          "broker accounts for devices (the secrets are shown in this answer only)",
          body=s.CredentialsRequest, response=s.CredentialsOut),
    Route("POST", f"{V1}/credentials/revoke", revoke_devices,
          "revoke devices' broker accounts",
          body=s.RevokeRequest, response=s.RevokeOut),
)
OPENAPI: dict[str, Any] = document(ROUTES, "orchestrator ops API", __version__)


def build_app(state: ApiState) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=MAX_BODY)
    app[STATE] = state
    app.add_routes([web.get("/", status_page)])
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.raw or _handle(r))
    return app
