"""The S3 endpoint's buckets: how S3 bucket names map onto the daemon's object keys.

Two modes (``s3.bucket_mode``), one class each, behind :class:`Buckets`:

* :class:`SingleBucket` (``single``): one bucket, ``s3.bucket``, whose keys are the daemon's
  object keys — the transparent cache in front of one real bucket. Any other name is
  ``NoSuchBucket``; CreateBucket of it answers as S3 does for a bucket you own (``200`` in
  ``us-east-1``, else ``BucketAlreadyOwnedByYou``); creating or deleting other buckets is
  ``NotImplemented`` (it needs ``prefix`` mode). Its creation date is the date of the
  bucket's identity object (``.cachedaemon/bucket-id``), i.e. when the daemon first used it.
* :class:`PrefixBuckets` (``prefix``): every bucket is a top-level prefix of the daemon's keys
  (``s3://b/k`` is the object ``b/k``). A bucket exists when CreateBucket made its marker
  (``.cachedaemon/s3/buckets/<name>`` in the bucket, written create-only) or when objects
  exist under ``<name>/`` (written through ``/v1``, say). DeleteBucket needs it empty
  (``BucketNotEmpty``) and removes the marker. Top-level keys without a ``/`` belong to no
  bucket.

The reserved ``.cachedaemon`` prefix is in no bucket: its name is not a valid bucket name, and
the single bucket's listings and object routes leave it out (:mod:`.handlers`).

Existence checks in ``prefix`` mode cost bucket calls, so a shard remembers for
:data:`EXISTS_TTL_S` that a bucket exists; DeleteBucket tells every shard to forget it. Per
shard; the markers are the only shared state, and they live in the bucket.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cachedaemon.errors import PreconditionFailed
from cachedaemon.namespace import BUCKET_ID_KEY, RESERVED_PREFIX, S3_BUCKETS_ROOT, is_reserved
from cachedaemon.server.s3.errors import S3Error, not_implemented
from cachedaemon.server.s3.router import valid_bucket_name

EXISTS_TTL_S = 5.0
#: A string greater than every key that starts with a given prefix (when appended to it).
AFTER_ALL = "\U0010ffff"


def no_such_bucket(name: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist",
                   extra={"BucketName": name})


class Buckets(abc.ABC):
    """The bucket mode of one shard (see the module doc). ``store`` is the shard's store."""

    def __init__(self, store: Any, region: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.region = region
        self.clock = clock

    @abc.abstractmethod
    def key_prefix(self, bucket: str) -> str:
        """The daemon-key prefix of every object of ``bucket``."""

    def object_key(self, bucket: str, key: str) -> str:
        return self.key_prefix(bucket) + key

    @abc.abstractmethod
    async def check(self, bucket: str) -> None:
        """Return if ``bucket`` exists, else raise NoSuchBucket."""

    @abc.abstractmethod
    async def list(self) -> list[tuple[str, float]]:
        """(name, creation time) of every bucket, by name."""

    @abc.abstractmethod
    async def create(self, bucket: str) -> None: ...

    @abc.abstractmethod
    async def delete(self, bucket: str, broadcast: Callable[[str], Awaitable[None]]) -> None:
        """Delete an empty bucket; ``broadcast(name)`` makes every shard forget it."""

    def forget(self, bucket: str) -> None:  # noqa: B027 - most modes remember nothing
        """Drop what this shard remembers about ``bucket``."""

    async def _is_empty(self, prefix: str) -> bool:
        start: str | None = None
        while True:
            page = await self.store.list(prefix, start, 100)
            for info in page.objects:
                if not is_reserved(info.key):
                    return False
            if page.next is None:
                return True
            start = page.next

    def _already_owned(self, bucket: str) -> None:
        if self.region == "us-east-1":
            return  # S3's legacy answer there: 200, nothing done
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named "
                      "bucket succeeded and you already own it.", extra={"BucketName": bucket})


class SingleBucket(Buckets):
    def __init__(self, name: str, store: Any, region: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(store, region, clock)
        self.name = name
        self._created: float | None = None

    def key_prefix(self, bucket: str) -> str:
        return ""

    async def check(self, bucket: str) -> None:
        if bucket != self.name:
            raise no_such_bucket(bucket)

    async def list(self) -> list[tuple[str, float]]:
        if self._created is None:
            info = await self.store.head(BUCKET_ID_KEY)
            self._created = info.last_modified if info is not None and \
                info.last_modified is not None else time.time()
        return [(self.name, self._created)]

    async def create(self, bucket: str) -> None:
        if bucket == self.name:
            self._already_owned(bucket)
            return
        raise not_implemented("CreateBucket in s3.bucket_mode=single (use prefix mode for "
                              "many buckets)")

    async def delete(self, bucket: str, broadcast: Callable[[str], Awaitable[None]]) -> None:
        if bucket != self.name:
            raise no_such_bucket(bucket)
        if not await self._is_empty(""):
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty",
                          extra={"BucketName": bucket})
        raise not_implemented("DeleteBucket of the single bucket (it is the daemon's bucket)")


class PrefixBuckets(Buckets):
    def __init__(self, store: Any, region: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(store, region, clock)
        self._known: dict[str, float] = {}  # bucket -> when this shard last saw it exist

    def key_prefix(self, bucket: str) -> str:
        return bucket + "/"

    async def _exists(self, bucket: str) -> bool:
        if await self.store.head(S3_BUCKETS_ROOT + bucket) is not None:
            return True
        page = await self.store.list(bucket + "/", None, 1)
        return bool(page.objects)

    async def check(self, bucket: str) -> None:
        seen = self._known.get(bucket)
        now = self.clock()
        if seen is not None and now - seen < EXISTS_TTL_S:
            return
        if not valid_bucket_name(bucket) or not await self._exists(bucket):
            self._known.pop(bucket, None)
            raise no_such_bucket(bucket)
        self._known[bucket] = now

    def forget(self, bucket: str) -> None:
        self._known.pop(bucket, None)

    async def list(self) -> list[tuple[str, float]]:
        found: dict[str, float] = {}
        async for info in self.store.list_all(S3_BUCKETS_ROOT):
            name = info.key[len(S3_BUCKETS_ROOT):]
            if valid_bucket_name(name):
                found[name] = info.last_modified or 0.0
        # Buckets implied by their objects: one listing call per top-level prefix.
        start: str | None = None
        while True:
            page = await self.store.list("", start, 1000)
            jump: str | None = None
            for info in page.objects:
                if is_reserved(info.key):
                    jump = RESERVED_PREFIX + AFTER_ALL
                    break
                top, slash, _ = info.key.partition("/")
                if not slash:
                    continue  # a top-level object: in no bucket
                if valid_bucket_name(top):
                    found.setdefault(top, info.last_modified or 0.0)
                jump = top + "/" + AFTER_ALL  # the rest of that prefix is the same bucket
                break
            if jump is not None:
                start = jump
            elif page.next is None:
                break
            else:
                start = page.next
        return sorted(found.items())

    async def create(self, bucket: str) -> None:
        if not valid_bucket_name(bucket):
            raise S3Error("InvalidBucketName", "The specified bucket is not valid.",
                          extra={"BucketName": bucket})
        try:
            await self.store.put_if_absent(S3_BUCKETS_ROOT + bucket, b"")
        except PreconditionFailed:
            self._already_owned(bucket)
            return
        self._known[bucket] = self.clock()

    async def delete(self, bucket: str, broadcast: Callable[[str], Awaitable[None]]) -> None:
        marker = await self.store.head(S3_BUCKETS_ROOT + bucket)
        if not await self._is_empty(bucket + "/"):
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty",
                          extra={"BucketName": bucket})
        if marker is None:
            raise no_such_bucket(bucket)
        await self.store.delete(S3_BUCKETS_ROOT + bucket)
        await broadcast(bucket)
