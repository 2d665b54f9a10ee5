"""The L1 row cache: point queries answered from memory, always equal to the database.

Checked here: a query served from the cache reads no snapshot; every write path keeps the
cached rows equal to the database's (also writes that do not go through the L1 code, a
refresh, a new database); a query that read a snapshot fills the cache only if nothing was
applied since; and a query racing ``add_objects``, ``replace_objects`` or
``set_start_offset`` answers from the state before or after the write, never a mix — with the
race points controlled by events, then in a bounded stress loop checked against every state
the database went through.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm import Database, Options, Snapshot, WriteBatch
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.metastore.l1 import (
    DatabaseRowStore,
    L1Metastore,
    MissingPartition,
    OutOfRange,
    keys,
    values,
)
from cachedaemon.metastore.l1.cache import RowCache
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.store import DatabaseReader, RowOp, RowReader
from tests.metastore.l1.helpers import (
    P0,
    P1,
    Q0,
    add,
    assert_cache_mirrors,
    ext,
    obj,
    prereg,
    terms_for,
)


class Instrumented:
    """The real row store, counting snapshots and able to hold a reader or a write at a
    chosen point until the test lets it go."""

    def __init__(self, db: Database) -> None:
        self.inner = DatabaseRowStore(db)
        self.snapshots = 0
        #: Set to hold the next reader before its n-th read (gets and scans counted).
        self.hold_read: tuple[int, asyncio.Event, asyncio.Event] | None = None
        #: Set to hold the next write before it is applied.
        self.hold_apply: tuple[asyncio.Event, asyncio.Event] | None = None
        #: Set to pause every read of a query a random moment (stress).
        self.jitter: random.Random | None = None

    @asynccontextmanager
    async def snapshot(self, *, for_write: bool = False) -> AsyncIterator[RowReader]:
        self.snapshots += 1
        async with self.inner.snapshot(for_write=for_write) as reader:
            held = None
            if not for_write and self.hold_read is not None:
                held, self.hold_read = self.hold_read, None
            if held is not None:
                yield _HeldReader(reader, *held)
            elif self.jitter is not None and not for_write:
                yield _JitteryReader(reader, self.jitter)
            else:
                yield reader

    def persisted_snapshot(self) -> AbstractAsyncContextManager[RowReader]:
        return self.inner.persisted_snapshot()

    async def apply(self, ops: Sequence[RowOp]) -> None:
        held, self.hold_apply = self.hold_apply, None
        if held is not None:
            reached, go = held
            reached.set()
            await go.wait()
        await self.inner.apply(ops)

    def database(self) -> Database | None:
        return self.inner.database()


class _HeldReader:
    def __init__(self, inner: RowReader, n: int, reached: asyncio.Event,
                 go: asyncio.Event) -> None:
        self.inner = inner
        self.left = n
        self.reached = reached
        self.go = go

    @property
    def database(self) -> Database:
        return self.inner.database

    @property
    def seqno(self) -> int:
        return self.inner.seqno

    async def _tick(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.reached.set()
            await self.go.wait()

    async def get(self, key: bytes) -> bytes | None:
        await self._tick()
        return await self.inner.get(key)

    async def scan(self, start: bytes, end: bytes, *, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[bytes, bytes]]:
        await self._tick()
        return await self.inner.scan(start, end, limit=limit, reverse=reverse)


class _JitteryReader(_HeldReader):
    def __init__(self, inner: RowReader, rnd: random.Random) -> None:
        super().__init__(inner, 0, asyncio.Event(), asyncio.Event())
        self.rnd = rnd

    async def _tick(self) -> None:
        if self.rnd.random() < 0.5:
            await asyncio.sleep(self.rnd.random() / 2000)


@pytest.fixture
def store(db: Database) -> Instrumented:
    return Instrumented(db)


@pytest.fixture
def cached(store: Instrumented, clock: ManualClock) -> L1Metastore:
    return L1Metastore(store, clock=clock)


def answer(loc: Any) -> tuple[Any, ...]:
    return (loc.base_offset, loc.last_offset, loc.oid, loc.filepos, loc.len, loc.footer_pos,
            loc.object_size, loc.object_key, loc.max_timestamp)


async def run(call: Awaitable[Any]) -> Any:
    """The answer, or the error's class and message."""
    try:
        got = await call
    except CacheDaemonError as exc:
        return type(exc).__name__, str(exc)
    return answer(got) if hasattr(got, "base_offset") else got


async def seed(l1: L1Metastore) -> list[uuid.UUID]:
    """P0: [0,9] [10,19] [20,29]; P1: [0,4]; three objects."""
    objects = [obj(ext(P0, 0, 9), ext(P1, 0, 4, length=50)), obj(ext(P0, 10, 19)),
               obj(ext(P0, 20, 29, length=40))]
    for o in objects:
        await add(l1, [o])
    return [o.oid for o in objects]


# --- served from memory ----------------------------------------------------------------------


async def test_point_queries_after_writes_read_no_snapshot(cached: L1Metastore,
                                                           store: Instrumented,
                                                           db: Database) -> None:
    uncached = L1Metastore(DatabaseRowStore(db), cache_bytes=0)
    await seed(cached)
    before = store.snapshots
    for offset in (0, 5, 10, 19, 25, 29):
        assert await run(cached.get_first_ge(P0, offset)) == await run(
            uncached.get_first_ge(P0, offset))
    assert await cached.get_offsets(P0) == await uncached.get_offsets(P0)
    assert await cached.get_size(P1) == 50
    assert await cached.get_partition(P1) == await uncached.get_partition(P1)
    # Past the end is answered from memory too (a reader polling at the tail).
    assert await run(cached.get_first_ge(P0, 30)) == await run(uncached.get_first_ge(P0, 30))
    assert store.snapshots == before
    assert cached.cache.hits == 10 and cached.cache.misses == 0


async def test_a_miss_reads_one_snapshot_and_fills_the_cache(store: Instrumented,
                                                             db: Database,
                                                             clock: ManualClock) -> None:
    writer = L1Metastore(DatabaseRowStore(db), clock=clock, cache_bytes=0)
    await seed(writer)
    reader = L1Metastore(store, clock=clock)  # saw none of the writes
    first = await run(reader.get_first_ge(P0, 12))
    assert store.snapshots == 1 and reader.cache.misses == 1 and reader.cache.fills == 1
    assert await run(reader.get_first_ge(P0, 12)) == first
    assert await run(reader.get_first_ge(P0, 15)) == first
    assert store.snapshots == 1 and reader.cache.hits == 2
    # Another extent of the same partition is not cached yet: one more snapshot.
    assert (await run(reader.get_first_ge(P0, 0)))[:2] == (0, 9)
    assert store.snapshots == 2
    assert await assert_cache_mirrors(reader, db) > 0


async def test_errors_take_the_lsm_path_and_say_the_same(cached: L1Metastore, db: Database,
                                                         store: Instrumented) -> None:
    await seed(cached)
    uncached = L1Metastore(DatabaseRowStore(db), cache_bytes=0)
    missing = TopicIdPartition(uuid.uuid4(), 3)
    for call in (lambda m: m.get_first_ge(missing, 0), lambda m: m.get_offsets(missing),
                 lambda m: m.get_first_ge(P0, 10**6)):
        assert await run(call(cached)) == await run(call(uncached))
    with pytest.raises(MissingPartition):
        await cached.get_partition(missing)
    with pytest.raises(OutOfRange):
        await cached.get_first_ge(P1, 5)


async def test_off_means_every_query_reads_the_lsm(store: Instrumented, clock: ManualClock,
                                                   db: Database) -> None:
    l1 = L1Metastore(store, clock=clock, cache_bytes=0)
    await seed(l1)
    before = store.snapshots
    await l1.get_first_ge(P0, 3)
    await l1.get_offsets(P0)
    assert store.snapshots == before + 2
    assert l1.cache.statistics()["entries"] == 0


async def test_a_write_reads_cached_rows_while_they_are_its_snapshots(
        cached: L1Metastore, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_objects checks its terms against each partition's highest stored term: with the
    cache holding it (and nothing applied since the write's snapshot) no reverse scan runs;
    with a batch landing in between, the write reads its snapshot as before."""
    await seed(cached)
    scans: list[bytes] = []
    real_scan = DatabaseReader.scan

    async def counting(self: DatabaseReader, start: bytes, end: bytes, **kw: Any
                       ) -> list[tuple[bytes, bytes]]:
        scans.append(start[:2])
        return await real_scan(self, start, end, **kw)

    monkeypatch.setattr(DatabaseReader, "scan", counting)
    o = obj(ext(P0, 30, 39), ext(P1, 5, 9))
    await prereg(cached, o)
    assert await cached.add_objects([o], terms_for([o])) == {}
    assert keys.TERM_START not in scans
    assert (await cached.get_offsets(P1)).next_offset == 10
    await assert_cache_mirrors(cached, db)
    # A write whose snapshot is older than the newest batch reads the snapshot.
    with db.create_snapshot() as snap:
        reader = DatabaseReader(db, snap)
        await db.apply(WriteBatch().put(b"zz-unrelated", b"x"))
        assert await cached.staged(reader).last_term(P0) == (1, 0)
    assert scans.count(keys.TERM_START) == 1


# --- the rule: cached rows are the database's rows --------------------------------------------


async def test_every_write_path_keeps_cached_rows_equal_to_the_database(
        cached: L1Metastore, db: Database, clock: ManualClock) -> None:
    oids = await seed(cached)
    for offset in range(0, 30, 3):
        await cached.get_first_ge(P0, offset)
    # 2 partitions' metadata, 4 extents, 3 objects, 2 partitions' highest terms
    assert await assert_cache_mirrors(cached, db) == 11
    # Replace [10,19] [20,29] by one object; truncate; remove a topic; GC-style removals.
    new = obj(ext(P0, 10, 29, length=120))
    await prereg(cached, new)
    await cached.replace_objects([new], {P0: 0})
    await assert_cache_mirrors(cached, db)
    assert await run(cached.get_first_ge(P0, 12)) == await run(
        L1Metastore(DatabaseRowStore(db), cache_bytes=0).get_first_ge(P0, 12))
    await cached.set_start_offset(P0, 10)
    await assert_cache_mirrors(cached, db)
    await cached.remove_topics([Q0.topic_id, P0.topic_id])
    await assert_cache_mirrors(cached, db)
    with pytest.raises(MissingPartition):
        await cached.get_first_ge(P0, 12)
    clock.advance(10)
    await cached.remove_objects(oids)
    await assert_cache_mirrors(cached, db)


async def test_writes_that_bypass_the_l1_code_are_mirrored_too(cached: L1Metastore,
                                                               db: Database) -> None:
    """A batch applied straight to the database (a replayed log, a kv write into the domain)
    reaches the cache through the write listener: a rewritten metadata row, a deleted extent
    and a deleted object are seen at once."""
    oids = await seed(cached)
    await cached.get_first_ge(P0, 12)
    m = await cached.get_partition(P0)
    rewritten = values.PartitionMetadata(m.start_offset, 15, m.compaction_epoch, m.size,
                                         m.num_extents)
    await db.apply(WriteBatch().put(keys.metadata_key(P0), values.encode_metadata(rewritten)))
    assert (await cached.get_offsets(P0)).next_offset == 15
    with pytest.raises(OutOfRange):
        await cached.get_first_ge(P0, 16)
    await db.apply(WriteBatch().delete(keys.extent_key(P0, 0)).delete(keys.object_key(oids[1])))
    await assert_cache_mirrors(cached, db)
    # The extent of offset 12 points at a deleted object now: the LSM path reports it.
    with pytest.raises(CacheDaemonError, match="has no row"):
        await cached.get_first_ge(P0, 12)
    # A row the cache cannot decode is left to the LSM path, which reports the damage.
    await db.apply(WriteBatch().put(keys.metadata_key(P1), b"\x09garbage"))
    with pytest.raises(CacheDaemonError, match="version"):
        await cached.get_offsets(P1)


async def test_a_new_database_or_a_refresh_empties_the_cache(clock: ManualClock) -> None:
    cache = RowCache(1 << 20)
    async with await Database.open(Options(), memory_persistence()) as one, \
            await Database.open(Options(), memory_persistence()) as two:
        assert cache.bind(one)
        cache.on_apply([(0, keys.metadata_key(P0), values.encode_metadata(
            values.PartitionMetadata(0, 10, 0, 100, 1)))])
        assert cache.partition(P0) is not None
        assert cache.bind(one) and cache.partition(P0) is not None
        assert cache.bind(two)
        assert cache.partition(P0) is None
        await one.put(keys.metadata_key(P0), values.encode_metadata(
            values.PartitionMetadata(0, 20, 0, 100, 1)))
        assert cache.partition(P0) is None  # no longer listening to the old database
        await two.put(keys.metadata_key(P0), values.encode_metadata(
            values.PartitionMetadata(0, 30, 0, 100, 1)))
        p = cache.partition(P0)
        assert p is not None and p.meta is not None and p.meta.next_offset == 30
        cache.on_apply(None)  # what a read-only refresh that changed rows sends
        assert cache.partition(P0) is None


async def test_capacity_bounds_the_cache_least_recently_used_first(cached: L1Metastore,
                                                                   db: Database) -> None:
    from cachedaemon.metastore.l1.cache import EXTENT_CHARGE, OBJECT_CHARGE, PARTITION_CHARGE

    cached.cache.capacity_bytes = 2 * PARTITION_CHARGE + 4 * EXTENT_CHARGE + 2 * OBJECT_CHARGE
    await seed(cached)
    stats = cached.cache.statistics()
    assert stats["usage_bytes"] <= stats["capacity_bytes"] and stats["evictions"] > 0
    await assert_cache_mirrors(cached, db)
    uncached = L1Metastore(DatabaseRowStore(db), cache_bytes=0)
    for offset in range(30):
        assert await run(cached.get_first_ge(P0, offset)) == await run(
            uncached.get_first_ge(P0, offset))
    assert cached.cache.statistics()["usage_bytes"] <= stats["capacity_bytes"]


# --- races: before or after, never a mix -------------------------------------------------------


async def test_a_fill_is_refused_when_a_write_landed_during_the_read(
        store: Instrumented, db: Database, clock: ManualClock) -> None:
    """The miss path pauses between reading the metadata and seeking the extent; meanwhile a
    replacement lands. The query answers the state it started from, and what it read is not
    cached (the next query sees the replacement)."""
    writer = L1Metastore(DatabaseRowStore(db), clock=clock)
    await seed(writer)
    reader = L1Metastore(store, clock=clock)
    reached, go = asyncio.Event(), asyncio.Event()
    store.hold_read = (2, reached, go)
    query = asyncio.create_task(run(reader.get_first_ge(P0, 12)))
    await reached.wait()
    new = obj(ext(P0, 10, 29, length=120))
    await prereg(writer, new)
    await writer.replace_objects([new], {P0: 0})
    go.set()
    old = await query
    assert old[:2] == (10, 19)
    assert reader.cache.fills == 0
    assert (await run(reader.get_first_ge(P0, 12)))[:3] == (10, 29, new.oid)
    await assert_cache_mirrors(reader, db)


WriteStep = Callable[[L1Metastore], Awaitable[Any]]


async def _replace(l1: L1Metastore) -> None:
    new = obj(ext(P0, 10, 29, length=120))
    await prereg(l1, new)
    await l1.replace_objects([new], {P0: 0})


async def _truncate(l1: L1Metastore) -> None:
    await l1.set_start_offset(P0, 20)


async def _append(l1: L1Metastore) -> None:
    o = obj(ext(P0, 30, 39), ext(P1, 5, 9))
    await prereg(l1, o)
    await l1.add_objects([o], terms_for([o]))


@pytest.mark.parametrize("write", [_replace, _truncate, _append])
async def test_queries_racing_a_write_see_before_or_after(
        cached: L1Metastore, store: Instrumented, db: Database, write: WriteStep) -> None:
    """The write is held after it computed its update and before its batch is applied:
    queries meanwhile (answered from the cache) give the old answers; right after the apply,
    the new ones — the same as an LSM read at those moments."""
    await seed(cached)
    for offset in range(0, 40):  # fill the cache with every row of P0
        await run(cached.get_first_ge(P0, offset))
    uncached = L1Metastore(DatabaseRowStore(db), cache_bytes=0)

    async def answers(l1: L1Metastore) -> list[Any]:
        out = [await run(l1.get_first_ge(p, o)) for p in (P0, P1) for o in range(0, 42)]
        return [*out, await run(l1.get_offsets(P0)), await run(l1.get_offsets(P1))]

    before = await answers(uncached)
    reached, go = asyncio.Event(), asyncio.Event()
    store.hold_apply = (reached, go)
    writing = asyncio.create_task(write(cached))
    await reached.wait()
    hits = cached.cache.hits
    assert await answers(cached) == before
    assert cached.cache.hits > hits
    go.set()
    await writing
    after = await answers(uncached)
    assert after != before
    assert await answers(cached) == after
    await assert_cache_mirrors(cached, db)


class _AtSnapshot:
    """A row store frozen at one snapshot (the uncached reference answer at that seqno)."""

    def __init__(self, db: Database, snap: Snapshot) -> None:
        self.db = db
        self.snap = snap

    @asynccontextmanager
    async def snapshot(self, *, for_write: bool = False) -> AsyncIterator[RowReader]:
        yield DatabaseReader(self.db, self.snap)

    def persisted_snapshot(self) -> AbstractAsyncContextManager[RowReader]:
        raise NotImplementedError

    async def apply(self, ops: Sequence[RowOp]) -> None:
        raise NotImplementedError

    def database(self) -> Database | None:
        return None


@pytest.mark.parametrize("seed_", range(3))
async def test_stress_queries_racing_writers_match_a_state_the_database_was_in(
        seed_: int, clock: ManualClock) -> None:
    """Writers append, replace and truncate two partitions while readers query them, with
    random pauses inside reads and writes; the cache is small, so answers come from memory and
    from the LSM. Every answer must be the answer of one state the database was in while the
    query ran (checked afterwards against snapshots pinned after every batch)."""
    rnd = random.Random(seed_)
    db = await Database.open(Options(memtable_bytes=16 * 1024), memory_persistence())
    try:
        states: list[Snapshot] = [db.create_snapshot()]
        db.add_write_listener(lambda ops: states.append(db.create_snapshot()))
        store = Instrumented(db)
        store.jitter = rnd
        l1 = L1Metastore(store, clock=clock, cache_bytes=rnd.choice([3000, 20000, 1 << 20]))
        await seed(l1)
        nexts = {P0: 30, P1: 5}
        log: list[tuple[int, int, TopicIdPartition, int, Any]] = []

        async def writer(tidp: TopicIdPartition) -> None:
            for _ in range(12):
                await asyncio.sleep(rnd.random() / 1000)
                choice = rnd.random()
                try:
                    if choice < 0.5:
                        n = nexts[tidp]
                        o = obj(ext(tidp, n, n + 4))
                        await prereg(l1, o)
                        await l1.add_objects([o], terms_for([o]))
                        nexts[tidp] = n + 5
                    elif choice < 0.75:
                        listed = (await l1.get_extents(tidp, 0, limit=100)).extents
                        if len(listed) >= 2:
                            a, b = listed[-2], listed[-1]
                            new = obj(ext(tidp, a.base_offset, b.last_offset, length=77))
                            await prereg(l1, new)
                            epoch = (await l1.get_partition(tidp)).compaction_epoch
                            await l1.replace_objects([new], {tidp: epoch})
                    else:
                        m = await l1.get_partition(tidp)
                        await l1.set_start_offset(tidp, min(m.next_offset, m.start_offset + 3))
                except CacheDaemonError:
                    pass  # a stale epoch lost to the other writer: fine, nothing changed

        async def reader() -> None:
            for _ in range(150):
                tidp = rnd.choice([P0, P1])
                offset = rnd.randrange(0, nexts[tidp] + 2)
                start = db.max_applied_seqno
                got = await run(l1.get_first_ge(tidp, offset))
                log.append((start, db.max_applied_seqno, tidp, offset, got))
                if rnd.random() < 0.1:
                    l1.cache.clear()  # misses again: reads that race the writers and fill
                if rnd.random() < 0.3:
                    await asyncio.sleep(0)

        await asyncio.gather(writer(P0), writer(P1), reader(), reader())
        assert l1.cache.hits > 0 and l1.cache.misses > 0
        reference = {s.seqno: L1Metastore(_AtSnapshot(db, s), cache_bytes=0) for s in states}
        for start, end, tidp, offset, got in log:
            possible = [await run(m.get_first_ge(tidp, offset))
                        for seqno, m in reference.items() if start <= seqno <= end]
            assert got in possible, (start, end, tidp, offset, got, possible)
        await assert_cache_mirrors(l1, db)
        for s in states:
            s.release()
    finally:
        await db.close()


def test_the_setting_sizes_each_domains_cache() -> None:
    from cachedaemon.config import load_settings
    from cachedaemon.metastore.l1.service import l1_config

    assert l1_config(load_settings(env={})).cache_bytes == 128 * 1024 * 1024
    off = load_settings(env={"CACHEDAEMON_METASTORE_L1_CACHE_BYTES": "0"})
    assert l1_config(off).cache_bytes == 0
    assert l1_config(load_settings(flags={"metastore.l1_cache_bytes": "8MiB"})).cache_bytes == (
        8 * 1024 * 1024)
