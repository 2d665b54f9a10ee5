"""TableCache under concurrency: waiters of an in-flight open, tiny capacities, eviction.

The in-flight rule (``docs/concurrency.md``): a task that finds an SST already being opened
waits for that open, and the reference it leaves with is taken *for* it, in the same step that
publishes the reader; it never takes one after waking, when the reader may already have been
evicted and closed. Scheduling is forced with events on a persistence whose opens pause.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.errors import GateClosed
from cachedaemon.lsm import Database
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.dbformat import KIND_VALUE, make_internal_key, seek_key, user_prefix
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import MemoryDataPersistence, memory_persistence
from cachedaemon.lsm.io.persistence import (
    FileHandle,
    Persistence,
    RandomAccessReader,
    SequentialWriter,
)
from cachedaemon.lsm.table_builder import SstBuilder
from cachedaemon.lsm.table_cache import TableCache
from tests.lsm.lsm_helpers import tiny_options


class PausingData:
    """Memory data persistence whose ``open_random_access_reader`` of a handle in ``paused``
    waits for that handle's event (set it to let the open finish)."""

    def __init__(self, inner: MemoryDataPersistence) -> None:
        self.inner = inner
        self.paused: dict[FileHandle, asyncio.Event] = {}
        self.opening: dict[FileHandle, asyncio.Event] = {}
        self.opens = 0

    def pause(self, handle: FileHandle) -> asyncio.Event:
        self.opening[handle] = asyncio.Event()
        ev = self.paused[handle] = asyncio.Event()
        return ev

    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None:
        self.opens += 1
        ev = self.paused.get(handle)
        if ev is not None:
            self.opening[handle].set()
            await ev.wait()
        return await self.inner.open_random_access_reader(handle)

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter:
        return await self.inner.open_sequential_writer(handle)

    async def remove_file(self, handle: FileHandle) -> None:
        await self.inner.remove_file(handle)

    def list_files(self) -> AsyncIterator[FileHandle]:
        return self.inner.list_files()

    async def close(self) -> None:
        await self.inner.close()


def key(h: FileHandle) -> bytes:
    return b"k%d" % h.id


async def make_tables(n: int) -> tuple[MemoryDataPersistence, list[FileHandle]]:
    data = memory_persistence().data
    assert isinstance(data, MemoryDataPersistence)
    handles = [FileHandle(i, 0) for i in range(2, 2 + n)]
    for h in handles:
        b = SstBuilder(h, await data.open_sequential_writer(h), block_size=64)
        b.add(make_internal_key(key(h), 1, KIND_VALUE), b"value of %d" % h.id)
        for j in range(20):
            b.add(make_internal_key(key(h) + b"/%02d" % j, 1, KIND_VALUE), b"v%d" % j)
        await b.finish()
    return data, handles


async def read(tc: TableCache, h: FileHandle) -> bytes | None:
    table = tc.lookup(h) or await tc.find(h)
    try:
        found = await table.get(seek_key(key(h)), user_prefix(key(h)))
    finally:
        tc.release(table)
    return None if found is None else found[1]


async def test_waiter_of_an_in_flight_open_gets_a_live_reader() -> None:
    """Bug 1 of issue 11: the waiter took its reference after waking; by then the opener had
    released the reader and a lookup of another file had evicted and closed it."""
    data, (h1, h2) = await make_tables(2)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    release_open = paused.pause(h1)

    async def opener() -> None:
        table = await tc.find(h1)
        tc.release(table)
        # Before the waiter runs: another file pushes h1 out of the one-slot cache.
        tc.release(await tc.find(h2))

    first = asyncio.create_task(opener())
    await paused.opening[h1].wait()
    waiter = asyncio.create_task(read(tc, h1))
    await asyncio.sleep(0)  # the waiter is parked on the in-flight open
    release_open.set()
    await first
    assert await waiter == b"value of 2"
    await tc.close()
    assert data.open_readers == 0
    assert paused.opens == 2  # h1 once (shared), h2 once


async def test_cancelled_waiter_leaves_no_reference_behind() -> None:
    data, (h1, h2) = await make_tables(2)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    release_open = paused.pause(h1)
    first = asyncio.create_task(tc.find(h1))
    await paused.opening[h1].wait()
    waiter = asyncio.create_task(tc.find(h1))
    await asyncio.sleep(0)
    waiter.cancel()
    release_open.set()
    table = await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert table.refs == 1
    tc.release(table)
    tc.release(await tc.find(h2))  # evicts h1: closed now, since nobody holds it
    assert data.open_readers == 1
    await tc.close()
    assert data.open_readers == 0


async def test_waiter_cancelled_after_the_open_landed_releases_its_reference() -> None:
    data, (h1,) = await make_tables(1)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    release_open = paused.pause(h1)
    first = asyncio.create_task(tc.find(h1))
    await paused.opening[h1].wait()
    waiter = asyncio.create_task(tc.find(h1))
    await asyncio.sleep(0)
    release_open.set()
    table = await first  # the reference of the waiter is taken too, before it runs
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert table.refs == 1
    tc.release(table)
    await tc.close()
    assert data.open_readers == 0


async def test_failed_open_reaches_every_waiter_and_the_next_find_retries() -> None:
    data, (h1,) = await make_tables(1)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    release_open = paused.pause(h1)
    data.fail_next(1)
    first = asyncio.create_task(tc.find(h1))
    await paused.opening[h1].wait()
    waiters = [asyncio.create_task(tc.find(h1)) for _ in range(3)]
    await asyncio.sleep(0)
    release_open.set()
    results = await asyncio.gather(first, *waiters, return_exceptions=True)
    assert all(isinstance(r, Exception) and "injected" in str(r) for r in results)
    del paused.paused[h1]
    assert await read(tc, h1) == b"value of 2"
    await tc.close()
    assert data.open_readers == 0


async def test_open_landing_after_close_is_closed_not_cached() -> None:
    data, (h1,) = await make_tables(1)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    release_open = paused.pause(h1)
    first = asyncio.create_task(tc.find(h1))
    await paused.opening[h1].wait()
    await tc.close()
    release_open.set()
    with pytest.raises(GateClosed):
        await first
    assert data.open_readers == 0
    with pytest.raises(GateClosed):
        await tc.find(h1)


@pytest.mark.parametrize("capacity", [1, 2])
@pytest.mark.parametrize("seed", range(3))
async def test_stress_tiny_capacity_concurrent_reads(seed: int, capacity: int) -> None:
    """Many concurrent readers over more files than slots, opens pausing at random; every read
    answers, every reader is closed exactly once, and nothing stays open at the end."""
    rnd = random.Random(seed)
    data, handles = await make_tables(6)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(256), capacity=capacity)
    events: list[asyncio.Event] = []

    async def release_opens() -> None:
        while True:
            await asyncio.sleep(0)
            for ev in events:
                if not ev.is_set() and rnd.random() < 0.3:
                    ev.set()

    async def reader(i: int) -> None:
        for h in rnd.sample(handles, rnd.randint(1, 3)):  # a get may consult several files
            if rnd.random() < 0.5 and h not in paused.paused:
                events.append(paused.pause(h))
            assert await read(tc, h) == b"value of %d" % h.id
            paused.paused.pop(h, None)

    pump = asyncio.create_task(release_opens())
    try:
        await asyncio.gather(*(reader(i) for i in range(400)))
    finally:
        pump.cancel()
    assert len(tc) <= capacity
    await tc.close()
    assert data.open_readers == 0


async def test_database_concurrent_gets_over_disk_with_two_open_files(tmp_path: Path) -> None:
    """The issue's reproduction, bounded: concurrent gets over more SSTs than
    ``max_open_files`` on disk persistence (whose opens pause in a worker thread)."""
    p = await open_disk_persistence(tmp_path / "db")
    opts = tiny_options(max_open_files=2, block_cache_bytes=512, l0_compaction_trigger=100,
                        l0_slowdown_writes_trigger=100, l0_stop_writes_trigger=200)
    db = await Database.open(opts, p)
    expected: dict[bytes, bytes] = {}
    for f in range(8):  # eight overlapping L0 files; a get consults several
        for i in range(f, 240, 8):
            k, v = b"key-%03d" % i, b"v%d-%d" % (f, i)
            await db.put(k, v)
            expected[k] = v
        await db.flush()
    assert db.level_stats()[0].files >= 4
    rnd = random.Random(7)
    ks = [rnd.choice(sorted(expected)) for _ in range(600)]
    got = await asyncio.gather(*(db.get(k) for k in ks), return_exceptions=True)
    assert got == [expected[k] for k in ks]
    await db.wait_for_background_work()
    await db.close()


async def test_database_close_waits_for_a_get_whose_open_is_in_flight() -> None:
    mem = memory_persistence()
    db = await Database.open(tiny_options(), mem)
    await db.put(b"k", b"v")
    await db.flush()
    await db.close()
    paused = PausingData(mem.data)  # type: ignore[arg-type]
    db = await Database.open(tiny_options(), Persistence(paused, mem.metadata))
    (handle,) = [f.handle for f in db.current_version.files()]
    release_open = paused.pause(handle)
    get = asyncio.create_task(db.get(b"k"))
    await paused.opening[handle].wait()
    closing = asyncio.create_task(db.close())
    try:
        for _ in range(1000):  # the background tasks leave the gate...
            if all(t.done() for t in db._tasks):
                break
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert not closing.done()  # ...but the in-flight read holds it
    finally:
        release_open.set()
    assert await get == b"v"
    await closing
    assert mem.data.open_readers == 0  # type: ignore[attr-defined]


class SlowClose:
    """A reader whose close waits for an event (a close that really suspends)."""

    def __init__(self, inner: RandomAccessReader, gate: asyncio.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.closing = asyncio.Event()

    async def read(self, offset: int, n: int) -> bytes:
        return await self.inner.read(offset, n)

    def size(self) -> int:
        return self.inner.size()

    async def close(self) -> None:
        self.closing.set()
        await self.gate.wait()
        await self.inner.close()


async def test_opener_cancelled_while_closing_an_evicted_reader_gives_its_reference_back() -> None:
    data, (h1, h2) = await make_tables(2)
    paused = PausingData(data)
    gate = asyncio.Event()
    slow: list[SlowClose] = []
    inner_open = paused.open_random_access_reader

    async def open_slow(handle: FileHandle) -> RandomAccessReader | None:
        reader = await inner_open(handle)
        assert reader is not None
        slow.append(SlowClose(reader, gate))
        return slow[-1]

    paused.open_random_access_reader = open_slow  # type: ignore[method-assign]
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    tc.release(await tc.find(h1))
    second = asyncio.create_task(tc.find(h2))  # publishes h2, then closes the evicted h1
    await slow[0].closing.wait()
    second.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await second
    table = tc.lookup(h2)
    assert table is not None and table.refs == 1  # only the lookup's own reference
    tc.release(table)
    await tc.close()
    assert data.open_readers == 0


async def test_a_failing_close_is_logged_not_raised_into_another_lookup(
        caplog: pytest.LogCaptureFixture) -> None:
    data, (h1, h2) = await make_tables(2)
    paused = PausingData(data)
    tc = TableCache(paused, BlockCache(1 << 20), capacity=1)
    t1 = await tc.find(h1)
    await t1._reader.close()  # type: ignore[attr-defined]  # its next close will raise
    tc.release(t1)
    assert await read(tc, h2) == b"value of 3"  # evicts h1; the failing close stays there
    assert "closing the reader of" in caplog.text and "closed twice" in caplog.text
    await tc.close()
