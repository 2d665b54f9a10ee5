"""The S3 endpoint's one way to objects: the daemon's object path, with S3's metadata.

The S3 endpoint keeps the same per-key coherence rule, cache reservations and reserved keys as
``/v1`` because it runs the same code: every PUT, GET and DELETE is an operation of
:mod:`cachedaemon.server.objectops` (staging under reservations, registration with shard 0's
key table, upload, publish; single-flight fills; hits from one open descriptor). This module
adds what S3 needs around them:

* :meth:`ObjectPath.put` — the body (an async iterator of verified payload bytes) stored with
  S3 metadata and an S3 part layout (the bucket then computes the ETag S3 would); the
  version's :class:`~.metadata.ObjectRecord` is attached to the cached entry;
* :meth:`ObjectPath.get` — S3's headers for the version being served, built just before they
  are sent: on a hit from the record of the very file whose bytes follow (read through the
  same descriptor), on a miss from the bucket's answer. A hit whose file has no record yet is
  answered again once the record is fetched from the bucket (nothing was sent before);
* :meth:`ObjectPath.stat` — HEAD: the record, from the cache (without counting a hit) or the
  bucket (without filling);
* :meth:`ObjectPath.open` — the bytes of a copy source, from the cache or the bucket;
* :meth:`ObjectPath.delete`, :meth:`ObjectPath.list`.

Per shard: an instance holds its shard's :class:`~cachedaemon.server.context.ShardContext`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from cachedaemon.errors import InvalidArgument, InvalidRange, NotFound
from cachedaemon.remote.base import ByteRange, ListPage, ObjectMeta
from cachedaemon.server import objectops
from cachedaemon.server.context import ShardContext
from cachedaemon.server.http import Request, StreamResponse
from cachedaemon.server.objectops import Served
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.metadata import (
    ObjectRecord,
    read_record,
    record_hit_lines,
    write_record,
)

#: How many times a read is tried when the record of a hit must be fetched first.
READ_ATTEMPTS = 4
READ_CHUNK = 1 << 20

#: Builds the S3 headers of an answer about a record (may raise to refuse it, e.g. a 304).
HeadersFor = Callable[[ObjectRecord], dict[str, str]]


class _NeedRecord(Exception):
    """A cache hit has no record of its version (nothing was sent): fetch it, read again."""


class ObjectPath:
    """One shard's adapter (see the module doc)."""

    def __init__(self, ctx: ShardContext) -> None:
        self.ctx = ctx

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
                  headers_for: HeadersFor, plain: bool = False,
                  opened: int | None = objectops.NOT_OPENED) -> StreamResponse:
        """GET through the object path, with S3's headers (see the module doc). ``plain``:
        the headers are the record's own (no overrides, no conditions), so a whole small hit
        sends the record's header lines encoded once per record. ``opened``: what
        :func:`~cachedaemon.server.objectops.whole_small_hit` left, if the caller began there
        (for the first attempt)."""
        hit_headers = record_hit_lines if plain else None
        for _ in range(READ_ATTEMPTS):
            filled: list[ObjectRecord] = []

            def describe(served: Served, filled: list[ObjectRecord] = filled
                         ) -> dict[str, str]:
                if served.info is not None:  # a miss: the bucket's answer
                    record = ObjectRecord.from_info(served.info)
                    filled.append(record)
                else:  # a hit: the record of the file whose bytes follow
                    assert served.fd is not None
                    record_or_none = read_record(served.fd, served.size)
                    if record_or_none is None or record_or_none.etag != served.etag:
                        raise _NeedRecord()
                    record = record_or_none
                headers = headers_for(record)
                headers["X-Cache"] = served.xcache
                if served.byte_range is not None:
                    first, last = served.byte_range
                    headers["Content-Range"] = f"bytes {first}-{last}/{served.size}"
                    headers["Content-Length"] = str(last - first + 1)
                else:
                    headers["Content-Length"] = str(served.size)
                return headers

            try:
                first, opened = opened, objectops.NOT_OPENED
                resp = await objectops.read(self.ctx, request, key, range_header, describe,
                                            head=False, hit_headers=hit_headers, opened=first)
            except _NeedRecord:
                if await self._from_bucket(key) is None:
                    raise NotFound(f"no object {key!r}") from None
                continue
            if filled and range_header is None and resp.status == 200:
                self._remember(key, filled[0])  # a fill: its copy gets its record
            return resp
        raise S3Error("SlowDown", f"the object {key[:200]!r} kept changing while it was read")

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
        uploaded, published); the bucket keeps ``meta``; a single PUT's ETag is its MD5, a
        multipart object's S3's ``-N`` form for ``part_sizes``. An S3Error raised by ``body``
        (a bad digest, a bad chunk signature) fails the PUT before anything is published."""
        options: dict[str, Any] = {"meta": meta}
        if part_sizes is not None:
            options["part_sizes"] = part_sizes
        else:
            options["single_part"] = True

        async def read() -> bytes:
            try:
                return await anext(body)
            except StopAsyncIteration:
                return b""

        deadline = time.monotonic() + self.ctx.settings.cache.reserve_deadline
        try:
            info = await objectops.put(self.ctx, key, read, length, deadline=deadline,
                                       if_none_match=if_none_match, if_match=if_match,
                                       options=options)
        except InvalidArgument as exc:
            if isinstance(exc.__cause__, S3Error):
                raise exc.__cause__ from None
            raise
        record = ObjectRecord.from_info(info)
        self._remember(key, record)
        return record

    async def delete(self, key: str) -> None:
        """DELETE through the object path (the bucket, then the cached copy)."""
        await objectops.delete(self.ctx, key)


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
