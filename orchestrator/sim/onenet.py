"""A faithful simulator of the OneNET OTA southbound API (an aiohttp app; its check also on
granian, in ``sim.fast``).

Reproduces the seed's check (POST JSON, and the public docs' GET form) with every errno,
version recording, automatic-add strategies, the task life cycle driven by token checks and
progress reports, two-day tokens, package download with Range, and fault injection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web

from orchestrator.domain.device import TOKEN_LIFETIME
from orchestrator.domain.onenet import DIFF_PACKAGE, ERRNO_TEXT, FULL_PACKAGE
from orchestrator.domain.versions import is_valid_version
from orchestrator.sim.auth import expiry_of, verify_authorization
from orchestrator.sim.scenario import Faults, Package, Scenario, TaskSpec

log = structlog.get_logger(__name__)

ACTIVE = ("to_be_upgraded", "downloading", "upgrading")


@dataclass
class DeviceState:
    dev_id: int
    manuf: str | None = None
    model: str | None = None
    versions: dict[int, str | None] = field(default_factory=lambda: {1: None, 2: None})


@dataclass
class TaskState:
    task_id: int
    dev_id: int
    type: int
    package: Package
    spec: TaskSpec
    manuf: str | None
    model: str | None
    state: str = "to_be_upgraded"
    token: str | None = None
    token_expires: float = 0.0
    failures: int = 0
    failed_errno: int | None = None
    history: list[str] = field(default_factory=list)

    def move(self, state: str) -> None:
        if state != self.state:
            self.history.append(state)
            self.state = state


def package_bytes(package: Package) -> bytes:
    """Deterministic contents of a package (its MD5 is what the task announces)."""
    return hashlib.shake_256(f"{package.id}:{package.version}".encode()).digest(package.size)


class Simulator:
    def __init__(self, scenario: Scenario | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.scenario = scenario or Scenario()
        self.clock = clock
        self.product_id = self.scenario.product_id
        self.access_key = self.scenario.access_key or base64.b64encode(
            secrets.token_bytes(48)).decode()
        self.faults = self.scenario.faults
        self.rng = random.Random(self.faults.seed)
        self.ip_port: str | None = self.scenario.ip_port
        self.devices: dict[int, DeviceState] = {}
        for d in self.scenario.devices:
            self.devices[d.dev_id] = DeviceState(d.dev_id, d.manuf, d.model,
                                                 {1: d.fota_version, 2: d.sota_version})
        self.packages = {p.id: p for p in self.scenario.packages}
        self._bytes: dict[str, bytes] = {}
        self.tasks: dict[tuple[int, int], TaskState] = {}
        self.by_token: dict[str, TaskState] = {}
        self.script = {k: list(v) for k, v in self.scenario.script.items()}
        self.checks: Counter[int] = Counter()
        # the last check bodies, for tests; bounded so a long run does not grow
        self.check_bodies: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.progress_reports: list[tuple[int, int]] = []
        self._next_task = 1
        self.verified: dict[str, float] = {}      # token -> its expiry
        self._md5: dict[str, str] = {}

    # --- helpers ---------------------------------------------------------------------------

    def content(self, package: Package) -> bytes:
        if package.id not in self._bytes:
            self._bytes[package.id] = package_bytes(package)
        return self._bytes[package.id]

    def md5(self, package: Package) -> str:
        """The package's digest, computed once (every check answer carries it)."""
        if package.id not in self._md5:
            self._md5[package.id] = hashlib.md5(self.content(package)).hexdigest()
        return self._md5[package.id]

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        if faults.seed is not None:
            self.rng = random.Random(faults.seed)

    def authorized(self, request: web.Request) -> bool:
        return self.authorized_header(request.headers.get("Authorization"))

    def authorized_header(self, header: str | None) -> bool:
        if not self.scenario.auth:
            return True
        now = self.clock()
        if header is None:
            return False
        expires = self.verified.get(header)
        if expires is not None:
            return now <= expires
        if not verify_authorization(header, self.product_id,
                                                      self.access_key, now):
            return False
        # a client sends one token for an hour: verify its signature once, its expiry always
        if len(self.verified) >= 1024:
            self.verified.clear()
        self.verified[header] = expiry_of(header)
        return True

    @staticmethod
    def answer(errno: int, error: str | None = None, data: dict[str, Any] | None = None
               ) -> web.Response:
        return web.Response(body=answer_body(errno, error, data),
                            content_type="application/json")

    def _new_task(self, dev: DeviceState, type_: int, spec: TaskSpec) -> TaskState:
        task = TaskState(self._next_task, dev.dev_id, type_, self.packages[spec.package], spec,
                         dev.manuf, dev.model)
        self._next_task += 1
        self.tasks[(dev.dev_id, type_)] = task
        return task

    def _spec_for(self, dev: DeviceState, type_: int, version: str) -> TaskSpec | None:
        """A configured task naming this device, else a matching automatic-add strategy."""
        for spec in self.scenario.tasks:
            if spec.type == type_ and (spec.devices is None or dev.dev_id in spec.devices) \
                    and self.packages[spec.package].version != version:
                return spec
        for spec in self.scenario.strategies:
            if spec.type != type_ or self.packages[spec.package].version == version:
                continue
            if spec.manuf and spec.manuf != dev.manuf:
                continue
            if spec.model and spec.model != dev.model:
                continue
            if spec.from_versions and version not in spec.from_versions:
                continue
            return spec
        return None

    def _token(self, task: TaskState) -> str:
        now = self.clock()
        if task.token is None or now >= task.token_expires:
            if task.token:
                self.by_token.pop(task.token, None)
            task.token = "ota_" + secrets.token_urlsafe(15).replace("-", "x").replace("_", "y")
            task.token_expires = now + TOKEN_LIFETIME
            self.by_token[task.token] = task
        return task.token

    # --- check -----------------------------------------------------------------------------

    async def check(self, request: web.Request) -> web.Response:
        body = b"" if request.method == "GET" else await request.read()
        answer = self.check_answer(request.method, request.headers.get("Authorization"),
                                   request.query, body)
        return web.Response(body=answer, content_type="application/json")

    def check_answer(self, method: str, authorization: str | None,
                     query: Mapping[str, str], body: bytes) -> bytes:
        """The check's answer (a JSON document) to a request, whichever server carried it;
        counted by errno."""
        errno, answer = self._check(method, authorization, query, body)
        self.checks[errno] += 1
        return answer

    def _check(self, method: str, authorization: str | None, query: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        if not self.authorized_header(authorization):
            return _reply(1)
        if method == "GET":
            params: dict[str, Any] = dict(query)
        else:
            try:
                params = orjson.loads(body)
            except (ValueError, RecursionError):
                return _reply(2, "request body is not JSON")
            if not isinstance(params, dict):
                return _reply(2, "request body is not a JSON object")
        parsed = _check_params(params, method == "GET")
        if isinstance(parsed, str):
            return _reply(2, parsed)
        dev_id, manuf, model, type_, version, cdn = parsed
        self.check_bodies.append({**params, "_method": method})
        if not is_valid_version(version):
            return _reply(27)
        dev = self.devices.get(dev_id)
        if dev is None:
            if not self.scenario.auto_register:
                return _reply(1, "device does not exist")
            dev = self.devices[dev_id] = DeviceState(dev_id, manuf, model)
        scripted = self.script.get(dev_id)
        if scripted:
            errno = scripted.pop(0)
            if errno != 0:
                return _reply(errno)
        if self.faults.errno7_rate and self.rng.random() < self.faults.errno7_rate:
            return _reply(7)
        if dev.manuf is None:
            dev.manuf, dev.model = manuf, model
        previous = dev.versions.get(type_)
        dev.versions[type_] = version       # recorded whether a task is found or not
        task = self.tasks.get((dev_id, type_))
        if task is not None and task.state == "failed" and task.failed_errno:
            return _reply(task.failed_errno)
        if task is None or task.state not in ACTIVE:
            spec = None if task is not None else self._spec_for(dev, type_, version)
            if spec is None:
                return _reply(11)
            task = self._new_task(dev, type_, spec)
        if task.manuf is not None and (task.manuf != manuf or task.model != model):
            task.move("failed")
            task.failed_errno = 8
            return _reply(8)
        package = task.package
        if package.diff_from is not None:
            if previous is None and package.diff_from != version:
                return _reply(32)
            if package.diff_from != version:
                task.move("failed")
                task.failed_errno = 9
                return _reply(9)
        data: dict[str, Any] = {
            "target": package.version,
            "token": self._token(task),
            "size": package.size,
            "signal": task.spec.signal,
            "power": task.spec.power,
            "retry": task.spec.retry,
            "interval": task.spec.interval,
            "md5": self.md5(package),
            "type": DIFF_PACKAGE if package.diff_from else FULL_PACKAGE,
        }
        if cdn and self.ip_port:
            data["ipPort"] = self.ip_port
        return _reply(0, "succ", data)

    # --- version report --------------------------------------------------------------------

    async def report_version(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.answer(1)
        dev_id = _int_param(request.query.get("dev_id"))
        if dev_id is None:
            return self.answer(2, "dev_id")
        try:
            body = orjson.loads(await request.read() or b"{}")
        except ValueError:
            return self.answer(2, "body is not JSON")
        if not isinstance(body, dict):
            return self.answer(2, "body is not an object")
        dev = self.devices.get(dev_id)
        if dev is None:
            if not self.scenario.auto_register:
                return self.answer(1, "device does not exist")
            dev = self.devices[dev_id] = DeviceState(dev_id)
        for type_, key in ((1, "f_version"), (2, "s_version")):
            value = body.get(key)
            if value is None:
                continue
            if not is_valid_version(value):
                return self.answer(27)
            dev.versions[type_] = value
            task = self.tasks.get((dev_id, type_))
            if task and task.state in ACTIVE and task.package.version == value:
                task.move("succeeded")
        return self.answer(0)

    # --- token check -----------------------------------------------------------------------

    def _task_for_token(self, token: str, dev_id: int | None) -> tuple[TaskState | None, int]:
        task = self.by_token.get(token)
        if task is None or dev_id != task.dev_id:
            return None, 4
        if self.clock() >= task.token_expires:
            return None, 12
        if task.state == "succeeded":
            return None, 20
        if task.state == "cancelled":
            return None, 22
        return task, 0

    def _token_call(self, request: web.Request) -> TaskState | web.Response:
        """The task a token call is about, or the answer refusing the call."""
        if not self.authorized(request):
            return self.answer(1)
        task, errno = self._task_for_token(request.match_info["token"],
                                           _int_param(request.query.get("dev_id")))
        return self.answer(errno) if task is None else task

    async def token_check(self, request: web.Request) -> web.Response:
        task = self._token_call(request)
        if isinstance(task, web.Response):
            return task
        if task.state not in ("to_be_upgraded", "downloading"):
            return self.answer(17, "invalid state")
        task.move("downloading")
        return self.answer(0)

    # --- progress --------------------------------------------------------------------------

    async def progress(self, request: web.Request) -> web.Response:
        task = self._token_call(request)
        if isinstance(task, web.Response):
            return task
        try:
            body = orjson.loads(await request.read())
            step = body["step"]
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self.answer(2, "body must be {\"step\": int}")
        self.progress_reports.append((task.dev_id, step))
        state = task.state
        if 0 <= step <= 100:
            if state not in ("to_be_upgraded", "downloading"):
                return self.answer(17, "invalid state")
            task.move("upgrading" if step == 100 else "downloading")
        elif step == 101:
            if state not in ("to_be_upgraded", "downloading"):
                return self.answer(17, "invalid state")
            task.move("upgrading")
        elif 102 <= step <= 107 or 202 <= step <= 206:
            if state not in ACTIVE:
                return self.answer(17, "invalid state")
            task.failures += 1
            task.move("failed" if task.failures > task.spec.retry else "to_be_upgraded")
        elif step == 201:
            if state not in ACTIVE:
                return self.answer(17, "invalid state")
            task.move("succeeded")
            self.devices[task.dev_id].versions[task.type] = task.package.version
        elif step in (207, 208):
            task.move("failed")
        else:
            return self.answer(2, f"unknown step {step}")
        return self.answer(0)

    # --- download --------------------------------------------------------------------------

    async def download(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        task = self.by_token.get(token)
        if task is None or self.clock() >= task.token_expires or task.state not in ACTIVE:
            return await _digit(request, "3")
        forced = self.scenario.download_errors.get(task.dev_id)
        if forced:
            return await _digit(request, forced)
        package = self.packages.get(task.package.id)
        if package is None:
            return await _digit(request, "1")
        data = self.content(package)
        rng = parse_range(request.headers.get("Range"), len(data))
        if rng == "bad":
            return await _digit(request, "5")
        if rng == "unsatisfiable":
            return await _digit(request, "2")
        if task.state == "to_be_upgraded":
            task.move("downloading")
        if not isinstance(rng, tuple):
            return web.Response(body=data, content_type="application/octet-stream")
        start, end = rng
        return web.Response(
            status=206, body=data[start:end + 1], content_type="application/octet-stream",
            headers={"Content-Range": f"bytes {start}-{end}/{len(data)}"})

    # --- control (not OneNET: for tests, demo and staging) -------------------------------

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state_doc())

    def state_doc(self) -> dict[str, Any]:
        return {
            "checks": {str(k): v for k, v in sorted(self.checks.items())},
            "devices": {str(d.dev_id): {"manuf": d.manuf, "model": d.model,
                                        "fota_version": d.versions[1],
                                        "sota_version": d.versions[2]}
                        for d in self.devices.values()},
            "tasks": [{"dev_id": t.dev_id, "type": t.type, "state": t.state,
                       "target": t.package.version, "failures": t.failures,
                       "history": t.history} for t in self.tasks.values()],
        }

    async def put_faults(self, request: web.Request) -> web.Response:
        """Change the faults; fields left out keep their current value. Rates are in
        [0, 1], latency >= 0; nan and inf are refused."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            unknown = sorted(set(body) - {"errno7_rate", "latency_ms", "drop_rate", "seed"})
            if unknown:
                raise ValueError(f"{unknown[0]}: unknown field")
            f = self.faults
            values = {"errno7_rate": f.errno7_rate, "latency_ms": f.latency_ms,
                      "drop_rate": f.drop_rate}
            for key in values:
                if key in body:
                    v = body[key]
                    if isinstance(v, bool) or not isinstance(v, int | float) \
                            or not math.isfinite(v):
                        raise ValueError(f"{key}: a finite number")
                    if v < 0 or (key != "latency_ms" and v > 1):
                        raise ValueError(f"{key}: {'>= 0' if key == 'latency_ms' else '0..1'}")
                    values[key] = float(v)
            seed = body.get("seed", f.seed)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed: an integer")
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"bad faults: {exc}") from None
        self.set_faults(Faults(values["errno7_rate"], values["latency_ms"],
                               values["drop_rate"], seed))
        return web.json_response({"ok": True})

    @web.middleware
    async def fault_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/sim/"):
            return await handler(request)  # type: ignore[no-any-return]
        f = self.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        if f.drop_rate and self.rng.random() < f.drop_rate:
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("fault injection: connection dropped")
        return await handler(request)  # type: ignore[no-any-return]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.fault_middleware],
                              client_max_size=1024 * 1024)
        app.add_routes([
            web.post("/ota/south/check", self.check),
            web.get("/ota/south/check", self.check),
            web.post("/ota/device/version", self.report_version),
            web.get("/ota/south/download/{token}/check", self.token_check),
            web.post("/ota/south/device/download/{token}/progress", self.progress),
            web.get("/ota/south/download/{token}", self.download),
            web.get("/ota/download/{token}", self.download),
            web.get("/sim/state", self.state),
            web.put("/sim/faults", self.put_faults),
        ])
        return app


def answer_body(errno: int, error: str | None = None, data: dict[str, Any] | None = None
                ) -> bytes:
    """OneNET's answer document: errno, its text, and data when there is any."""
    doc: dict[str, Any] = {"errno": errno, "error": error or ERRNO_TEXT.get(errno, "error")}
    if data is not None:
        doc["data"] = data
    return orjson.dumps(doc)


def _reply(errno: int, error: str | None = None, data: dict[str, Any] | None = None
           ) -> tuple[int, bytes]:
    return errno, answer_body(errno, error, data)


def _int_param(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    return int(value)


CheckParams = tuple[int, str, str, int, str, bool]


def _check_params(p: dict[str, Any], from_query: bool) -> CheckParams | str:
    """The check's parameters, typed; a string names what is wrong (errno 2)."""
    required = ("dev_id", "manuf", "model", "type", "version", "cdn")
    missing = [k for k in required if k not in p]
    if missing:
        return f"missing {', '.join(missing)}"
    dev_id, type_, cdn = p["dev_id"], p["type"], p["cdn"]
    if from_query:
        dev_id = _int_param(dev_id)
        type_ = _int_param(type_)
        cdn = {"true": True, "false": False}.get(str(cdn).lower())
    if isinstance(dev_id, bool) or not isinstance(dev_id, int) or dev_id <= 0:
        return "dev_id must be a positive integer"
    if type_ not in (1, 2) or isinstance(type_, bool):
        return "type must be 1 or 2"
    if not isinstance(cdn, bool):
        return "cdn must be a boolean"
    for key in ("manuf", "model", "version"):
        if not isinstance(p[key], str) or not p[key]:
            return f"{key} must be a non-empty string"
    for key in ("signals", "powers"):
        if key in p and not from_query and (isinstance(p[key], bool)
                                            or not isinstance(p[key], int)):
            return f"{key} must be an integer"
    return dev_id, p["manuf"], p["model"], type_, p["version"], cdn


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``start-end``, ``start-`` or ``-N``, with or without ``bytes=``: (start, end) inclusive;
    None for the whole file; ``"bad"`` for a malformed header; ``"unsatisfiable"``."""
    if header is None or not header.strip():
        return None
    text = header.strip()
    if text.lower().startswith("bytes="):
        text = text[6:].strip()
    first, sep, last = text.partition("-")
    if not sep or "," in text or not (first.isdigit() or first == "") \
            or not (last.isdigit() or last == "") or (first == "" and last == ""):
        return "bad"
    if first == "":
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


async def _digit(request: web.Request, digit: str) -> web.StreamResponse:
    """OneNET's download error: one ASCII digit and no Content-Length."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(digit.encode())
    await resp.write_eof()
    return resp


async def serve(sim: Simulator, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    if sim.ip_port is None:
        bound = runner.addresses[0]
        sim.ip_port = f"{bound[0]}:{bound[1]}"
    return runner

