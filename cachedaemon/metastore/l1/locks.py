"""The L1 lock hierarchy: domain rwlock → topic rwlock → partition mutex → object mutex.

As in Redpanda's metastore, every operation takes the locks it needs in that order, and within a
level in sorted key order, so two operations never wait on each other in a cycle. An operation
that only learns which objects it touches after reading a snapshot (truncation, replacement)
takes all its object locks in one :meth:`LockManager.objects` call *after* its partition locks,
then reads again.

Locks are asyncio primitives of the shard that owns the domain (one loop; no thread safety).
Per-key locks are created on demand and dropped when nobody holds or waits for them, so the
tables stay as small as the set of operations in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Hashable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Generic, TypeVar

from cachedaemon.metastore.l1.keys import TopicIdPartition

K = TypeVar("K", bound=Hashable)


class RWLock:
    """A readers-writer lock; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @property
    def idle(self) -> bool:
        return self._readers == 0 and not self._writer and self._writers_waiting == 0

    async def acquire_shared(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
            self._readers += 1

    async def release_shared(self) -> None:
        async with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    async def acquire_exclusive(self) -> None:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
                if not self._writer and self._writers_waiting == 0:
                    # A cancelled writer must not keep readers out.
                    self._cond.notify_all()
            self._writer = True

    async def release_exclusive(self) -> None:
        async with self._cond:
            self._writer = False
            self._cond.notify_all()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self.acquire_shared()
        try:
            yield
        finally:
            await asyncio.shield(self.release_shared())

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        await self.acquire_exclusive()
        try:
            yield
        finally:
            await asyncio.shield(self.release_exclusive())


class _KeyedTable(Generic[K]):
    """Locks by key, created on demand, dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_, users - 1)


class _KeyedRW(Generic[K]):
    def __init__(self) -> None:
        self._locks: dict[K, tuple[RWLock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: K, exclusive: bool) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = RWLock()
        self._locks[key] = (lock, users + 1)
        try:
            async with (lock.exclusive() if exclusive else lock.shared()):
                yield
        finally:
            lock_, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock_, users - 1)


class LockManager:
    """The lock tables of one domain's L1 metastore."""

    def __init__(self) -> None:
        self.domain = RWLock()
        self._topics: _KeyedRW[uuid.UUID] = _KeyedRW()
        self._partitions: _KeyedTable[TopicIdPartition] = _KeyedTable()
        self._objects: _KeyedTable[uuid.UUID] = _KeyedTable()

    def statistics(self) -> dict[str, int]:
        return {"topics": len(self._topics), "partitions": len(self._partitions),
                "objects": len(self._objects)}

    @asynccontextmanager
    async def partitions(
        self,
        partitions: Iterable[TopicIdPartition] = (),
        *,
        exclusive_topics: Iterable[uuid.UUID] = (),
        exclusive_domain: bool = False,
    ) -> AsyncIterator[None]:
        """Hold the domain lock (shared unless ``exclusive_domain``), the topic locks of
        ``partitions`` (shared) and of ``exclusive_topics`` (exclusive), then the partition
        mutexes, each level in sorted order."""
        parts = sorted(set(partitions))
        excl = set(exclusive_topics)
        topics = sorted({p.topic_id for p in parts} | excl)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                self.domain.exclusive() if exclusive_domain else self.domain.shared())
            for t in topics:
                await stack.enter_async_context(self._topics.hold(t, t in excl))
            for p in parts:
                await stack.enter_async_context(self._partitions.hold(p))
            yield

    @asynccontextmanager
    async def objects(self, oids: Iterable[uuid.UUID]) -> AsyncIterator[None]:
        """Hold the object mutexes of ``oids`` in sorted order. REQUIRES: the caller holds no
        object lock yet (take all of an operation's object locks in one call)."""
        async with AsyncExitStack() as stack:
            for oid in sorted(set(oids)):
                await stack.enter_async_context(self._objects.hold(oid))
            yield
