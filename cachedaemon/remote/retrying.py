"""``RetryingObjectStore``: retries an inner store's retryable failures until a deadline.

A thin wrapper (SlateDB's stack: cached -> retrying -> instrumented -> backend). Each call gets
the absolute deadline ``now + deadline_s`` and goes through :func:`cachedaemon.core.retry.retry`
with exponential backoff and jitter; only errors marked ``retryable``
(:class:`TransientUpstreamError`) are retried, so a miss, a lost condition or bad input is
returned at once. The ``abort`` event (shutdown) cuts a backoff short with ``ShuttingDown``.

What can be replayed:

- ``get`` retries the request that opens the body; a failure while the body streams is the
  caller's (it holds a half-read body and decides whether to start over).
- ``put`` of ``bytes`` or a file is retried; a put from an async iterator cannot be replayed (the
  stream is consumed), so it gets exactly one attempt and its error is raised as is.
- A conditional put whose first attempt may have committed before the connection failed can
  see its own write on the retry and lose with ``PreconditionFailed``. For put-if-absent of a
  single-part ``bytes`` body this wrapper resolves that case: after a retried attempt loses, it
  reads the object's etag and, if it is the md5 of our body, reports success.
- ``head``, ``delete``, ``delete_many`` and ``list`` are idempotent and always retried.

Runs on its owner's loop (one instance per shard, like the store it wraps).
"""

from __future__ import annotations

import asyncio
import pathlib
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from cachedaemon.clock import SYSTEM_CLOCK, Clock, deadline_after
from cachedaemon.core.retry import Backoff, retry
from cachedaemon.errors import PreconditionFailed
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStore,
    ObjectStoreBase,
    PartHasher,
    check_part_sizes,
    put_options,
)

T = TypeVar("T")

DEFAULT_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)


class RetryingObjectStore(ObjectStoreBase):
    """Wraps ``inner``; every call is retried until ``deadline_s`` after it began."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        deadline_s: float | None = 30.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Clock = SYSTEM_CLOCK,
        abort: asyncio.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.deadline_s = deadline_s
        self.backoff = backoff
        self.clock = clock
        self.abort = abort
        self.rng = rng or random.Random()
        #: Attempts that failed and were retried, over the wrapper's life (for tests/metrics).
        self.retries = 0

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries += 1

    async def _retry(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retry(
            fn,
            deadline=deadline_after(self.deadline_s, self.clock),
            backoff=self.backoff,
            clock=self.clock,
            abort=self.abort,
            rng=self.rng,
            on_retry=self._on_retry,
        )

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        return await self._retry(lambda: self.inner.get(key, byte_range=byte_range))

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._retry(lambda: self.inner.head(key))

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
        if not isinstance(body, bytes | bytearray | memoryview | pathlib.Path):
            # A stream is consumed by the first attempt: it cannot be replayed.
            return await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match,
                **put_options(meta, part_sizes, single_part))
        attempts = 0

        async def attempt() -> ObjectInfo:
            nonlocal attempts
            attempts += 1
            return await self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match,
                **put_options(meta, part_sizes, single_part))

        try:
            return await self._retry(attempt)
        except PreconditionFailed:
            if attempts < 2 or not if_none_match or isinstance(body, pathlib.Path):
                raise
            # An earlier attempt may have committed before its response was lost.
            current = await self._retry(lambda: self.inner.head(key))
            hasher = PartHasher(check_part_sizes(part_sizes, single_part))
            hasher.update(body)
            if current is not None and current.etag == hasher.etag():
                return current
            raise

    async def delete(self, key: str) -> None:
        await self._retry(lambda: self.inner.delete(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        await self._retry(lambda: self.inner.delete_many(batch))

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        return await self._retry(lambda: self.inner.list(prefix, start_after, limit))

    async def close(self) -> None:
        await self.inner.close()
