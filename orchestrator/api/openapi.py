"""The OpenAPI 3.1 document, generated from the route table and the types of ``schema``:
bodies, query strings, path ids and responses are JSON Schema from msgspec; the errors every
route may answer come from what the middleware does (401/403 for the token, 413 for size,
415 for the content type, 503 for the database)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from orchestrator.api.schema import Error, Id

REF = "#/components/schemas/{name}"


class RouteLike(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def body(self) -> Any: ...
    @property
    def query(self) -> Any: ...
    @property
    def response(self) -> Any: ...
    @property
    def status(self) -> int: ...
    @property
    def conflict(self) -> bool: ...
    @property
    def secured(self) -> bool: ...
    @property
    def content_type(self) -> str: ...
    @property
    def also(self) -> tuple[int, Any, str] | None: ...


def _error_responses(route: RouteLike, error: dict[str, Any]) -> dict[str, Any]:
    body = {"description": "error", "content": {"application/json": {"schema": error}}}
    codes = ["400", "404", "503"]
    if route.secured:
        codes += ["401", "403"]
    if route.method in ("POST", "PATCH", "PUT", "DELETE"):
        codes += ["413", "415"]
    if route.conflict:
        codes.append("409")
    return dict.fromkeys(sorted(codes), body)


def document(routes: Sequence[RouteLike], title: str, version: str) -> dict[str, Any]:
    types: list[Any] = [Error, Id]
    for r in routes:
        types += [t for t in (r.body, r.query, r.response, r.also and r.also[1])
                  if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    by_type = dict(zip(map(id, types), schemas, strict=True))
    error, id_schema = by_type[id(Error)], by_type[id(Id)]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "operationId": _operation_id(r)}
        params: list[dict[str, Any]] = []
        if "{id}" in r.path:
            params.append({"name": "id", "in": "path", "required": True, "schema": id_schema})
        if r.query is not None:
            struct = components[r.query.__name__]
            required = set(struct.get("required", ()))
            params += [{"name": name, "in": "query", "required": name in required,
                        "schema": prop}
                       for name, prop in struct["properties"].items()]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": r.body.__name__ != "NoBody", "content": {
                "application/json": {"schema": by_type[id(r.body)]}}}
        ok: dict[str, Any] = {"description": "ok"}
        if r.response is not None:
            ok["content"] = {r.content_type: {"schema": by_type[id(r.response)]}}
        op["responses"] = {str(r.status): ok} if not r.path.startswith("/api/") else {
            str(r.status): ok, **_error_responses(r, error)}
        if r.also is not None:
            code, kind, what = r.also
            op["responses"][str(code)] = {"description": what, "content": {
                "application/json": {"schema": by_type[id(kind)]}}}
        if r.path == "/readyz":
            op["responses"]["503"] = {"description": "not ready"}
        if r.secured:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _operation_id(r: RouteLike) -> str:
    parts = [p for p in r.path.split("/") if p and p not in ("api", "v1")]
    return r.method.lower() + "_" + "_".join(p.strip("{}") for p in parts)
