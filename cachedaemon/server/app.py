"""The per-shard HTTP front: dispatch through the route table plus the cross-cutting concerns.

:func:`make_handler` builds the one request handler of a shard's low-level aiohttp server
(``web.Server``; no aiohttp router: routing is :data:`~cachedaemon.server.routes.ROUTES`
matched on the RAW path). Around every handler it does, in order: route match (unknown ->
``404 not_found``), bearer-token auth on routes that need it (``401 unauthorized``), refusal of
new ``/v1`` work while draining (``503 unavailable``), in-flight accounting for the drain,
exception -> JSON error mapping, the request metrics (route label = template) and the JSON
access log. :func:`start_shard_server` serves it on a listening socket.

Runs on each shard's own loop; the handler only touches its shard's :class:`ShardContext`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from typing import Any

from aiohttp import web

from cachedaemon.errors import CacheDaemonError
from cachedaemon.server import metrics
from cachedaemon.server.context import Call, ShardContext
from cachedaemon.server.errors import error_response, internal_error, json_error
from cachedaemon.server.routes import ROUTES, RouteTable

log = logging.getLogger("cachedaemon.server")
access_log = logging.getLogger("cachedaemon.access")

UNMATCHED = "unmatched"
METRIC_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


def make_handler(ctx: ShardContext, table: RouteTable = ROUTES):  # type: ignore[no-untyped-def]
    token = ctx.settings.server.auth_token
    expected = f"Bearer {token}".encode() if token else None
    json_log = ctx.settings.server.log_format == "json"
    # Labelled children cached per label set: ``labels()`` takes a lock and builds a key.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[tuple[str, str], Any] = {}

    def count(method: str, template: str, status: int, elapsed: float) -> None:
        if method not in METRIC_METHODS:
            method = "OTHER"  # clients choose methods: keep the label set bounded
        c = counters.get((method, template, status))
        if c is None:
            c = counters[(method, template, status)] = metrics.HTTP_REQUESTS.labels(
                method, template, str(status))
        c.inc()
        t = timers.get((method, template))
        if t is None:
            t = timers[(method, template)] = metrics.HTTP_DURATION.labels(method, template)
        t.observe(elapsed)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        start = time.perf_counter()
        raw_path = request.raw_path.split("?", 1)[0]
        method = request.method
        route, params, known = table.match(method, raw_path)
        template = route.template if route is not None else UNMATCHED
        resp: web.StreamResponse
        try:
            if route is None:
                if known:
                    allow = ", ".join(table.allowed(raw_path))
                    resp = json_error(404, "not_found",
                                      f"no route {method} {raw_path[:200]} (allowed: {allow})",
                                      {"Allow": allow})
                else:
                    resp = json_error(404, "not_found", f"no route {method} {raw_path[:200]}")
            elif route.auth and expected is not None and not _authorized(request, expected):
                resp = json_error(401, "unauthorized", "missing or wrong bearer token",
                                  {"WWW-Authenticate": 'Bearer realm="cachedaemon"'})
            elif route.auth and (ctx.state.draining or not ctx.state.ready):
                if ctx.state.draining:
                    resp = json_error(503, "unavailable", "the daemon is shutting down",
                                      {"Retry-After": "1", "Connection": "close"})
                else:
                    resp = json_error(503, "unavailable", "the daemon is starting",
                                      {"Retry-After": "1"})
            else:
                ctx.enter()
                try:
                    if not route.handles_expect:
                        await send_continue(request)
                    resp = await route.handler(Call(request, params, ctx, template))
                finally:
                    ctx.leave()
        except CacheDaemonError as exc:
            resp = error_response(exc)
        except web.HTTPException as exc:
            resp = json_error(exc.status, "invalid_argument" if exc.status < 500 else "internal",
                              exc.reason)
        except asyncio.CancelledError:
            count(method, template, 499, time.perf_counter() - start)
            raise
        except ConnectionError:
            # The client went away mid-response: nothing more can be sent. Close the
            # connection and hand aiohttp a response it will fail to send, quietly.
            count(method, template, 499, time.perf_counter() - start)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=499)
        except Exception as exc:  # a bug: answer 500, keep serving
            resp = internal_error(exc)
        status = resp.status
        elapsed = time.perf_counter() - start
        count(method, template, status, elapsed)
        if json_log:
            access_log.info(json.dumps({
                "ts": time.time(), "shard": ctx.shard, "method": method, "route": template,
                "path": raw_path[:1024], "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "remote": request.remote,
            }))
        return resp

    return handle


async def send_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` so the client sends its body now (curl waits 1 s)."""
    if request.version >= (1, 1) and \
            request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _authorized(request: web.BaseRequest, expected: bytes) -> bool:
    got = request.headers.get("Authorization", "")
    try:
        got_b = got.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(got_b, expected)


async def start_shard_server(ctx: ShardContext, sock: socket.socket) -> web.ServerRunner:
    """Serve ``ctx``'s shard on ``sock`` (already bound and listening). Returns the runner."""
    server = web.Server(make_handler(ctx), access_log=None, handler_cancellation=False)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    return runner
