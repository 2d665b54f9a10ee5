"""The S3 endpoint's one way to objects: a thin adapter onto the daemon's object path.

The S3 endpoint must keep the same per-key coherence rule, cache reservations and reserved
keys as ``/v1``, so it never writes the cache or the bucket's objects itself: every PUT, GET
and DELETE goes through the ``/v1`` object routes' own code (:mod:`cachedaemon.server.objects`:
staging under reservations, upload, commit, single-flight fills, forgetting on every shard).
This module is the only place that knows how; :class:`ObjectPath` offers what S3 needs:

* :meth:`ObjectPath.put` — a body (an async iterator of verified payload bytes) stored with S3
  metadata and an S3 part layout (the bucket then computes the ETag S3 would);
* :meth:`ObjectPath.get` — an object served (a cache hit by ``sendfile``, a miss filling the
  cache), its headers replaced by S3's just before they are sent: the hook sees which version
  is being served and gets its :class:`~.metadata.ObjectRecord` (from the cached entry's
  record attribute, or from the bucket's answer on a miss), so the headers always describe the
  bytes that follow. If the served version is not the one expected, or a hit has no record
  yet, nothing has been sent and the read is tried again (the record is fetched once from the
  bucket and attached to the entry);
* :meth:`ObjectPath.stat` — HEAD: the record, from the cache (without counting a hit) or the
  bucket (without filling);
* :meth:`ObjectPath.open` — the bytes of a copy source, from the cache or the bucket;
* :meth:`ObjectPath.delete`, :meth:`ObjectPath.list`.

How: the ``/v1`` handlers are called with a request that carries what they read (the key, the
body, ``Range``, the conditions) and a per-call view of the shard context whose store passes
S3's metadata and part layout on to the bucket and remembers the bucket's answers. Once the
object path is one shared module of operations, these shims go and the calls become direct.

Per shard: an instance holds its shard's :class:`~cachedaemon.server.context.ShardContext`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from cachedaemon.cache.keys import key_relpath
from cachedaemon.errors import InvalidArgument, InvalidRange, NotFound
from cachedaemon.remote.base import ByteRange, ListPage, ObjectInfo, ObjectMeta
from cachedaemon.server import objects
from cachedaemon.server.context import Call, ShardContext
from cachedaemon.server.http import Headers, Request, StreamResponse
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.metadata import (
    RECORD_XATTR,
    ObjectRecord,
    read_record,
    write_record,
)

#: How many times a read is tried when the version changes under it.
READ_ATTEMPTS = 4
READ_CHUNK = 1 << 20

#: Builds the S3 headers of an answer about a record (may raise to refuse it, e.g. a 304).
HeadersFor = Callable[[ObjectRecord], dict[str, str]]


class _Changed(Exception):
    """The version being served is not the expected one (nothing was sent): read again."""


class _NeedRecord(Exception):
    """A cache hit has no record yet (nothing was sent): fetch it, then read again."""


class _StoreView:
    """The shard's store as the /v1 code sees it during one S3 call: puts carry S3's metadata
    and part layout; the answers of puts, gets and heads are kept."""

    def __init__(self, inner: Any, put_options: dict[str, Any] | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.put_options = put_options or {}
        self.seen: ObjectInfo | None = None
        self.stored: ObjectInfo | None = None

    async def put(self, key: str, body: Any, *, if_none_match: bool = False,
                  if_match: str | None = None) -> ObjectInfo:
        info: ObjectInfo = await self.inner.put(key, body, if_none_match=if_none_match,
                                                if_match=if_match, **self.put_options)
        self.stored = info
        return info

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> Any:
        result = await self.inner.get(key, byte_range=byte_range)
        if result is not None:
            self.seen = result.info
        return result

    async def head(self, key: str) -> ObjectInfo | None:
        info: ObjectInfo | None = await self.inner.head(key)
        self.seen = info
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _ConnView:
    """The request's connection, with a hook run just before a streamed answer's head goes
    out (everything else is the connection's own)."""

    __slots__ = ("_conn", "_hook")

    def __init__(self, conn: Any, hook: Callable[[StreamResponse], None]) -> None:
        self._conn = conn
        self._hook = hook

    def start_response(self, resp: StreamResponse, length: int | None, *, chunked: bool) -> None:
        self._hook(resp)
        self._conn.start_response(resp, length, chunked=chunked)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _Feed:
    """A body for the /v1 PUT code: ``readany()`` over an async iterator of bytes."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def readany(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return b""


class _CallRequest:
    """What the /v1 object handlers read of a request."""

    __slots__ = ("conn", "content", "content_length", "headers", "method")

    def __init__(self, method: str, headers: Headers, conn: Any = None, content: Any = None,
                 content_length: int | None = None) -> None:
        self.method = method
        self.headers = headers
        self.conn = conn
        self.content = content
        self.content_length = content_length


@functools.lru_cache(maxsize=4096)
def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


@functools.lru_cache(maxsize=4096)
def _relpath(key: str) -> str:
    """The cache's path of a (valid) key, memoised: hot keys are read again and again."""
    return key_relpath(key)


def _unquote_etag(value: str) -> str:
    return value.strip().removeprefix("W/").strip('"')


class ObjectPath:
    """One shard's adapter (see the module doc)."""

    def __init__(self, ctx: ShardContext) -> None:
        self.ctx = ctx
        self._root = ""

    def _call(self, request: _CallRequest, key: str, store: _StoreView) -> Call:
        # The same shard state with another store (a shallow copy, made by hand: cheaper than
        # copy.copy or dataclasses.replace on the hot path of hits).
        ctx = object.__new__(ShardContext)
        ctx.__dict__.update(self.ctx.__dict__)
        ctx.store = store
        return Call(request, {"key": _quote(key)}, ctx, "s3")  # type: ignore[arg-type]

    def _served_record(self, key: str) -> ObjectRecord | None:
        """The record of the entry the object path just served (its file's attribute; the
        caller checks the ETag the object path read from the same file)."""
        if not self._root:
            self._root = str(self.ctx.cache.local().root) + "/"
        try:
            raw = os.getxattr(self._root + _relpath(key), RECORD_XATTR, follow_symlinks=False)
        except OSError:
            return None
        return ObjectRecord.decode(raw)

    # --- records -----------------------------------------------------------------------------

    def cached(self, key: str) -> ObjectRecord | None:
        """The record of ``key``'s cached entry, if the entry has one (no hit counted)."""
        entry = self.ctx.cache.local().peek(key)
        return None if entry is None else read_record(entry.path, entry.size)

    def _remember(self, key: str, record: ObjectRecord) -> None:
        entry = self.ctx.cache.local().peek(key)
        if entry is not None:
            write_record(entry.path, record)

    async def _from_bucket(self, key: str) -> ObjectRecord | None:
        info = await self.ctx.store.head(key)
        if info is None:
            return None
        record = ObjectRecord.from_info(info)
        self._remember(key, record)
        return record

    async def stat(self, key: str) -> ObjectRecord | None:
        """HEAD: the current version's record (neither fills the cache nor counts a hit)."""
        return self.cached(key) or await self._from_bucket(key)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, request: Request, key: str, range_header: str | None,
                  headers_for: HeadersFor) -> StreamResponse:
        """GET through the object path, with S3's headers (see the module doc)."""
        for _ in range(READ_ATTEMPTS):
            store = _StoreView(self.ctx.store)
            headers = Headers()
            if range_header is not None:
                headers["range"] = range_header

            def hook(resp: StreamResponse, store: _StoreView = store) -> None:
                served = _unquote_etag(resp.headers.get("ETag", ""))
                if store.seen is not None:
                    record = ObjectRecord.from_info(store.seen)
                else:
                    cached = self._served_record(key)
                    if cached is None:
                        raise _NeedRecord()
                    record = cached
                if record.etag != served:
                    raise _Changed()  # (or the attribute is an older version's: refetched)
                old = resp.headers
                new = headers_for(record)
                for name in ("Content-Length", "Content-Range", "X-Cache"):
                    value = old.get(name)
                    if value is not None:
                        new[name] = value
                resp.headers = new

            call_request = _CallRequest("GET", headers, _ConnView(request.conn, hook))
            try:
                resp = await self._get(call_request, key, range_header, store)
                if not resp.prepared:
                    hook(resp)  # an answer held in memory: its head is not sent yet
            except _Changed:
                # A hit whose record is not its version's: fetch the right one.
                if store.seen is None and self.cached(key) is None and \
                        await self._from_bucket(key) is None:
                    raise NotFound(f"no object {key!r}") from None
                continue
            except _NeedRecord:
                if await self._from_bucket(key) is None:
                    raise NotFound(f"no object {key!r}") from None
                continue
            seen = store.seen
            if seen is not None and range_header is None and resp.status == 200:
                self._remember(key, ObjectRecord.from_info(seen))  # a fill: keep its record
            return resp
        raise S3Error("SlowDown", f"the object {key[:200]!r} kept changing while it was read")

    async def _get(self, call_request: _CallRequest, key: str, range_header: str | None,
                   store: _StoreView) -> StreamResponse:
        """The object path's GET of a valid key: ``objects._get`` without its key decoding
        (the key is already a daemon key). A hit is served with the shard's own context; a
        miss with the per-call store view, whose answers become the record."""
        entry = await self.ctx.cache.local().get(key)
        if entry is not None:
            hit: StreamResponse | None = await objects._serve_cached(
                Call(call_request, {}, self.ctx, "s3"),  # type: ignore[arg-type]
                key, entry, range_header, head=False)
            if hit is not None:
                return hit
        miss: StreamResponse = await objects._serve_miss(
            self._call(call_request, key, store), key, range_header)
        return miss

    async def open(self, key: str, byte_range: ByteRange | None
                   ) -> tuple[ObjectRecord, int, AsyncIterator[bytes]] | None:
        """(record, length, bytes) of ``key`` or a range of it, for a copy; None if absent.
        A cached copy is read from the cache (counted as a hit), else the bucket streams it."""
        cache = self.ctx.cache.local()
        entry = await cache.get(key)
        if entry is not None:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                fd = -1  # trimmed meanwhile: read the bucket's
            if fd >= 0:
                # The record and the bytes of one open file: one version, whatever replaces it.
                record = read_record(fd, os.fstat(fd).st_size)
                try:
                    if record is None:
                        raise _NeedRecord()
                    first, last = _resolve(byte_range, record)
                except BaseException as exc:
                    os.close(fd)
                    if not isinstance(exc, _NeedRecord):
                        raise
                else:
                    return record, last - first + 1, _read_fd(fd, first, last - first + 1)
        result = await self.ctx.store.get(key, byte_range=byte_range)
        if result is None:
            return None
        record = ObjectRecord.from_info(result.info)
        return record, result.content_length, _read_result(result)

    async def list(self, prefix: str, start_after: str | None, limit: int) -> ListPage:
        page: ListPage = await self.ctx.store.list(prefix, start_after, limit)
        return page

    # --- writes ------------------------------------------------------------------------------

    async def put(self, key: str, body: AsyncIterator[bytes], length: int | None, *,
                  meta: ObjectMeta, if_none_match: bool = False, if_match: str | None = None,
                  part_sizes: Sequence[int] | None = None) -> ObjectRecord:
        """Store ``key`` through the object path (staged in the cache under reservations,
        uploaded, committed); the bucket keeps ``meta``; a single PUT's ETag is its MD5, a
        multipart object's S3's ``-N`` form for ``part_sizes``. An S3Error raised by ``body``
        (a bad digest, a bad chunk signature) fails the PUT before anything is committed."""
        options: dict[str, Any] = {"meta": meta}
        if part_sizes is not None:
            options["part_sizes"] = part_sizes
        else:
            options["single_part"] = True
        store = _StoreView(self.ctx.store, options)
        headers = Headers()
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match is not None:
            headers["if-match"] = f'"{if_match}"'
        call_request = _CallRequest("PUT", headers, content=_Feed(body), content_length=length)
        try:
            await objects.put_object(self._call(call_request, key, store))
        except InvalidArgument as exc:
            if isinstance(exc.__cause__, S3Error):
                raise exc.__cause__ from None
            raise
        assert store.stored is not None
        record = ObjectRecord.from_info(store.stored)
        self._remember(key, record)
        return record

    async def delete(self, key: str) -> None:
        """DELETE through the object path (the bucket, then every shard's cached copy)."""
        call_request = _CallRequest("DELETE", Headers())
        await objects.delete_object(self._call(call_request, key, _StoreView(self.ctx.store)))


def _resolve(byte_range: ByteRange | None, record: ObjectRecord) -> tuple[int, int]:
    if byte_range is None:
        return 0, record.size - 1
    first, last = byte_range
    if first >= record.size:
        raise InvalidRange(f"range {first}-{last} of {record.size} bytes", record.size)
    return first, min(last, record.size - 1)


async def _read_fd(fd: int, offset: int, count: int) -> AsyncIterator[bytes]:
    try:
        while count > 0:
            data = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, count), offset)
            if not data:
                raise S3Error("InternalError", "a cached object shrank while it was read")
            offset += len(data)
            count -= len(data)
            yield data
    finally:
        os.close(fd)


async def _read_result(result: Any) -> AsyncIterator[bytes]:
    async with result:
        async for chunk in result.iter_chunks():
            yield chunk
