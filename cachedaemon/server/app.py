"""The per-shard HTTP front: dispatch through the route table plus the cross-cutting concerns.

:func:`make_handler` builds the one application callable of a shard's
:class:`~cachedaemon.server.http.HttpServer` (routing is
:data:`~cachedaemon.server.routes.ROUTES` matched on the RAW path). Around every handler it
does, in order: route match (unknown -> ``404 not_found``), bearer-token auth on routes that
need it (``401 unauthorized``; the scheme name is case-insensitive), refusal of new ``/v1``
work while draining (``503 unavailable``), in-flight accounting for the drain, exception ->
JSON error mapping, the request metrics (route label = template; the labelled children are
resolved once per route and status) and the JSON access log. :func:`start_shard_server` serves
it on a listening socket.

A request for one metastore domain (a route with ``{domain}``) that arrives on a shard other
than the domain's owner is **forwarded** whole — method, target, headers, body — to the owner,
which runs the same handler and sends back status, headers and body (``docs/shards.md``): the
domain's state never leaves its shard. Only the accepting shard counts and logs the request.

Runs on each shard's own loop; the handler only touches its shard's :class:`ShardContext`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from cachedaemon.core.executor import BACKGROUND
from cachedaemon.core.scheduling import scheduler
from cachedaemon.errors import CacheDaemonError, InvalidArgument
from cachedaemon.server import metrics
from cachedaemon.server.context import Call, ShardContext
from cachedaemon.server.errors import error_response, internal_error, json_error
from cachedaemon.server.http import HttpServer, Limits, Request, Response, StreamResponse
from cachedaemon.server.keys import decode_text
from cachedaemon.server.routes import ROUTES, Route, RouteTable

log = logging.getLogger("cachedaemon.server")
access_log = logging.getLogger("cachedaemon.access")

UNMATCHED = "unmatched"
METRIC_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})

App = Callable[..., Awaitable[StreamResponse]]
#: Forwarded request bodies may be at least this large (kv values are up to 4 MiB).
FORWARD_MIN_BODY_BYTES = 8 << 20
#: Headers that describe one connection, not the request: never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "expect", "te", "trailer", "upgrade"})


def make_handler(ctx: ShardContext, table: RouteTable = ROUTES) -> App:
    token = ctx.settings.server.auth_token
    expected = token.encode("latin-1", "replace") if token else None
    json_log = ctx.settings.server.log_format == "json"
    record = metrics.REQUEST_STATS.record
    perf = time.perf_counter
    thread_time = time.thread_time
    sched = scheduler()
    foreground_begin, foreground_end = sched.foreground_begin, sched.foreground_end

    def count(method: str, template: str, status: int, elapsed: float) -> None:
        if method not in METRIC_METHODS:
            method = "OTHER"  # clients choose methods: keep the label set bounded
        record(method, template, status, elapsed)

    async def handle(request: Request, *, forwarded: bool = False) -> StreamResponse:
        start = perf()
        raw_path = request.path
        method = request.method
        route, params, known = table.match(method, raw_path)
        template = route.template if route is not None else UNMATCHED
        resp: StreamResponse
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
                    owner = None if forwarded or not route.domain_routed else \
                        _domain_owner(ctx, route, params)
                    if owner is not None and owner != ctx.shard:
                        resp = await _forward(ctx, owner, request)
                    elif route.domain_routed:
                        # Metastore work: the background's share of the loop (core/scheduling),
                        # measured only while object requests are about.
                        token = BACKGROUND.set(True)
                        try:
                            if sched.owes():
                                await sched.turn()
                            cpu = thread_time() if sched.foreground_active else -1.0
                            try:
                                resp = await route.handler(Call(request, params, ctx, template))
                            finally:
                                if cpu >= 0.0:
                                    sched.charge(thread_time() - cpu)
                        finally:
                            BACKGROUND.reset(token)
                    else:
                        foreground_begin()
                        try:
                            resp = await route.handler(Call(request, params, ctx, template))
                        finally:
                            foreground_end()
                finally:
                    ctx.leave()
        except CacheDaemonError as exc:
            resp = error_response(exc)
        except asyncio.CancelledError:
            count(method, template, 499, perf() - start)
            raise
        except ConnectionError:
            # The client went away mid-request: nothing more can be sent.
            count(method, template, 499, perf() - start)
            raise
        except Exception as exc:  # a bug: answer 500, keep serving
            resp = internal_error(exc)
        status = resp.status
        if forwarded:
            return resp  # counted and logged by the shard that accepted it
        elapsed = perf() - start
        count(method, template, status, elapsed)
        if json_log:
            access_log.info(json.dumps({
                "ts": time.time(), "shard": ctx.shard, "method": method, "route": template,
                "path": raw_path[:1024], "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "remote": request.remote,
            }))
        return resp

    ctx.app = handle
    return handle


def _domain_owner(ctx: ShardContext, route: Route, params: dict[str, str]) -> int | None:
    """The shard owning the request's domain, or None (not a domain route; one shard; a
    malformed name, which the handler refuses on this shard)."""
    if ctx.state.processes == 1 or not route.domain_routed:
        return None
    raw = params.get("domain", "")
    try:
        return ctx.state.placement.owner(decode_text(raw, "domain name"))
    except InvalidArgument:
        return None


async def _forward(ctx: ShardContext, owner: int, request: Request) -> StreamResponse:
    limit = max(ctx.settings.metastore.max_batch_bytes, FORWARD_MIN_BODY_BYTES)
    body = await request.content.read_all(limit)
    headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
    metrics.FORWARDED.inc()
    status, out_headers, out_body = await ctx.forward(
        owner, request.method, request.raw_path, headers, body, request.remote)
    return Response(status=status, body=out_body, headers=out_headers)


async def serve_forwarded(ctx: ShardContext, method: str, target: str, headers: dict[str, str],
                          body: bytes, remote: str) -> tuple[int, dict[str, str], bytes]:
    """Answer a request another shard received for a domain this shard owns."""
    assert ctx.app is not None
    resp = await ctx.app(Request.forwarded(method, target, headers, body, remote),
                         forwarded=True)
    out = resp.headers
    if resp.raw:  # header lines a hot path encoded once: they travel as plain headers
        out = dict(out)
        for line in resp.raw.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(": ")
                out[name] = value
    return resp.status, out, resp.body


def _authorized(request: Request, expected: bytes) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case (RFC 9110 §11.1)."""
    got = request.headers.get("authorization")
    if got is None:
        return False
    scheme, _, credentials = got.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:
        got_b = credentials.strip().encode("latin-1")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(got_b, expected)


def server_limits(ctx: ShardContext, max_connections: int) -> Limits:
    s = ctx.settings.server
    return Limits(header_timeout=s.header_timeout, body_timeout=s.body_timeout,
                  idle_timeout=s.idle_timeout, max_connections=max_connections)


async def start_shard_server(ctx: ShardContext, sock: socket.socket,
                             max_connections: int) -> HttpServer:
    """Serve ``ctx``'s shard on ``sock`` (already bound and listening)."""
    server = HttpServer(make_handler(ctx), server_limits(ctx, max_connections))
    await server.start(sock)
    return server
