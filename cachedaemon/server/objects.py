"""Object routes: ``PUT/GET/HEAD/DELETE /v1/objects/{key}`` and the listing ``GET /v1/objects``.

Keys whose first segment begins with ``.cachedaemon`` are the daemon's own
(:mod:`cachedaemon.namespace`): every route refuses them (``400 invalid_key``,
:func:`~cachedaemon.server.keys.decode_key`), a listing prefix that begins with it is refused
too, and listings skip the daemon's objects whatever the page.

Per key, reads follow writes (``docs/cache.md``): every PUT and DELETE registers with shard 0's
key table before it touches the bucket and finishes there after; a cache-filling GET registers
before its download and publishes its staged copy through the table, which keeps it only if no
write of the key overlapped it. A hit never leaves its shard.

PUT streams the body into a cache :class:`StagingFile` (its reservation grows as bytes arrive,
bounded by the request's deadline), registers the write, uploads (from memory up to 8 MiB, else
from the staged file: the store goes multipart when large; the staged file is synced to disk
meanwhile), then publishes the staged file: shard 0 renames it over the entry if no other write
of the key overlapped this one, else removes the key's copy. ``201`` only after the bucket holds
the object and the finish is done. Any failure (body too large, client gone, upload error,
reservation deadline, shut-down cancelling the handler) closes the staging file: no entry, no
``.part``, no reservation, no object (the store aborts a failed multipart upload); a write whose
upload may have landed removes the key's copy.

GET serves a hit from one open descriptor of the cached file (its size from ``fstat``, its ETag
from the file's extended attribute ``user.cachedaemon.etag``, set before the publish; the bytes
inline when small, else by ``sendfile``), so a concurrent replace never mixes two versions. A
miss registers a fill, downloads the object once per shard (single flight), streams it to the
client while staging it, and publishes it before the last chunk leaves; when a write of the key
is in flight, or the object cannot fit, it streams through uncached. A ranged miss is answered
from the bucket's range (and does not fill the cache).

HEAD answers from the cache or the bucket without filling the cache or counting hit/miss.
DELETE registers, deletes from the bucket, then removes the cached copy as it finishes.

Runs on every shard; uses only that shard's store and cache service (and shard 0's key table,
through the cache service, with plain data).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import time
from typing import Any

from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import (
    CacheDaemonError,
    CacheFull,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    RequestTimeout,
    TooLarge,
    Unavailable,
)
from cachedaemon.namespace import RESERVED_PREFIX, is_reserved
from cachedaemon.remote.base import ListPage, ObjectInfo
from cachedaemon.server import http as web
from cachedaemon.server import metrics
from cachedaemon.server.context import Call, ShardContext
from cachedaemon.server.keys import check_not_reserved, decode_key, decode_text
from cachedaemon.server.ranges import parse_range
from cachedaemon.server.routes import ROUTES, Param

ETAG_XATTR = "user.cachedaemon.etag"
READ_INLINE_BYTES = 64 * 1024
READ_CHUNK_BYTES = 4 * 1024 * 1024
UPLOAD_FROM_MEMORY_BYTES = 8 * 1024 * 1024
LIST_DEFAULT = 1000
FILL_APPEND_WAIT_S = 5.0
FILL_RESERVE_WAIT_S = 0.05
LIST_MAX = 10000

_KEY = "/v1/objects/{key+}"


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') or etag.startswith('W/"') else f'"{etag}"'


def unquote_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


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


@ROUTES.route(
    "PUT", _KEY, "Store an object: staged into the cache, uploaded, committed.", tag="objects",
    params=(
        Param("If-None-Match", "header", "`*`: create only (412 if the object exists)."),
        Param("If-Match", "header", "Replace only this version (412 if it differs or is missing)."),
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
    if_none_match = False
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        if inm.strip() != "*":
            raise InvalidArgument("on PUT, If-None-Match supports only '*'")
        if_none_match = True
    if_match: str | None = None
    im = request.headers.get("If-Match")
    if im is not None:
        if if_none_match:
            raise InvalidArgument("If-Match and If-None-Match cannot be combined")
        if_match = unquote_etag(im)
        if not if_match:
            raise InvalidArgument("If-Match needs an ETag")
    deadline = _deadline(call)
    cache = ctx.cache.local()

    t_wait = time.perf_counter()
    try:
        staging = await cache.create_staging_file(
            key, deadline, None if clen is None else max(clen, 1))
    except CacheFull:
        metrics.RESERVATION_DEADLINE_FAILURES.inc()
        raise
    metrics.RESERVATION_WAIT.observe(time.perf_counter() - t_wait)
    done = False  # the staging file was published or discarded
    ticket: int | None = None  # registered with shard 0, not finished yet
    remove = True  # on failure, remove the key's copy (the upload may have landed)
    try:
        total = 0
        kept: list[bytes] | None = []  # the body, while it is small enough to upload from memory
        content = request.content
        while True:
            try:
                chunk = await content.readany()
            except (asyncio.CancelledError, TooLarge, RequestTimeout, InvalidArgument):
                raise
            except Exception as exc:  # client went away / malformed chunking
                raise InvalidArgument(f"request body incomplete: {exc}") from exc
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"object is over the limit of {limit} bytes")
            # The staging file buffers references (no copy) and writes them out in big
            # thread jobs; its reservation grows as bytes arrive.
            await staging.append(chunk, deadline)
            if kept is not None:
                if total <= UPLOAD_FROM_MEMORY_BYTES:
                    kept.append(chunk)
                else:
                    kept = None
        if clen is not None and total != clen:
            raise InvalidArgument(f"request body has {total} bytes, Content-Length said {clen}")
        body: Any
        if kept is not None:
            body = kept[0] if len(kept) == 1 else b"".join(kept)
        else:
            await staging.flush()  # the upload reads the staged file
            body = staging.path
        # The write is registered before it touches the bucket (docs/cache.md).
        ticket, _ = await cache.register(key, write=True)
        await failpoint("server.put.before_upload")
        t0 = time.perf_counter()
        # The staged bytes are written and synced (one thread job) while the upload runs, so
        # the commit has no disk wait of its own.
        sync = asyncio.ensure_future(staging.sync())
        try:
            info = await ctx.store.put(key, body, if_none_match=if_none_match,
                                       if_match=if_match)
        except PreconditionFailed:
            remove = False  # nothing was written
            raise
        finally:
            await asyncio.wait([sync])
            if not sync.cancelled():
                sync.exception()  # retrieved here; raised below only if the upload worked
        metrics.UPLOAD_DURATION.observe(time.perf_counter() - t0)
        metrics.UPLOAD_BYTES.inc(total)
        await failpoint("server.put.after_upload")
        sync.result()
        mine, ticket = ticket, None
        done = True
        # Sealed here, then shard 0 renames it over the entry unless another write of the
        # key overlapped this one (then the key's copy is removed instead).
        await staging.publish(mine, replace=True, remove=True,
                              xattrs={ETAG_XATTR: info.etag.encode()})
    finally:
        if ticket is not None:
            await cache.finish(ticket, remove=remove)
        if not done:
            await staging.close()
    return _json({"key": key, "size": info.size, "etag": quote_etag(info.etag)}, 201,
                 {"ETag": quote_etag(info.etag)})


# --- GET / HEAD -----------------------------------------------------------------------------


_GET_PARAMS = (Param("Range", "header", "bytes=a-b, a- or -n: 206 with Content-Range."),)


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
    request, ctx = call.request, call.ctx
    key = decode_key(call.params["key"])
    range_header = request.headers.get("Range")
    cache = ctx.cache.local()
    entry = cache.peek(key) if head else await cache.get(key)
    if entry is not None:
        resp = await _serve_cached(call, key, entry, range_header, head=head)
        if resp is not None:
            return resp
    if head:
        info = await ctx.store.head(key)
        if info is None:
            raise NotFound(f"no object {key!r}")
        byte_range = parse_range(range_header, info.size)
        return _headers_only(info.size, info.etag, byte_range, "miss")
    return await _serve_miss(call, key, range_header)


def _headers_only(size: int, etag: str, byte_range: tuple[int, int] | None, xcache: str
                  ) -> web.StreamResponse:
    headers = _object_headers(size, etag, byte_range, xcache)
    resp = web.Response(status=206 if byte_range else 200, headers=headers)
    return resp


def _object_headers(size: int, etag: str, byte_range: tuple[int, int] | None, xcache: str
                    ) -> dict[str, str]:
    headers = {"ETag": quote_etag(etag), "X-Cache": xcache, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if byte_range is not None:
        first, last = byte_range
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
    else:
        headers["Content-Length"] = str(size)
    return headers


def _open_entry(path: str) -> tuple[int, os.stat_result] | None:
    """One descriptor of a cache entry and its ``fstat``; None if it vanished or is not a
    regular file (a trim or a replace got there first: a miss)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def _entry_etag(ctx: ShardContext, key: str, fd: int, st: os.stat_result) -> str | None:
    """The ETag of the open entry: its extended attribute, else what this shard remembered
    for exactly that file (same inode, size and mtime)."""
    try:
        return os.getxattr(fd, ETAG_XATTR).decode()
    except OSError:
        pass
    known = ctx.etags.get(key)
    if known is not None and known[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
        return known[3]
    return None


async def _serve_cached(call: Call, key: str, entry: Any, range_header: str | None, *,
                        head: bool) -> web.StreamResponse | None:
    """Serve a cache hit from one descriptor (bytes, size and ETag of the same file, whatever
    replaces the entry meanwhile); None if the file vanished (treated as a miss)."""
    opened = _open_entry(str(entry.path))
    if opened is None:
        return None
    fd, st = opened
    try:
        size = st.st_size
        etag = _entry_etag(call.ctx, key, fd, st)
        if etag is None:
            info = await call.ctx.store.head(key)
            if info is None or info.size != size:
                return None  # the cached copy does not match the bucket: serve as a miss
            etag = info.etag
            call.ctx.etags[key] = (st.st_ino, st.st_size, st.st_mtime_ns, etag)
        byte_range = parse_range(range_header, size)
        if head:
            return _headers_only(size, etag, byte_range, "hit")
        first, last = byte_range if byte_range is not None else (0, size - 1)
        count = last - first + 1 if size else 0
        headers = _object_headers(size, etag, byte_range, "hit")
        status = 206 if byte_range else 200
        if count <= READ_INLINE_BYTES:
            data = os.pread(fd, count, first) if count else b""
            return web.Response(status=status, body=data, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(call.request)
        await resp.sendfile(fd, first, count)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


async def _serve_miss(call: Call, key: str, range_header: str | None) -> web.StreamResponse:
    ctx = call.ctx
    store = ctx.store
    if range_header is not None and range_header.strip():
        info = await store.head(key)
        if info is None:
            raise NotFound(f"no object {key!r}")
        byte_range = parse_range(range_header, info.size)
        if byte_range is not None:
            return await _stream_from_bucket(call, key, byte_range, info.size)
    # Whole object: single flight per shard; the leader streams and fills, followers wait
    # for the fill and then serve the cached file.
    if ctx.flights.joinable(key):
        with contextlib.suppress(Exception):
            await ctx.flights.wait(key)
        entry = await ctx.cache.local().get(key)
        if entry is not None:
            resp = await _serve_cached(call, key, entry, range_header, head=False)
            if resp is not None:
                return resp
        return await _stream_from_bucket(call, key, None, None)
    flight = ctx.flights.begin(key)
    try:
        return await _fill_and_stream(call, key)
    finally:
        ctx.flights.end(key, flight)


async def _stream_from_bucket(call: Call, key: str, byte_range: tuple[int, int] | None,
                              size: int | None) -> web.StreamResponse:
    t0 = time.perf_counter()
    result = await call.ctx.store.get(key, byte_range=byte_range)
    if result is None:
        raise NotFound(f"no object {key!r}")
    async with result:
        info = result.info
        headers = _object_headers(info.size, info.etag, result.range, "miss")
        resp = web.StreamResponse(status=206 if result.range else 200, headers=headers)
        await resp.prepare(call.request)
        n = 0
        async for chunk in result.iter_chunks():
            n += len(chunk)
            await resp.write(chunk)
        await resp.write_eof()
    metrics.DOWNLOAD_BYTES.inc(n)
    metrics.DOWNLOAD_DURATION.observe(time.perf_counter() - t0)
    return resp


async def _fill_and_stream(call: Call, key: str) -> web.StreamResponse:
    ctx = call.ctx
    cache = ctx.cache.local()
    t0 = time.perf_counter()
    # Registered before the download (docs/cache.md): a write of the key from now until the
    # publish overlaps this fill, and its copy is then not kept.
    ticket: int | None
    ticket, overlapped = await cache.register(key, write=False)
    try:
        if overlapped:  # a write is in flight: this copy could never be kept
            mine, ticket = ticket, None
            await cache.finish(mine)
            metrics.STREAM_THROUGH.inc()
            return await _stream_from_bucket(call, key, None, None)
        result = await ctx.store.get(key)
        if result is None:
            raise NotFound(f"no object {key!r}")
        async with result:
            info = result.info
            staging = None
            if info.size <= ctx.max_object_bytes:
                try:
                    # Never wait long for space on a read: fill only if it fits now (or after
                    # the in-memory trim the coordinator does at once).
                    staging = await cache.create_staging_file(
                        key, time.monotonic() + FILL_RESERVE_WAIT_S, max(info.size, 1))
                except (CacheFull, Unavailable):
                    staging = None
            if staging is None:
                metrics.STREAM_THROUGH.inc()
            headers = _object_headers(info.size, info.etag, None, "miss")
            resp = web.StreamResponse(status=200, headers=headers)
            n = 0
            try:
                await resp.prepare(call.request)
                # The last chunk is held back until the fill is published, so a client that
                # has the whole body can count on the next GET being a hit, on any shard.
                held: bytes | None = None
                async for chunk in result.iter_chunks():
                    n += len(chunk)
                    if staging is not None:
                        try:
                            await staging.append(chunk, time.monotonic() + FILL_APPEND_WAIT_S)
                        except (CacheFull, Unavailable, OSError):
                            await staging.close()
                            staging = None
                    if held is not None:
                        await resp.write(held)
                    held = chunk
                if staging is not None and n == info.size:
                    await failpoint("server.get.before_fill_commit")
                    mine, ticket = ticket, None
                    fill, staging = staging, None
                    with contextlib.suppress(CacheDaemonError):
                        # One thread job here (write, ETag, sync), then shard 0 links it
                        # in unless a write of the key overlapped this fill.
                        await fill.publish(mine, xattrs={ETAG_XATTR: info.etag.encode()})
                if held is not None:
                    await resp.write(held)
                await resp.write_eof()
            finally:
                if staging is not None:
                    await staging.close()
    finally:
        if ticket is not None:
            await cache.finish(ticket)
    metrics.DOWNLOAD_BYTES.inc(n)
    metrics.DOWNLOAD_DURATION.observe(time.perf_counter() - t0)
    return resp


# --- DELETE ---------------------------------------------------------------------------------


@ROUTES.route("DELETE", _KEY, "Delete an object from the bucket and the cache (204 also when "
              "absent).", tag="objects", responses={204: "deleted"})
async def delete_object(call: Call) -> web.StreamResponse:
    key = decode_key(call.params["key"])
    cache = call.ctx.cache.local()
    ticket, _ = await cache.register(key, write=True)
    try:
        await call.ctx.store.delete(key)
        await failpoint("server.delete.after_bucket")
    finally:
        # Whatever happened (the delete may have landed), the copy goes, after the bucket
        # call and in the key's order on shard 0.
        await cache.finish(ticket, remove=True)
    call.ctx.etags.pop(key, None)
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
