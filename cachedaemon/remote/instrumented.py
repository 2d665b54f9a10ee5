"""``InstrumentedObjectStore``: counts calls, errors, bytes and latency per operation.

A thin wrapper; the figures live in a plain :class:`ObjectStoreStats` object (no metrics library
here) that the server exports to Prometheus. Latency is measured with the injected clock from the
call until the operation returns (for ``get``: until the body can be read, i.e. time to first
byte); ``get`` bytes are counted as the body's chunks pass through. Misses (``None``) are counted
apart from errors.

One instance per shard, like the store it wraps; the stats object is only touched on that shard's
loop (a reader on another thread sees slightly stale integers, never torn ones).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStore,
    ObjectStoreBase,
    put_options,
)

T = TypeVar("T")

#: Upper bounds (seconds) of the latency histogram buckets; the last bucket is +inf.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

OPERATIONS = ("get", "put", "head", "delete", "delete_many", "list")


@dataclass
class OpStats:
    """Figures of one operation. ``buckets[i]`` counts calls with latency <= LATENCY_BUCKETS_S[i]
    (non-cumulative; the extra last slot is +inf)."""

    calls: int = 0
    errors: int = 0
    misses: int = 0
    bytes: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))

    def observe(self, seconds: float) -> None:
        self.seconds += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1


@dataclass
class ObjectStoreStats:
    """Per-operation figures, keyed by operation name (see ``OPERATIONS``)."""

    ops: dict[str, OpStats] = field(default_factory=lambda: {op: OpStats() for op in OPERATIONS})

    def __getitem__(self, op: str) -> OpStats:
        return self.ops[op]

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        """A plain-dict copy (calls, errors, misses, bytes, seconds) for logging or JSON."""
        return {
            op: {
                "calls": s.calls,
                "errors": s.errors,
                "misses": s.misses,
                "bytes": s.bytes,
                "seconds": s.seconds,
            }
            for op, s in self.ops.items()
        }


class InstrumentedObjectStore(ObjectStoreBase):
    """Wraps ``inner`` and records each call in ``stats``."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        stats: ObjectStoreStats | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.stats = stats or ObjectStoreStats()
        self.clock = clock

    async def _timed(self, op: str, fn: Callable[[], Awaitable[T]], *, miss: bool = True) -> T:
        s = self.stats.ops[op]
        s.calls += 1
        start = self.clock.monotonic()
        try:
            result = await fn()
        except BaseException:
            s.errors += 1
            raise
        finally:
            s.observe(self.clock.monotonic() - start)
        if miss and result is None:
            s.misses += 1
        return result

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        result = await self._timed("get", lambda: self.inner.get(key, byte_range=byte_range))
        if result is None:
            return None
        s = self.stats.ops["get"]
        inner_result = result

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in inner_result.iter_chunks():
                s.bytes += len(chunk)
                yield chunk

        return GetResult(
            result.info, result.content_length, result.range, counted(), inner_result.close
        )

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
        info = await self._timed(
            "put",
            lambda: self.inner.put(key, body, if_none_match=if_none_match, if_match=if_match,
                **put_options(meta, part_sizes, single_part)),
        )
        self.stats.ops["put"].bytes += info.size
        return info

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._timed("head", lambda: self.inner.head(key))

    async def delete(self, key: str) -> None:
        await self._timed("delete", lambda: self.inner.delete(key), miss=False)

    async def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        await self._timed("delete_many", lambda: self.inner.delete_many(batch), miss=False)

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        return await self._timed("list", lambda: self.inner.list(prefix, start_after, limit))

    async def close(self) -> None:
        await self.inner.close()
