"""``MemoryObjectStore``: a dict-backed bucket with the full :class:`ObjectStore` semantics.

For fast tests of the layers above (cache, lsm, metastore) and for the contract suite. Etags are
the md5 hex of the content (as S3 gives for single-part uploads), or S3's multipart etag for a
put with ``part_sizes``; a put is all-or-nothing and
conditional puts are atomic. Listing sorts the keys on each call (fine for test-sized buckets).

Synchronisation: a ``threading.Lock`` guards the dict, so one instance may be shared by every
shard; each operation takes it once and never awaits while holding it. Bodies given as a file
or a stream are read fully before the lock is taken.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from collections.abc import AsyncIterable, Sequence
from dataclasses import replace

from cachedaemon.errors import PreconditionFailed
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStoreBase,
    PartHasher,
    check_key,
    check_list_args,
    check_part_sizes,
    check_total,
    resolve_range,
    single_chunk,
)


async def read_body(body: Body) -> bytes:
    """The whole of a put body as bytes (a file is read off the loop, a stream is drained)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    if isinstance(body, pathlib.Path):
        return await asyncio.to_thread(body.read_bytes)
    assert isinstance(body, AsyncIterable)
    parts = [bytes(chunk) async for chunk in body]
    return b"".join(parts)


class MemoryObjectStore(ObjectStoreBase):
    """An in-process bucket. ``url`` is ``memory://<name>``."""

    def __init__(self, name: str = "default") -> None:
        self.url = f"memory://{name}"
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._lock = threading.Lock()

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        check_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            return None
        data, info = entry
        served = resolve_range(byte_range, info.size)
        if served is not None:
            data = data[served[0] : served[1] + 1]
        return GetResult(info, len(data), served, single_chunk(data))

    async def put(
        self,
        key: str,
        body: Body,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        meta: ObjectMeta | None = None,
        part_sizes: Sequence[int] | None = None,
        single_part: bool = False,
    ) -> ObjectInfo:
        check_key(key)
        sizes = check_part_sizes(part_sizes, single_part)
        data = await read_body(body)
        check_total(sizes, len(data))
        hasher = PartHasher(sizes)
        hasher.update(data)
        info = ObjectInfo(key, len(data), hasher.etag(), time.time(), meta or ObjectMeta())
        with self._lock:
            current = self._objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"put-if-absent of {key!r}: the object exists")
            if if_match is not None:
                if current is None:
                    raise PreconditionFailed(f"put-if-match of {key!r}: no such object")
                if current[1].etag != if_match.strip('"'):
                    raise PreconditionFailed(f"put-if-match of {key!r}: etag differs")
            self._objects[key] = (data, info)
        return info

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with self._lock:
            entry = self._objects.get(key)
        return None if entry is None else entry[1]

    async def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_list_args(prefix, limit)
        with self._lock:
            keys = sorted(
                k
                for k in self._objects
                if k.startswith(prefix) and (start_after is None or k > start_after)
            )
            objects = [replace(self._objects[k][1], meta=None) for k in keys[: limit + 1]]
        if len(objects) > limit:
            return ListPage(objects[:limit], objects[limit - 1].key)
        return ListPage(objects, None)
