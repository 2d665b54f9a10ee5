"""``/healthz``, ``/readyz`` and ``/metrics``: open (no token) operational routes.

``/readyz`` reads the process-wide :class:`~cachedaemon.server.context.ServerState`:
200 once start-up recovery finished, 503 before that and while draining. ``/metrics`` first
refreshes the cache gauges from shard 0's accounting, then renders the process-global registry.
Served by every shard.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CONTENT_TYPE_LATEST

from cachedaemon.server import http as web
from cachedaemon.server import metrics
from cachedaemon.server.context import Call
from cachedaemon.server.metrics_merge import merge
from cachedaemon.server.routes import ROUTES


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


@ROUTES.route("GET", "/healthz", "Liveness: 200 while the process serves.", auth=False,
              tag="health", responses={200: "ok"})
async def healthz(call: Call) -> web.StreamResponse:
    return web.Response(body=_HEALTHY, raw=_JSON)


_HEALTHY = json.dumps({"status": "ok"}).encode()
_JSON = b"Content-Type: application/json\r\n"


@ROUTES.route("GET", "/readyz", "Readiness: 200 after start-up recovery, 503 before and while "
              "shutting down.", auth=False, tag="health",
              responses={200: "ready", 503: "starting or draining"})
async def readyz(call: Call) -> web.StreamResponse:
    state = call.ctx.state
    if state.ready and not state.draining:
        return json_response({"status": "ready"})
    status = "draining" if state.draining else "starting"
    return web.Response(status=503, text=json.dumps({
        "status": status, "error": {"code": "unavailable", "message": f"not ready: {status}"}}),
        content_type="application/json", headers={"Retry-After": "1"})


@ROUTES.route("GET", "/metrics", "Prometheus metrics of the whole process (all shards).",
              auth=False, tag="health", responses={200: "text exposition format"})
async def metrics_route(call: Call) -> web.StreamResponse:
    cache = call.ctx.cache
    if cache is not None:
        try:
            stats = await cache.local().stats()
            metrics.set_cache_snapshot(_as_dict(stats))
            metrics.set_cache_insight(await cache.local().mrc())
        except Exception:
            pass
    state = call.ctx.state
    texts: list[tuple[int, str]] = [(0, metrics.render_cache())]
    if state.processes == 1 or state.smp is None:
        texts.append((0, metrics.render_local()))
    else:
        parts = await asyncio.gather(*(state.smp.call(i, "shard", "metrics_text")
                                       for i in range(state.processes)), return_exceptions=True)
        texts += [(i, str(p)) for i, p in enumerate(parts) if not isinstance(p, BaseException)]
    resp = web.Response(body=merge(texts).encode())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def _as_dict(stats: object) -> dict[str, object]:
    if isinstance(stats, dict):
        return stats
    fields = getattr(stats, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(stats, name) for name in fields}
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}
