"""The object path: PUT, GET, HEAD and DELETE of one object through the cache, the one code
both APIs run (``/v1``'s routes, :mod:`cachedaemon.server.objects`, and the S3 endpoint,
:mod:`cachedaemon.server.s3`). Callers have checked the key (valid, not reserved) and give a
PUT's body as a reader; they choose an answer's headers with a ``describe`` function, called
with the :class:`Served` version just before anything is sent (it may refuse by raising, and
nothing has been sent then): ``/v1``'s are :func:`plain_headers`; S3's carry the object's
metadata, read from the same open file as the bytes on a hit (``Served.fd``), or taken from the
bucket's answer on a miss (``Served.info``). A PUT passes S3's metadata and part layout to the
store (``options``).

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
miss registers a fill, downloads the object once for the whole daemon (single flight: a fill
of the key on any shard goes first, the others then serve its copy), streams it to the client
while staging it, and publishes it before the last chunk leaves; when a write of the key is in
flight, or the object cannot fit, it streams through uncached. ``/v1``'s RFC 9110 conditions
(:class:`Conditions`) are evaluated on the version served. A ranged miss is answered
from the bucket's range (and does not fill the cache).

HEAD answers from the cache or the bucket without filling the cache or counting hit/miss.
DELETE registers, deletes from the bucket, then removes the cached copy as it finishes.

Runs on every shard; uses only that shard's store and cache service (and shard 0's key table,
through the cache service, with plain data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachedaemon.cache.evictions import EvictionReason
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
from cachedaemon.remote.base import ObjectInfo
from cachedaemon.server import http as web
from cachedaemon.server import metrics
from cachedaemon.server.conditionals import Outcome, evaluate, range_applies
from cachedaemon.server.context import ShardContext
from cachedaemon.server.ranges import parse_range

ETAG_XATTR = "user.cachedaemon.etag"
READ_INLINE_BYTES = 64 * 1024
UPLOAD_FROM_MEMORY_BYTES = 8 * 1024 * 1024
FILL_APPEND_WAIT_S = 5.0
FILL_RESERVE_WAIT_S = 0.05


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') or etag.startswith('W/"') else f'"{etag}"'


@dataclass(frozen=True, slots=True)
class Served:
    """The version an answer is about: its size and ETag, the range served (``None``: all of
    it), ``hit``/``miss``, and where it comes from: the bucket's description on a miss
    (``info``, with the metadata), the open cached file on a hit (``fd``)."""

    size: int
    etag: str
    byte_range: tuple[int, int] | None
    xcache: str
    info: ObjectInfo | None = None
    fd: int | None = None


#: Builds an answer's headers for the version served (Content-Length and Content-Range
#: included); may raise to refuse the answer before anything is sent.
Describe = Callable[[Served], dict[str, str]]

#: The header lines (encoded, Content-Length aside) of a whole small hit read from open file
#: ``fd`` of ``size`` bytes, or None to answer through the general path (with a Describe).
HitHeaders = Callable[[int, int], bytes | None]


# --- PUT ------------------------------------------------------------------------------------


async def put(ctx: ShardContext, key: str, read: Callable[[], Awaitable[bytes]],
              length: int | None, *, deadline: float, if_none_match: bool = False,
              if_match: str | None = None, options: dict[str, Any] | None = None
              ) -> ObjectInfo:
    """Store ``key``: the bytes ``read()`` returns (``b""`` at the end; ``length`` if known)
    are staged in the cache under reservations, uploaded (``options`` go to the store's put:
    metadata, part layout), and published (see the module doc); the bucket's description.
    REQUIRES: a valid, unreserved key."""
    limit = ctx.max_object_bytes
    clen = length
    if clen is not None and clen > limit:
        raise TooLarge(f"object of {clen} bytes is over the limit of {limit} bytes")
    cache = ctx.cache.local()

    t_wait = time.perf_counter()
    try:
        # Paced by the body: the first chunk of space now, more as bytes arrive (a client
        # announcing a huge Content-Length and sending nothing holds little).
        initial = None if clen is None else min(max(clen, 1),
                                                cache.settings.staging_initial_bytes)
        staging = await cache.create_staging_file(key, deadline, initial, klass="write",
                                                  owner=f"PUT {key}")
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
        while True:
            try:
                chunk = await read()
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
            info: ObjectInfo = await ctx.store.put(key, body, if_none_match=if_none_match,
                                                   if_match=if_match, **(options or {}))
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
    return info


# --- GET / HEAD -----------------------------------------------------------------------------


class Conditions:
    """A GET's or HEAD's ``If-Match``, ``If-None-Match`` and ``If-Range`` (RFC 9110 §13, see
    :mod:`cachedaemon.server.conditionals`), evaluated against the ETag of the version about
    to be served (``/v1``; the S3 endpoint applies S3's rules in its ``describe``)."""

    __slots__ = ("if_match", "if_none_match", "if_range", "method")

    def __init__(self, method: str, if_match: str | None, if_none_match: str | None,
                 if_range: str | None) -> None:
        self.method = method
        self.if_match = if_match
        self.if_none_match = if_none_match
        self.if_range = if_range

    @property
    def any(self) -> bool:
        return not (self.if_match is None and self.if_none_match is None
                    and self.if_range is None)

    def check(self, etag: str | None, xcache: str) -> web.StreamResponse | None:
        """None to serve; a ``304`` to send instead; raises ``412``."""
        if evaluate(self.method, self.if_match, self.if_none_match, etag) \
                is Outcome.NOT_MODIFIED:
            assert etag is not None
            return web.Response(status=304, headers={"ETag": quote_etag(etag),
                                                     "X-Cache": xcache})
        return None

    def range_header(self, range_header: str | None, etag: str) -> str | None:
        return range_header if range_applies(self.if_range, etag) else None


async def head(ctx: ShardContext, key: str, range_header: str | None,
               describe: Describe | None = None, cond: Conditions | None = None
               ) -> web.StreamResponse:
    """Answer a HEAD of ``key`` (neither fills the cache nor counts a hit or a miss)."""
    return await read(ctx, None, key, range_header, describe, cond, head=True)


#: ``read``'s ``opened`` when the caller has not opened the entry.
NOT_OPENED = -1


def whole_small_hit(ctx: ShardContext, key: str, hit_headers: HitHeaders | None
                    ) -> web.Response | int | None:
    """The first step of a GET of all of ``key`` with no conditions, on its own (no coroutine):
    open the entry (a hit is counted), and answer a whole small hit (:func:`_small_hit`).
    Returns the answer; or the open descriptor of an entry that is not a small hit, or None
    when nothing is cached — for :func:`read`'s ``opened``, which goes on from there."""
    fd: int | None = ctx.cache.local().open_entry(key, count=True)
    if fd is None:
        return None
    try:
        small = _small_hit(fd, hit_headers)
    except OSError:  # not a regular file (a tampered cache directory): a miss
        os.close(fd)
        return None
    if small is None:
        return fd
    os.close(fd)
    return small


async def read(ctx: ShardContext, request: Any, key: str, range_header: str | None,
               describe: Describe | None = None, cond: Conditions | None = None, *,
               head: bool, hit_headers: HitHeaders | None = None,
               opened: int | None = NOT_OPENED) -> web.StreamResponse:
    """Answer a GET of ``key`` (``head`` false: a hit from the cached file, a miss from the
    bucket, filling the cache) or a HEAD (true, as :func:`head`). A whole small hit is
    answered without a further await (the hot path: ``docs/performance.md``), its header lines
    from ``hit_headers`` if given (``/v1``'s own are built in). Both APIs call this directly
    (no wrapper's coroutine on the hot path). ``opened``: what :func:`whole_small_hit` left
    (an open entry that is not a small hit, or None: not cached), when the caller began there.
    REQUIRES: a valid, unreserved key."""
    if cond is not None and not cond.any:
        cond = None
    fd: int | None
    if opened != NOT_OPENED:
        fd = opened
    elif not head and range_header is None and cond is None \
            and (describe is None or hit_headers is not None):
        first = whole_small_hit(ctx, key, hit_headers)
        if first is not None and not isinstance(first, int):
            return first
        fd = first
    else:
        fd = ctx.cache.local().open_entry(key, count=not head)
    if fd is not None:
        resp = await _serve_cached(ctx, request, describe, key, fd, range_header, cond,
                                   head=head)
        if resp is not None:
            return resp
    describe = describe or plain_headers
    if head:
        got = await _bucket_version(ctx, key, range_header, cond)
        if isinstance(got, web.StreamResponse):
            return got
        info, byte_range = got
        return _headers_only(describe, Served(info.size, info.etag, byte_range, "miss",
                                              info))
    return await _serve_miss(ctx, request, describe, key, range_header, cond)


def _headers_only(describe: Describe, served: Served) -> web.StreamResponse:
    return web.Response(status=206 if served.byte_range else 200, headers=describe(served))


def plain_headers(served: Served) -> dict[str, str]:
    """``/v1``'s headers of an answer about ``served``."""
    size, etag, byte_range, xcache = served.size, served.etag, served.byte_range, served.xcache
    headers = {"ETag": quote_etag(etag), "X-Cache": xcache, "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if byte_range is not None:
        first, last = byte_range
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
    else:
        headers["Content-Length"] = str(size)
    return headers


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


def _small_hit(fd: int, hit_headers: HitHeaders | None) -> web.Response | None:
    """The answer of a whole small hit from open entry ``fd``, or None when the general path
    must answer (a larger entry, no ETag or record); OSError if ``fd`` cannot be read.

    ``/v1``'s common case — a whole small entry, no conditions — is one ``pread`` of up to
    :data:`READ_INLINE_BYTES` + 1 bytes (a shorter answer is the whole file, so no ``fstat``)
    and one ``fgetxattr`` for the ETag, with header lines encoded once per ETag; a caller's
    ``hit_headers`` (S3's) takes the place of the ``fgetxattr`` and the header lines."""
    data = os.pread(fd, READ_INLINE_BYTES + 1, 0)
    if len(data) > READ_INLINE_BYTES:
        return None
    if hit_headers is not None:
        raw = hit_headers(fd, len(data))
    else:
        try:
            raw = _hit_headers(os.getxattr(fd, ETAG_XATTR).decode())
        except OSError:
            raw = None
    return None if raw is None else web.Response(body=data, raw=raw)


async def _serve_cached(ctx: ShardContext, request: Any, describe: Describe | None, key: str,
                        fd: int, range_header: str | None, cond: Conditions | None, *,
                        head: bool) -> web.StreamResponse | None:
    """Serve a cache hit from one descriptor (bytes, size and ETag of the same file, whatever
    replaces the entry meanwhile), which this closes; None if it is not a usable entry
    (treated as a miss)."""
    try:
        describe = describe or plain_headers
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        etag = _entry_etag(ctx, key, fd, st)
        if etag is None:
            info = await ctx.store.head(key)
            if info is None or info.size != size:
                return None  # the cached copy does not match the bucket: serve as a miss
            etag = info.etag
            ctx.etags[key] = (st.st_ino, st.st_size, st.st_mtime_ns, etag)
        if cond is not None:
            early = cond.check(etag, "hit")
            if early is not None:
                return early
            range_header = cond.range_header(range_header, etag)
        byte_range = parse_range(range_header, size)
        served = Served(size, etag, byte_range, "hit", None, fd)
        if head:
            return _headers_only(describe, served)
        first, last = byte_range if byte_range is not None else (0, size - 1)
        count = last - first + 1 if size else 0
        headers = describe(served)
        status = 206 if byte_range else 200
        if count <= READ_INLINE_BYTES:
            data = os.pread(fd, count, first) if count else b""
            return web.Response(status=status, body=data, headers=headers)
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        await resp.sendfile(fd, first, count)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


def _hit_headers(etag: str) -> bytes:
    """``/v1``'s header lines of a whole-entry hit but its length (encoded once per ETag)."""
    raw = _HIT_HEADERS.get(etag)
    if raw is None:
        if len(_HIT_HEADERS) >= 4096:
            _HIT_HEADERS.clear()
        raw = _HIT_HEADERS[etag] = (
            f"ETag: {quote_etag(etag)}\r\nX-Cache: hit\r\nAccept-Ranges: bytes\r\n"
            "Content-Type: application/octet-stream\r\n").encode("latin-1", "replace")
    return raw


_HIT_HEADERS: dict[str, bytes] = {}


async def _bucket_version(ctx: ShardContext, key: str, range_header: str | None,
                          cond: Conditions | None
                          ) -> tuple[ObjectInfo, tuple[int, int] | None] | web.StreamResponse:
    """The bucket's current version of ``key`` (a HEAD) and the byte range to answer from it
    (``If-Range`` applied), or the early answer its conditions give (a ``304``); NotFound."""
    info = await ctx.store.head(key)
    early = cond.check(None if info is None else info.etag, "miss") if cond else None
    if early is not None:
        return early
    if info is None:
        raise NotFound(f"no object {key!r}")
    if cond is not None:
        range_header = cond.range_header(range_header, info.etag)
    return info, parse_range(range_header, info.size)


async def _serve_miss(ctx: ShardContext, request: Any, describe: Describe, key: str,
                      range_header: str | None, cond: Conditions | None
                      ) -> web.StreamResponse:
    if range_header is not None and range_header.strip():
        got = await _bucket_version(ctx, key, range_header, cond)
        if isinstance(got, web.StreamResponse):
            return got
        info, byte_range = got
        if byte_range is not None:
            return await _stream_from_bucket(ctx, request, describe, key, byte_range,
                                             info.size, cond)
    # Whole object: single flight per shard; the leader streams and fills, followers wait
    # for the fill and then serve the cached file.
    if ctx.flights.joinable(key):
        with contextlib.suppress(Exception):
            await ctx.flights.wait(key)
        fd = ctx.cache.local().open_entry(key)
        if fd is not None:
            resp = await _serve_cached(ctx, request, describe, key, fd, range_header, cond,
                                       head=False)
            if resp is not None:
                return resp
        return await _stream_from_bucket(ctx, request, describe, key, None, None, cond)
    flight = ctx.flights.begin(key)
    try:
        return await _fill_and_stream(ctx, request, describe, key, cond)
    finally:
        ctx.flights.end(key, flight)


async def _stream_from_bucket(ctx: ShardContext, request: Any, describe: Describe, key: str,
                              byte_range: tuple[int, int] | None,
                              size: int | None, cond: Conditions | None = None
                              ) -> web.StreamResponse:
    t0 = time.perf_counter()
    result = await ctx.store.get(key, byte_range=byte_range)
    if result is None:
        if cond is not None:
            cond.check(None, "miss")  # If-Match on a missing object: 412
        raise NotFound(f"no object {key!r}")
    async with result:
        info = result.info
        ctx.cache.local().note_miss(key, info.size)  # the miss-ratio curve's reference
        if cond is not None:
            early = cond.check(info.etag, "miss")
            if early is not None:
                return early
        headers = describe(Served(info.size, info.etag, result.range, "miss", info))
        resp = web.StreamResponse(status=206 if result.range else 200, headers=headers)
        await resp.prepare(request)
        n = 0
        async for chunk in result.iter_chunks():
            n += len(chunk)
            await resp.write(chunk)
        await resp.write_eof()
    metrics.DOWNLOAD_BYTES.inc(n)
    metrics.DOWNLOAD_DURATION.observe(time.perf_counter() - t0)
    return resp


async def _fill_and_stream(ctx: ShardContext, request: Any, describe: Describe, key: str,
                           cond: Conditions | None) -> web.StreamResponse:
    cache = ctx.cache.local()
    t0 = time.perf_counter()
    # Registered before the download (docs/cache.md): a write of the key from now until the
    # publish overlaps this fill, and its copy is then not kept. One download for the whole
    # daemon: a fill of this key on another shard runs first.
    ticket: int | None
    ticket, overlapped, followed = await cache.register_fill(key)
    try:
        if followed and not overlapped:
            fd = cache.open_entry(key)
            if fd is not None:  # the other fill kept its copy: a hit (the ticket is
                # finished below, with nothing to publish)
                resp = await _serve_cached(ctx, request, describe, key, fd, None, cond,
                                           head=False)
                if resp is not None:
                    return resp
        if overlapped:  # a write is in flight: this copy could never be kept
            mine, ticket = ticket, None
            await cache.finish(mine)
            metrics.STREAM_THROUGH.inc()
            return await _stream_from_bucket(ctx, request, describe, key, None, None, cond)
        result = await ctx.store.get(key)
        if result is None:
            if cond is not None:
                cond.check(None, "miss")  # If-Match on a missing object: 412
            raise NotFound(f"no object {key!r}")
        async with result:
            info = result.info
            cache.note_miss(key, info.size)  # the miss-ratio curve's reference
            if cond is not None:
                early = cond.check(info.etag, "miss")
                if early is not None:
                    return early  # nothing streamed: the ticket is finished below
            staging = None
            if info.size <= ctx.max_object_bytes:
                try:
                    # Never wait long for space on a read: fill only if it fits now (or after
                    # the in-memory trim the coordinator does at once).
                    staging = await cache.create_staging_file(
                        key, time.monotonic() + FILL_RESERVE_WAIT_S, max(info.size, 1),
                        klass="read", owner=f"GET {key}")
                except (CacheFull, Unavailable):
                    staging = None
            if staging is None:
                metrics.STREAM_THROUGH.inc()
            headers = describe(Served(info.size, info.etag, None, "miss", info))
            resp = web.StreamResponse(status=200, headers=headers)
            n = 0
            try:
                await resp.prepare(request)
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


# --- prefetch (warm-up) ---------------------------------------------------------------------


class Prefetched:
    """What :func:`prefetch` did with one key."""

    FETCHED = "fetched"
    CACHED = "cached"  # a copy was there already, or another fill made one meanwhile
    SKIPPED = "skipped"  # a write of the key was in flight, it is gone, or too big
    NO_SPACE = "no_space"  # no room without evicting (a warm-up never trims for itself)


async def prefetch(ctx: ShardContext, key: str, *, deadline: float,
                   owner: str = "") -> tuple[str, int]:
    """Fill the cache with ``key`` as a GET's miss would, without a client: registered as a
    fill (so a write of the key in flight wins), staged under a ``prefetch`` reservation
    that waits at most until ``deadline``, published with its ETag. Counts neither as a hit
    nor as a miss. Returns what happened and the bytes fetched. REQUIRES: a valid key whose
    bucket object is ``key`` (a user key)."""
    cache = ctx.cache.local()
    if cache.peek(key) is not None:
        return Prefetched.CACHED, 0
    ticket: int | None
    ticket, overlapped, followed = await cache.register_fill(key)
    try:
        if overlapped:
            return Prefetched.SKIPPED, 0
        if followed and cache.peek(key) is not None:
            return Prefetched.CACHED, 0
        result = await ctx.store.get(key)
        if result is None:
            return Prefetched.SKIPPED, 0
        async with result:
            info = result.info
            if info.size > ctx.max_object_bytes:
                return Prefetched.SKIPPED, 0
            try:
                staging = await cache.create_staging_file(
                    key, deadline, max(info.size, 1), klass="prefetch",
                    owner=owner or f"warm-up {key}")
            except (CacheFull, Unavailable):
                return Prefetched.NO_SPACE, 0
            n = 0
            try:
                async for chunk in result.iter_chunks():
                    n += len(chunk)
                    await staging.append(chunk, deadline)
                if n != info.size:
                    return Prefetched.SKIPPED, 0
                mine, ticket = ticket, None
                fill, staging = staging, None
                kept = await fill.publish(mine, xattrs={ETAG_XATTR: info.etag.encode()})
            except CacheFull:
                return Prefetched.NO_SPACE, 0
            finally:
                if staging is not None:
                    await staging.close()
        metrics.DOWNLOAD_BYTES.inc(n)
        return (Prefetched.FETCHED, n) if kept else (Prefetched.CACHED, 0)
    finally:
        if ticket is not None:
            await cache.finish(ticket)


# --- DELETE ---------------------------------------------------------------------------------


async def delete(ctx: ShardContext, key: str) -> None:
    """Delete ``key`` from the bucket, then its cached copy (in the key's order on shard 0).
    REQUIRES: a valid, unreserved key."""
    cache = ctx.cache.local()
    ticket, _ = await cache.register(key, write=True, why=EvictionReason.deleted)
    try:
        await ctx.store.delete(key)
        await failpoint("server.delete.after_bucket")
    finally:
        # Whatever happened (the delete may have landed), the copy goes, after the bucket
        # call and in the key's order on shard 0.
        await cache.finish(ticket, remove=True)
    ctx.etags.pop(key, None)
