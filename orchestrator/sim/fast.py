"""The simulator's check endpoint on granian (a Rust HTTP server, its RSGI interface), for
load tests of the check path: the same :class:`Simulator` answers, for about half the CPU per
check of aiohttp's server (152-173 ms per 1,000 checks against 262-313 under the same bare
load, in one sitting), so on a shared machine the endpoint takes less of the cores the
orchestrator needs.

It serves ``/ota/south/check`` (POST and GET) and ``/sim/state`` only, with no fault
injection: the other calls and the faults are the aiohttp server's (``serve``). granian is
optional (the test extra); :func:`available` tells."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from orchestrator.sim.onenet import Simulator, answer_body

MAX_BODY = 1024 * 1024          # as the aiohttp server's client_max_size
JSON = [("content-type", "application/json")]

RsgiApp = Callable[[Any, Any], Awaitable[None]]


def available() -> bool:
    return importlib.util.find_spec("granian") is not None


def rsgi_app(sim: Simulator) -> RsgiApp:
    async def app(scope: Any, proto: Any) -> None:
        path, method = scope.path, scope.method
        if path == "/ota/south/check" and method in ("POST", "GET"):
            query: dict[str, str] = {}
            if method == "GET":
                body: bytes | None = b""
                for k, v in parse_qsl(scope.query_string, keep_blank_values=True):
                    query.setdefault(k, v)      # the first of a repeated key, as aiohttp's
            else:
                body = await _body(scope, proto)
            if body is None:
                proto.response_bytes(413, JSON, answer_body(2, "request body too large"))
                return
            proto.response_bytes(200, JSON, sim.check_answer(
                method, scope.headers.get("authorization"), query, body))
        elif path == "/sim/state" and method == "GET":
            proto.response_bytes(200, JSON, orjson.dumps(sim.state_doc()))
        else:
            proto.response_bytes(404, [("content-type", "text/plain")],
                                 b"not served by the fast check server: use the default one")
    return app


async def _body(scope: Any, proto: Any) -> bytes | None:
    """The request body, or None past MAX_BODY: by its Content-Length, or counted as it
    arrives when it is chunked."""
    length = scope.headers.get("content-length")
    if length is not None:
        return await proto() if length.isdigit() and int(length) <= MAX_BODY else None
    chunks, size = [], 0
    async for chunk in proto:
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def serving(sim: Simulator, host: str, port: int) -> AsyncIterator[None]:
    """The check endpoint on ``host:port`` (a port of its own: granian binds it) until the
    block ends."""
    from granian.constants import Interfaces  # noqa: PLC0415 (optional: the test extra)
    from granian.server.embed import Server  # noqa: PLC0415

    logging.getLogger("_granian").setLevel(logging.ERROR)   # "embedded is experimental"
    if sim.ip_port is None:
        sim.ip_port = f"{host}:{port}"
    server = Server(rsgi_app(sim), address=host, port=port, interface=Interfaces.RSGI,
                    websockets=False, log_enabled=False)
    task = asyncio.create_task(server.serve(), name="granian")
    try:
        yield
    finally:
        server.stop()  # type: ignore[no-untyped-call]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
