"""Object routes: ``PUT/GET/HEAD/DELETE /v1/objects/{key}`` and the listing ``GET /v1/objects``.

Keys whose first segment begins with ``.cachedaemon`` are the daemon's own
(:mod:`cachedaemon.namespace`): every route refuses them (``400 invalid_key``,
:func:`~cachedaemon.server.keys.decode_key`), a listing prefix that begins with it is refused
too, and listings skip the daemon's objects whatever the page.

The operations themselves are the object path, :mod:`cachedaemon.server.objectops`, which the
S3 endpoint runs too; these routes parse ``/v1``'s requests and format its answers.

What a PUT, GET, HEAD and DELETE do — the per-key ordering through shard 0's key table,
staging, upload and publish, hits from one descriptor, single-flight fills — is described
once, in :mod:`cachedaemon.server.objectops`.

Runs on every shard; uses only that shard's store and cache service (and shard 0's key table,
through the cache service, with plain data).
"""

from __future__ import annotations

import json
import time
from typing import Any

from cachedaemon.errors import InvalidArgument, PreconditionFailed, TooLarge
from cachedaemon.namespace import RESERVED_PREFIX, is_reserved
from cachedaemon.remote.base import ListPage, ObjectInfo
from cachedaemon.server import http as web
from cachedaemon.server import objectops
from cachedaemon.server.conditionals import ANY, parse_etag_list, strong_match, weak_match
from cachedaemon.server.context import Call
from cachedaemon.server.keys import check_not_reserved, decode_key, decode_text
from cachedaemon.server.objectops import ETAG_XATTR, quote_etag
from cachedaemon.server.routes import ROUTES, Param

__all__ = ["ETAG_XATTR", "quote_etag", "visible_page"]

LIST_DEFAULT = 1000
LIST_MAX = 10000

_KEY = "/v1/objects/{key+}"


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload),
                        content_type="application/json", headers=headers)


def _deadline(call: Call) -> float:
    raw = call.request.headers.get("X-Deadline-Ms")
    if raw is None:
        return time.monotonic() + call.ctx.settings.cache.reserve_deadline
    try:
        ms = int(raw.strip())
    except ValueError as exc:
        raise InvalidArgument(f"X-Deadline-Ms must be an integer (milliseconds), got {raw!r}"
                              ) from exc
    if ms < 0:
        raise InvalidArgument(f"X-Deadline-Ms must not be negative, got {ms}")
    return time.monotonic() + min(ms, 10**9) / 1000.0


# --- PUT ------------------------------------------------------------------------------------


async def _put_preconditions(call: Call, key: str) -> tuple[bool, str | None]:
    """RFC 9110 preconditions of a PUT, checked before the body is read, as what the store's
    conditional put enforces atomically: ``(if_none_match, if_match)`` (``if_match`` the ETag
    that must still be current when the upload lands). ``If-None-Match: *`` creates only; an
    ``If-Match`` list (or ``*``) replaces only a matching current version; an
    ``If-None-Match`` list refuses a matching one."""
    headers = call.request.headers
    im = parse_etag_list(headers.get("If-Match"))
    inm = parse_etag_list(headers.get("If-None-Match"))
    if im is None and inm is None:
        return False, None
    if im is not None and inm is not None:
        raise InvalidArgument("If-Match and If-None-Match cannot be combined on PUT")
    if inm == ANY:
        return True, None
    current = await call.ctx.store.head(key)
    etag = None if current is None else current.etag
    if im is not None:
        if not strong_match(im, etag):
            raise PreconditionFailed(
                "If-Match: the object does not exist" if etag is None else
                f'If-Match: the object\'s ETag is "{etag}"')
        return False, etag
    assert inm is not None
    if weak_match(inm, etag):
        raise PreconditionFailed(f'If-None-Match: the object\'s ETag is "{etag}"')
    return etag is None, etag


@ROUTES.route(
    "PUT", _KEY, "Store an object: staged into the cache, uploaded, committed.", tag="objects",
    params=(
        Param("If-None-Match", "header", "`*`: create only (412 if the object exists); a list "
              "of ETags: 412 if the current version is one of them."),
        Param("If-Match", "header", "ETags (a list, compared strongly) or `*`: replace only a "
              "matching current version (412 if none matches or the object is missing)."),
        Param("X-Deadline-Ms", "header", "How long to wait for cache space (default from config).",
              {"type": "integer", "minimum": 0}),
    ),
    request_body="application/octet-stream", handles_expect=True,
    responses={201: "stored: {key, size, etag}", 400: "invalid key", 412: "precondition failed",
               413: "too large", 502: "bucket failed", 503: "cache full / shutting down"},
)
async def put_object(call: Call) -> web.StreamResponse:
    request, ctx = call.request, call.ctx
    key = decode_key(call.params["key"])
    limit = ctx.max_object_bytes
    clen = request.content_length
    if clen is not None and clen > limit:
        raise TooLarge(f"object of {clen} bytes is over the limit of {limit} bytes")
    if_none_match, if_match = await _put_preconditions(call, key)
    deadline = _deadline(call)
    info = await objectops.put(ctx, key, request.content.readany, clen, deadline=deadline,
                               if_none_match=if_none_match, if_match=if_match)
    return _json({"key": key, "size": info.size, "etag": quote_etag(info.etag)}, 201,
                 {"ETag": quote_etag(info.etag)})


# --- GET / HEAD -----------------------------------------------------------------------------


_GET_PARAMS = (
    Param("Range", "header", "bytes=a-b, a- or -n: 206 with Content-Range (the unit in any "
          "case; several ranges: the whole object)."),
    Param("If-Match", "header", "ETags (compared strongly) or `*`: 412 unless one matches."),
    Param("If-None-Match", "header", "ETags (compared weakly) or `*`: 304 if one matches."),
    Param("If-Range", "header", "An ETag: the Range applies only to that version (else 200)."),
)


@ROUTES.route("GET", _KEY, "Read an object (from the cache, or the bucket filling the cache).",
              tag="objects", params=_GET_PARAMS,
              responses={200: "the bytes", 206: "a range", 404: "no such object",
                         416: "unsatisfiable range"})
async def get_object(call: Call) -> web.StreamResponse:
    return await _get(call, head=False)


@ROUTES.route("HEAD", _KEY, "Object headers; neither fills the cache nor counts as hit/miss.",
              tag="objects", responses={200: "headers", 404: "no such object"})
async def head_object(call: Call) -> web.StreamResponse:
    return await _get(call, head=True)


async def _get(call: Call, *, head: bool) -> web.StreamResponse:
    key = decode_key(call.params["key"])
    get = dict.get  # the headers' keys are lower case: skip the case folding
    headers = call.request.headers
    range_header = get(headers, "range")
    if_match, if_none_match = get(headers, "if-match"), get(headers, "if-none-match")
    if_range = get(headers, "if-range")
    cond = None if if_match is None and if_none_match is None and if_range is None else \
        objectops.Conditions(call.request.method, if_match, if_none_match, if_range)
    return await objectops.read(call.ctx, call.request, key, range_header, cond=cond,
                                head=head)


# --- DELETE ---------------------------------------------------------------------------------


@ROUTES.route("DELETE", _KEY, "Delete an object from the bucket and the cache (204 also when "
              "absent).", tag="objects", responses={204: "deleted"})
async def delete_object(call: Call) -> web.StreamResponse:
    await objectops.delete(call.ctx, decode_key(call.params["key"]))
    return web.Response(status=204)


# --- LIST -----------------------------------------------------------------------------------


@ROUTES.route(
    "GET", "/v1/objects", "List objects in key order, a page at a time.", tag="objects",
    params=(
        Param("prefix", "query", "Only keys starting with this."),
        Param("start_after", "query", "Start after this key (the previous page's `next`)."),
        Param("limit", "query", "Page size (default 1000, max 10000).",
              {"type": "integer", "minimum": 1, "maximum": LIST_MAX}),
    ),
    responses={200: '{"objects": [{key, size, etag}], "next": key|null}', 400: "bad query"},
)
async def list_objects(call: Call) -> web.StreamResponse:
    query = _query(call)
    prefix = query.get("prefix", "")
    start_after = query.get("start_after") or None
    raw_limit = query.get("limit")
    limit = LIST_DEFAULT
    if raw_limit is not None:
        if not raw_limit.isdigit() or len(raw_limit) > 9:
            raise InvalidArgument(f"limit must be an integer from 1 to {LIST_MAX}, "
                                  f"got {raw_limit[:40]!r}")
        limit = int(raw_limit)
        if not 1 <= limit <= LIST_MAX:
            raise InvalidArgument(f"limit must be from 1 to {LIST_MAX}, got {limit}")
    if "\x00" in prefix or (start_after and "\x00" in start_after):
        raise InvalidArgument("prefix and start_after may not contain NUL")
    check_not_reserved(prefix, "listing prefix")  # only the daemon's objects could match
    page = await visible_page(call.ctx.store, prefix, start_after, limit)
    return _json({
        "objects": [{"key": o.key, "size": o.size, "etag": quote_etag(o.etag)}
                    for o in page.objects],
        "next": page.next,
    })


#: A listing that meets a reserved key skips to here: every key that begins with the reserved
#: prefix and is shorter than this (so every key the daemon writes) sorts before it.
RESERVED_SKIP = RESERVED_PREFIX + "\U0010ffff" * 8


async def visible_page(store: Any, prefix: str, start_after: str | None, limit: int
                       ) -> ListPage:
    """One page of at most ``limit`` objects that are not the daemon's own, in key order.

    The reserved keys are one contiguous run in key order (all begin with
    :data:`~cachedaemon.namespace.RESERVED_PREFIX`): a page that meets one continues the
    listing from :data:`RESERVED_SKIP` (or past the last reserved key seen, should a key sort
    beyond that), so a bucket full of metastore files costs one extra request, not one per
    thousand files. ``next`` is the last key returned when more may follow."""
    out: list[ObjectInfo] = []
    cursor = start_after
    while True:
        page = await store.list(prefix, cursor, limit)
        objects = page.objects
        for i, obj in enumerate(objects):
            if is_reserved(obj.key):
                continue
            out.append(obj)
            if len(out) == limit:
                rest = any(not is_reserved(o.key) for o in objects[i + 1:])
                more = rest or page.next is not None
                return ListPage(out, obj.key if more else None)
        if page.next is None:
            return ListPage(out, None)
        cursor = page.next
        if is_reserved(cursor) and cursor < RESERVED_SKIP:
            cursor = RESERVED_SKIP


def _query(call: Call) -> dict[str, str]:
    """The query string, strictly decoded (bad UTF-8 or escapes -> 400)."""
    raw = call.request.raw_path.partition("?")[2]
    out: dict[str, str] = {}
    if not raw:
        return out
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = decode_text(name.replace("+", " "), "query parameter name")
        if name in out:
            raise InvalidArgument(f"query parameter {name!r} given twice")
        out[name] = decode_text(value.replace("+", " "), f"query parameter {name!r}")
    return out
