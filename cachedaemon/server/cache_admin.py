"""Cache administration: ``GET /v1/cache``, ``POST /v1/cache/trim``,
``DELETE /v1/cache/objects/{key}``.

Figures come from shard 0's coordinator (the accounting lives there) plus the process-wide
hit/miss counters; the trim runs on shard 0, unthrottled, down to the low watermark. Dropping a
local copy is a write of the key in shard 0's per-key order (``docs/cache.md``), so nothing that
began before it puts the copy back. Reserved keys are refused (``400 invalid_key``). Served by
every shard.
"""

from __future__ import annotations

import json
import time
from typing import Any

from cachedaemon.server import http as web
from cachedaemon.server import metrics
from cachedaemon.server.context import Call
from cachedaemon.server.keys import decode_key
from cachedaemon.server.routes import ROUTES


def stats_dict(stats: Any) -> dict[str, Any]:
    if isinstance(stats, dict):
        return stats
    fields = getattr(stats, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(stats, name) for name in fields if name != "metrics"}
    return {k: v for k, v in vars(stats).items() if not k.startswith("_")}


async def cache_figures(call: Call) -> dict[str, int]:
    stats = await call.ctx.cache.local().stats()
    metrics.set_cache_snapshot(stats_dict(stats))
    figures: dict[str, int] = stats.as_api()
    figures["shards"] = call.ctx.state.shards
    return figures


@ROUTES.route("GET", "/v1/cache", "Cache figures (all shards).", tag="cache",
              responses={200: "{bytes_used, objects, bytes_reserved, objects_reserved, "
                              "max_bytes, max_objects, hits, misses, trims, shards}"})
async def get_cache(call: Call) -> web.StreamResponse:
    return web.Response(text=json.dumps(await cache_figures(call)),
                        content_type="application/json")


@ROUTES.route("POST", "/v1/cache/trim", "Trim now, unthrottled, to the low watermark.",
              tag="cache", responses={200: "{bytes_freed, objects_freed}"})
async def trim_cache(call: Call) -> web.StreamResponse:
    t0 = time.perf_counter()
    result = await call.ctx.cache.local().trim()
    metrics.TRIM_DURATION.observe(time.perf_counter() - t0)
    return web.Response(text=json.dumps({"bytes_freed": int(result.bytes_freed),
                                         "objects_freed": int(result.objects_freed)}),
                        content_type="application/json")


@ROUTES.route("DELETE", "/v1/cache/objects/{key+}", "Drop the local copy only (204).",
              tag="cache", responses={204: "dropped (also when not cached)"})
async def drop_cached(call: Call) -> web.StreamResponse:
    key = decode_key(call.params["key"])
    # A write of the key in the per-key order (docs/cache.md): no fill or PUT that began
    # before the drop puts a copy back afterwards.
    await call.ctx.cache.local().drop(key)
    call.ctx.etags.pop(key, None)
    return web.Response(status=204)
