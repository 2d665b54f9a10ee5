"""Seeing into the cache and steering it (issue 18): ``GET /v1/cache/mrc``,
``GET /v1/cache/explain/{key}``, ``GET /v1/cache/reservations``, ``POST``/``GET
/v1/cache/warm``, ``POST /v1/cache/hotset`` and ``GET /v1/cache/hotsets``.

The curve, the eviction log and the reservations live in shard 0's coordinator; explain also
asks every shard for the staging files it has in flight for the key. The cache service
(:class:`~cachedaemon.cache.service.CacheService`) answers from any shard, by message where
needed. Warm-ups and hot set publishing run on shard 0 (:mod:`cachedaemon.server.warm`),
reached through the ``shard`` service. Served by every shard. Reserved keys are refused by
explain (``400 invalid_key``) as by every other route that names an object.
"""

from __future__ import annotations

import json
from typing import Any

from cachedaemon.errors import InvalidArgument
from cachedaemon.server import http as web
from cachedaemon.server.context import Call
from cachedaemon.server.keys import decode_key
from cachedaemon.server.routes import ROUTES
from cachedaemon.units import parse_duration, parse_size

_MAX_BODY = 64 * 1024


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload),
                        content_type="application/json")


async def _on_shard0(call: Call, method: str, *args: Any) -> Any:
    """The ``shard`` service's ``method`` on shard 0 (where warm-ups and publishing run)."""
    smp = call.ctx.state.smp
    return await smp.call(0, "shard", method, *args)


@ROUTES.route(
    "GET", "/v1/cache/mrc", "The miss-ratio curve: the byte hit ratio the cache would have at "
    "each size from an eighth of max_bytes to four times.", tag="cache",
    responses={200: "{enabled, max_bytes, sizes, hit_ratios, sample_rate, reference_bytes, "
                    "samples, sampled_keys, reads, bytes_read}"})
async def get_mrc(call: Call) -> web.StreamResponse:
    return _json(await call.ctx.cache.local().mrc())


@ROUTES.route(
    "GET", "/v1/cache/explain/{key+}", "Why a key is, or is not, in the cache.", tag="cache",
    responses={200: "{key, state: cached|in_progress|absent, cached, in_progress, evicted, "
                    "log_since}", 400: "invalid or reserved key"})
async def explain(call: Call) -> web.StreamResponse:
    key = decode_key(call.params["key"])
    return _json(await call.ctx.cache.local().explain(key))


@ROUTES.route(
    "GET", "/v1/cache/reservations", "Every live reservation of cache space and every queued "
    "request, with owners, classes, ages and deadlines.", tag="cache",
    responses={200: "{reservations: [{id, shard, class, bytes, objects, age_s, owner, stale}], "
                    "waiters: [{shard, class, bytes, objects, age_s, deadline_s, owner}], "
                    "warn_age_s, stale}"})
async def reservations(call: Call) -> web.StreamResponse:
    return _json(await call.ctx.cache.local().reservations())


@ROUTES.route(
    "POST", "/v1/cache/warm", "Start filling the cache from a published hot set (one warm-up "
    "at a time); 202 with its status, 200 with the running one's.", tag="cache",
    request_body="application/json",
    responses={200: "a warm-up runs already: its status", 202: "started: its status",
               400: "bad body", 404: "no such hot set (in the status' error)"})
async def start_warm(call: Call) -> web.StreamResponse:
    raw = await call.request.content.read_all(_MAX_BODY, "warm body")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object")
    unknown = set(body) - {"from", "bytes", "timeout_s", "timeout"}
    if unknown:
        raise InvalidArgument(f"unknown fields {sorted(unknown)}: from, bytes, timeout_s")
    source = body.get("from", "any")
    if not isinstance(source, str) or not source:
        raise InvalidArgument("from must be a node id or any")
    if source != "any":
        from cachedaemon.namespace import validate_node_id

        problem = validate_node_id(source)
        if problem:
            raise InvalidArgument(f"from: {problem}")
    max_bytes = _size(body.get("bytes"))
    timeout = _duration(body.get("timeout_s", body.get("timeout")))
    started, status = await _on_shard0(call, "warm_start", source, max_bytes, timeout)
    return _json(status, 202 if started else 200)


def _size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(f"bytes must be a size (123, 64MiB), not {value!r}")
    try:
        n = parse_size(value)
    except ValueError as exc:
        raise InvalidArgument(f"bytes: {exc}") from None
    if n < 0:
        raise InvalidArgument("bytes must not be negative")
    return n


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidArgument(f"timeout_s must be seconds or a duration, not {value!r}")
    try:
        seconds = float(value) if not isinstance(value, str) else parse_duration(value)
    except ValueError as exc:
        raise InvalidArgument(f"timeout_s: {exc}") from None
    if not seconds > 0:
        raise InvalidArgument("timeout_s must be positive")
    return seconds


@ROUTES.route("GET", "/v1/cache/warm", "The current (or last) warm-up's progress.",
              tag="cache",
              responses={200: "{state, source, published, started, finished, elapsed_s, "
                              "budget_bytes, keys_total, bytes_total, keys_done, bytes_done, "
                              "keys_skipped, keys_failed, error}"})
async def warm_status(call: Call) -> web.StreamResponse:
    return _json(await _on_shard0(call, "warm_status"))


@ROUTES.route("POST", "/v1/cache/hotset", "Publish this daemon's hot set now.", tag="cache",
              responses={200: "{node, published, entries, bytes, key, object_bytes}"})
async def publish_hotset(call: Call) -> web.StreamResponse:
    return _json(await _on_shard0(call, "publish_hotset"))


@ROUTES.route("GET", "/v1/cache/hotsets", "The hot sets published in the bucket, newest first.",
              tag="cache",
              responses={200: "{hotsets: [{node, published, entries, bytes, object_bytes}]}"})
async def list_hotsets(call: Call) -> web.StreamResponse:
    from cachedaemon.server.warm import describe_hotsets

    return _json({"hotsets": await describe_hotsets(call.ctx)})
