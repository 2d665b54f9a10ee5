"""``GET /openapi.json``: an OpenAPI 3.1 document generated from the route table.

Every route of :data:`~cachedaemon.server.routes.ROUTES` appears with its summary, path
parameters, documented query parameters and headers, request body and responses; routes that
need the bearer token carry the security requirement. Generated once per process on first use
(the table is complete once every handler module is imported) and cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cachedaemon.server import http as web
from cachedaemon.server.context import Call
from cachedaemon.server.routes import ROUTES, RouteTable

#: Functions that refine the generated document (request/answer schemas); modules append.
SPEC_EXTENSIONS: list[Callable[[dict[str, Any]], None]] = []

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}},
}


def build_spec(table: RouteTable = ROUTES) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{_op_name(route.openapi_path)}",
            "tags": [route.tag],
        }
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             "description": "percent-encoded" + ("; may contain '/'"
                                                 if f"{{{name}+}}" in route.template else "")}
            for name in route.path_params()
        ]
        params += [{"name": p.name, "in": p.where, "required": p.required,
                    "description": p.description, "schema": p.schema} for p in route.params]
        if params:
            op["parameters"] = params
        if route.request_body:
            op["requestBody"] = {"required": True, "content": {
                route.request_body: {"schema": {"type": "string", "format": "binary"}
                                     if route.request_body == "application/octet-stream"
                                     else {"type": "object"}}}}
        responses: dict[str, Any] = {
            str(code): {"description": desc} for code, desc in sorted(route.responses.items())}
        responses.setdefault("default", {"description": "error", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        op["responses"] = responses
        if route.auth:
            op["security"] = [{"bearer": []}]
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = op
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "cachedaemon", "version": "1",
                 "description": "A local-disk cache in front of a bucket, and an LSM metastore."},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    for extend in SPEC_EXTENSIONS:
        extend(spec)
    return spec


def _op_name(path: str) -> str:
    out = path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_")
    return out or "root"


_cached: bytes | None = None


@ROUTES.route("GET", "/openapi.json", "This document.", auth=False, tag="meta",
              responses={200: "OpenAPI 3.1 JSON"})
async def openapi(call: Call) -> web.StreamResponse:
    global _cached
    if _cached is None:
        _cached = json.dumps(build_spec(), indent=1).encode()
    return web.Response(body=_cached, content_type="application/json")
