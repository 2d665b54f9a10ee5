"""The lock hierarchy at work: concurrent operations on shared partitions and objects keep every
count exact, over a real database whose batch apply is slowed to widen every race window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.lsm import Database
from cachedaemon.metastore.l1 import DatabaseRowStore, L1Metastore
from cachedaemon.metastore.l1.locks import LockManager, RWLock
from cachedaemon.metastore.l1.store import RowOp, RowReader
from tests.metastore.l1.helpers import P0, P1, Q0, add, ext, obj, prereg, terms_for


class SlowApply:
    """The real row store, with a pause before each batch is applied."""

    def __init__(self, inner: DatabaseRowStore) -> None:
        self.inner = inner
        self.applies = 0

    def snapshot(self, *, for_write: bool = False) -> AbstractAsyncContextManager[RowReader]:
        return self.inner.snapshot(for_write=for_write)

    def persisted_snapshot(self) -> AbstractAsyncContextManager[RowReader]:
        return self.inner.persisted_snapshot()

    async def apply(self, ops: Sequence[RowOp]) -> None:
        await asyncio.sleep(0.005)
        self.applies += 1
        await self.inner.apply(ops)


@pytest.fixture
async def slow(db: Database, clock: ManualClock) -> AsyncIterator[L1Metastore]:
    yield L1Metastore(SlowApply(DatabaseRowStore(db)), clock=clock)


async def test_concurrent_truncations_sharing_objects_count_every_byte(
        slow: L1Metastore) -> None:
    objects = [obj(ext(P0, i * 10, i * 10 + 9), ext(P1, i * 10, i * 10 + 9, length=30),
                   ext(Q0, i * 10, i * 10 + 9, length=7)) for i in range(6)]
    await add(slow, objects)
    await asyncio.gather(
        slow.set_start_offset(P0, 30), slow.set_start_offset(P1, 40),
        slow.set_start_offset(Q0, 60), slow.set_start_offset(P0, 50),
        slow.remove_topics([Q0.topic_id]))
    for i, o in enumerate(objects):
        info = await slow.get_object(o.oid)
        assert info is not None
        expected = (100 if i < 5 else 0) + (30 if i < 4 else 0) + 7
        assert info.removed_data_size == expected, i
    assert slow.locks.statistics() == {"topics": 0, "partitions": 0, "objects": 0}


async def test_concurrent_adds_at_one_offset_add_once(slow: L1Metastore) -> None:
    await add(slow, [obj(ext(P0, 0, 9))])
    racing = [obj(ext(P0, 10, 19)) for _ in range(5)]
    await prereg(slow, *racing)
    results = await asyncio.gather(*(slow.add_objects([o], terms_for([o])) for o in racing))
    assert sorted(map(len, results)) == [0, 1, 1, 1, 1]
    assert all(r == {P0: 20} for r in results if r)
    m = await slow.get_partition(P0)
    assert (m.next_offset, m.num_extents, m.size) == (20, 2, 200)
    dead = [o for o in racing if (i := await slow.get_object(o.oid)) and
            i.removed_data_size == i.total_data_size]
    assert len(dead) == 4


async def test_concurrent_replaces_one_wins_the_epoch(slow: L1Metastore) -> None:
    await add(slow, [obj(ext(P0, 0, 9)), obj(ext(P0, 10, 19))])
    merged = [obj(ext(P0, 0, 19)) for _ in range(3)]
    await prereg(slow, *merged)
    tries = [slow.replace_objects([o], {P0: 0}) for o in merged]
    outcomes = await asyncio.gather(*tries, return_exceptions=True)
    assert sum(1 for o in outcomes if o == {P0: 1}) == 1
    assert sum(1 for o in outcomes if isinstance(o, Exception)) == 2
    assert (await slow.get_partition(P0)).num_extents == 1


async def test_rwlock_writer_excludes_readers_and_a_cancelled_writer_lets_them_in() -> None:
    lock = RWLock()
    order: list[str] = []
    await lock.acquire_shared()
    writer = asyncio.create_task(lock.acquire_exclusive())
    await asyncio.sleep(0)
    reader = asyncio.create_task(lock.acquire_shared())
    await asyncio.sleep(0)
    assert not writer.done() and not reader.done()  # a waiting writer holds new readers back
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await asyncio.wait_for(reader, 1)  # ... until it gives up
    await lock.release_shared()
    await lock.release_shared()
    async with lock.exclusive():
        order.append("w")
        blocked = asyncio.create_task(lock.acquire_shared())
        await asyncio.sleep(0)
        assert not blocked.done()
    await asyncio.wait_for(blocked, 1)
    await lock.release_shared()
    assert lock.idle and order == ["w"]


async def test_lock_manager_orders_and_cleans_up() -> None:
    locks = LockManager()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.partitions([P1, P0]):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    assert locks.statistics()["partitions"] == 2
    entered = asyncio.Event()

    async def contend() -> None:
        async with locks.partitions([P0]):
            entered.set()

    contender = asyncio.create_task(contend())
    await asyncio.sleep(0.01)
    assert not entered.is_set()
    release.set()
    await task
    await asyncio.wait_for(contender, 1)
    assert entered.is_set()
    assert locks.statistics() == {"topics": 0, "partitions": 0, "objects": 0}
