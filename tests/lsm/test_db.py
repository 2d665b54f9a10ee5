"""Database behaviour over every persistence backend (memory, disk, cloud via a file store)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.errors import DeadlineExceeded, InvalidArgument, ReadOnly
from cachedaemon.lsm import Database, WriteBatch
from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE
from cachedaemon.lsm.io.persistence import Persistence
from tests.lsm.lsm_helpers import (
    History,
    internal_entries,
    manifest_files,
    stored_files,
    tiny_options,
)
from tests.support.lsm_persistence import PersistenceBackend


async def fill(db: Database, n: int, hist: History, seed: int = 0, keys: int = 300) -> None:
    rnd = random.Random(seed)
    for i in range(n):
        k = b"key-%05d" % rnd.randrange(keys)
        if rnd.random() < 0.15:
            hist.record(await db.delete(k), [(k, None)])
        else:
            v = b"value-%d-" % i + bytes(rnd.randrange(30))
            hist.record(await db.put(k, v), [(k, v)])


async def test_put_get_delete_and_read_your_writes(lsm_persistence: Persistence) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    assert await db.get(b"a") is None
    s1 = await db.put(b"a", b"1")
    assert s1 == 1 and db.max_applied_seqno == 1 and db.max_persisted_seqno == 0
    assert await db.get(b"a") == b"1"
    b = WriteBatch().put(b"b", b"2").delete(b"a").put(b"c", b"3")
    assert await db.apply(b) == 4
    assert await db.get(b"a") is None
    assert await db.get(b"a", snapshot=1) == b"1"
    assert await db.scan() == [(b"b", b"2"), (b"c", b"3")]
    await db.flush()
    assert db.max_persisted_seqno == db.max_applied_seqno == 4
    assert await db.get(b"b") == b"2" and await db.get(b"a") is None
    assert await db.get(b"a", snapshot=1) == b"1"
    await db.close()


async def test_caller_supplied_seqnos(lsm_persistence: Persistence) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    assert await db.apply(WriteBatch().put(b"k", b"v").put(b"j", b"w"), seqno=100) == 101
    assert db.max_applied_seqno == 101
    with pytest.raises(InvalidArgument):
        await db.apply(WriteBatch().put(b"k", b"x"), seqno=101)
    assert await db.put(b"k", b"y") == 102
    assert await db.get(b"k", snapshot=100) == b"v"
    await db.close()


async def test_flush_persists_and_reopen_recovers(lsm_backend: PersistenceBackend) -> None:
    p = await lsm_backend.open()
    db = await Database.open(tiny_options(), p)
    hist = History()
    await fill(db, 1500, hist)
    await db.flush()
    persisted = db.max_persisted_seqno
    assert persisted == db.max_applied_seqno == 1500
    # Unflushed writes are lost on close (no WAL at this layer) and replayable with seqnos.
    await db.put(b"zz-lost", b"x")
    await db.close()
    await p.data.close()
    await p.metadata.close()
    p = await lsm_backend.open()
    db = await Database.open(tiny_options(), p)
    assert db.max_applied_seqno == db.max_persisted_seqno == persisted
    assert await db.scan() == sorted(hist.at(persisted).items())
    assert manifest_files(db) <= await stored_files(p)
    assert await db.apply(WriteBatch().put(b"zz-lost", b"x"), seqno=persisted + 1) == persisted + 1
    assert await db.get(b"zz-lost") == b"x"
    await db.close()


async def test_scans_forward_reverse_prefix_range_limit(lsm_persistence: Persistence) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    keys = [b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"b\xff", b"b\xff\xff", b"c"]
    for k in keys:
        await db.put(k, b"v" + k)
    for flushed in (False, True):
        if flushed:
            await db.flush()
        all_kv = [(k, b"v" + k) for k in keys]
        assert await db.scan() == all_kv
        assert await db.scan(reverse=True) == all_kv[::-1]
        assert await db.scan(prefix=b"a") == all_kv[:4]
        assert await db.scan(prefix=b"a\x00") == all_kv[1:3]
        assert await db.scan(prefix=b"b\xff", reverse=True) == all_kv[5:7][::-1]
        assert await db.scan(b"a\x00", b"b") == all_kv[1:4]
        assert await db.scan(b"a\x00", b"b", reverse=True) == all_kv[1:4][::-1]
        assert await db.scan(limit=3) == all_kv[:3]
        assert await db.scan(reverse=True, limit=2) == all_kv[-2:][::-1]
        assert await db.scan(b"b", b"b") == []
    await db.close()


async def test_iterator_is_a_stable_snapshot(lsm_persistence: Persistence) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    hist = History()
    await fill(db, 400, hist, seed=1)
    at = db.max_applied_seqno
    snap = db.create_snapshot()
    it = db.iterator()
    await fill(db, 800, hist, seed=2)  # flushes and compactions happen meanwhile
    await db.flush()
    await db.compact_range()
    expected = sorted(hist.at(at).items())
    await it.seek_to_first()
    got = [kv async for kv in it.items()]
    assert got == expected
    await it.close()
    assert await db.scan(snapshot=snap) == expected
    for k, v in expected[:50]:
        assert await db.get(k, snapshot=snap) == v
    snap.release()
    await db.close()


async def test_compaction_drops_shadowed_versions_but_keeps_snapshot_ones(
    lsm_persistence: Persistence,
) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    for i in range(20):
        await db.put(b"k", b"v%d" % i)
    await db.put(b"gone", b"x")
    await db.delete(b"gone")
    snap = db.create_snapshot()
    await db.put(b"k", b"after")
    await db.flush()
    await db.compact_range()
    entries = await internal_entries(db)
    ks = [(u, s, kind) for u, s, kind in entries if u == b"k"]
    # The newest version and the one the snapshot sees survive; older ones are gone.
    assert [(s, kind) for _, s, kind in ks] == [(23, KIND_VALUE), (20, KIND_VALUE)]
    # The tombstone is still needed at the snapshot? No: nothing older is visible below it.
    assert all(u != b"gone" for u, _, _ in entries)
    assert await db.get(b"k", snapshot=snap) == b"v19"
    snap.release()
    await db.put(b"other", b"o")
    await db.flush()
    await db.compact_range()
    assert [(s, kind) for u, s, kind in await internal_entries(db) if u == b"k"] == [
        (23, KIND_VALUE)
    ]
    await db.close()


async def test_tombstone_kept_while_older_data_lives_deeper(lsm_persistence: Persistence) -> None:
    opts = tiny_options(l1_max_bytes=1 << 30, l0_compaction_trigger=100)
    db = await Database.open(opts, lsm_persistence)
    await db.put(b"a", b"old")
    await db.put(b"z", b"old")
    await db.flush()
    await db.compact_range()  # now in L1 (or deeper)
    await db.delete(b"a")
    await db.put(b"b", b"new")
    await db.flush()
    # Compact only L0 -> L1: the tombstone's base level is deeper only if data lives below.
    assert await db.get(b"a") is None
    await db.compact_range()
    assert await db.get(b"a") is None
    assert (b"a", 3, KIND_DELETE) not in await internal_entries(db)
    assert await db.scan() == [(b"b", b"new"), (b"z", b"old")]
    await db.close()


async def test_background_compaction_keeps_levels_in_shape(lsm_persistence: Persistence) -> None:
    opts = tiny_options()
    db = await Database.open(opts, lsm_persistence)
    hist = History()
    await fill(db, 4000, hist, keys=2000)
    await db.flush()
    for _ in range(100):
        if db.current_version.compaction_score < 1:
            break
        await asyncio.sleep(0.01)
    st = db.stats()
    assert db.compactions + db.trivial_moves > 0
    assert st["levels"][0]["files"] < opts.l0_stop_writes_trigger
    for level in range(1, 7):
        files = db.current_version.levels[level]
        for a, b in itertools.pairwise(files):
            assert a.largest[:-8] < b.smallest[:-8]
    assert await db.scan() == sorted(hist.at(db.max_applied_seqno).items())
    assert st["block_cache"]["hits"] + st["block_cache"]["misses"] > 0
    await db.close()


async def test_readonly_replica_refresh(lsm_persistence: Persistence) -> None:
    writer = await Database.open(tiny_options(epoch=3), lsm_persistence)
    await writer.put(b"a", b"1")
    await writer.flush()
    reader = await Database.open(tiny_options(epoch=2**60, readonly=True), lsm_persistence)
    assert await reader.get(b"a") == b"1"
    assert not await reader.refresh()
    with pytest.raises(ReadOnly):
        await reader.put(b"x", b"y")
    await writer.put(b"b", b"2")
    await writer.flush()
    assert await reader.refresh()
    assert await reader.scan() == [(b"a", b"1"), (b"b", b"2")]
    assert reader.max_persisted_seqno == writer.max_persisted_seqno
    with pytest.raises(InvalidArgument):
        await writer.refresh()
    await reader.close()
    await writer.close()


async def test_write_listeners_see_every_batch_as_it_becomes_visible(
        lsm_persistence: Persistence) -> None:
    """A listener is told each applied batch's operations in order, in the step that makes
    them visible (max_applied_seqno already counts them), and None when a replica's
    refresh changed rows; a removed listener hears nothing more."""
    writer = await Database.open(tiny_options(epoch=3), lsm_persistence)
    heard: list[object] = []

    def listener(ops: list[tuple[int, bytes, bytes]] | None) -> None:
        heard.append(None if ops is None else [(k, key, v) for k, key, v in ops])
        heard.append(writer.max_applied_seqno)

    writer.add_write_listener(listener)
    seq = await writer.apply(WriteBatch().put(b"a", b"1").delete(b"b"))
    await writer.put(b"c", b"3")
    assert heard == [[(KIND_VALUE, b"a", b"1"), (KIND_DELETE, b"b", b"")], seq,
                     [(KIND_VALUE, b"c", b"3")], seq + 1]
    writer.remove_write_listener(listener)
    await writer.put(b"d", b"4")
    assert len(heard) == 4
    await writer.flush()
    reader = await Database.open(tiny_options(epoch=2**60, readonly=True), lsm_persistence)
    refreshed: list[object] = []
    reader.add_write_listener(refreshed.append)
    assert not await reader.refresh()
    assert refreshed == []
    await writer.put(b"e", b"5")
    await writer.flush()
    assert await reader.refresh()
    assert refreshed == [None]
    await reader.close()
    await writer.close()


async def test_writer_epoch_names_files_and_older_epoch_manifest_is_adopted(
    lsm_persistence: Persistence,
) -> None:
    db = await Database.open(tiny_options(epoch=1), lsm_persistence)
    await db.put(b"a", b"1")
    await db.flush()
    await db.close()
    db = await Database.open(tiny_options(epoch=5), lsm_persistence)
    await db.put(b"b", b"2")
    await db.flush()
    assert {h.epoch for h in manifest_files(db)} >= {5}
    assert db.epoch == 5
    await db.close()
    # Backends keep only the newest manifest, which an epoch-1 reader must not see.
    old = await Database.open(tiny_options(epoch=1, readonly=True), lsm_persistence)
    assert await old.scan() == []
    await old.close()
    new = await Database.open(tiny_options(epoch=9, readonly=True), lsm_persistence)
    assert await new.scan() == [(b"a", b"1"), (b"b", b"2")]
    await new.close()


async def test_flush_deadline(lsm_persistence: Persistence) -> None:
    from cachedaemon.core import failpoints

    db = await Database.open(tiny_options(), lsm_persistence)
    await db.put(b"a", b"1")
    failpoints.arm("lsm.flush.before_manifest", "delay:0.5")
    clock = db.options.clock
    with pytest.raises(DeadlineExceeded):
        await db.flush(deadline=clock.monotonic() + 0.05)
    failpoints.disarm()
    await db.flush()
    assert db.max_persisted_seqno == 1
    await db.close()


async def test_writes_stall_on_immutable_memtable_instead_of_growing(
    lsm_persistence: Persistence,
) -> None:
    from cachedaemon.core import failpoints

    db = await Database.open(tiny_options(), lsm_persistence)
    failpoints.arm("lsm.flush.before_manifest", "delay:0.05")
    for i in range(300):
        await db.put(b"k%04d" % i, b"x" * 40)
    assert db.write_stalls > 0
    assert db.stats()["memtable_bytes"] <= db.options.memtable_bytes + 200
    failpoints.disarm()
    await db.close()


async def test_file_gc_honours_delay_and_open_iterators(lsm_persistence: Persistence) -> None:
    clock = ManualClock()
    db = await Database.open(tiny_options(clock=clock, file_deletion_delay_s=60), lsm_persistence)
    hist = History()
    await fill(db, 600, hist)
    await db.flush()
    it = db.iterator()
    before = manifest_files(db)
    await db.compact_range()
    unreferenced = await stored_files(lsm_persistence) - manifest_files(db)
    assert unreferenced & before
    await db.collect_garbage()
    assert unreferenced <= await stored_files(lsm_persistence)  # delay not yet passed
    clock.advance(61)
    await db.collect_garbage()
    assert before <= await stored_files(lsm_persistence)  # the open iterator pins them
    await it.seek_to_first()
    assert [kv async for kv in it.items()] == sorted(hist.at(600).items())
    await it.close()
    await db.wait_for_background_work()
    await db.collect_garbage()
    clock.advance(61)
    await db.collect_garbage()
    assert await stored_files(lsm_persistence) == manifest_files(db)
    assert await db.scan() == sorted(hist.at(600).items())
    await db.close()


async def test_corrupt_manifest_and_sst_are_reported_never_served() -> None:
    from cachedaemon.errors import Corruption
    from cachedaemon.lsm.io.memory import memory_persistence

    p = memory_persistence()
    db = await Database.open(tiny_options(verify_checksums=True), p)
    for i in range(200):
        await db.put(b"k%04d" % i, b"v%04d" % i * 5)
    await db.flush()
    await db.close()
    files = p.data.files  # type: ignore[attr-defined]
    manifests = p.metadata.manifests  # type: ignore[attr-defined]
    # A flipped byte in an SST data block: reads of that block fail with Corruption.
    victim = max(files, key=lambda h: len(files[h]))
    raw = bytearray(files[victim])
    raw[20] ^= 0xFF
    files[victim] = bytes(raw)
    db = await Database.open(tiny_options(), p)
    results = []
    for i in range(200):
        try:
            results.append(await db.get(b"k%04d" % i))
        except Corruption as e:
            assert victim.name in str(e) and "at offset" in str(e)
            results.append(None)
    assert None in results
    assert all(r is None or r == b"v%04d" % i * 5 for i, r in enumerate(results))
    with pytest.raises(Corruption, match=victim.name):
        await db.scan()
    await db.close()
    # A flipped byte in the manifest: open fails with Corruption.
    epoch = max(manifests)
    m = bytearray(manifests[epoch])
    m[len(m) // 2] ^= 0x01
    manifests[epoch] = bytes(m)
    with pytest.raises(Corruption, match="manifest"):
        await Database.open(tiny_options(), p)


async def test_close_releases_stalled_writers_and_flushers(lsm_persistence: Persistence) -> None:
    from cachedaemon.core import failpoints
    from cachedaemon.errors import GateClosed

    db = await Database.open(tiny_options(), lsm_persistence)
    failpoints.arm("lsm.flush.before_manifest", "delay:0.2")

    async def writer() -> None:
        for i in range(10_000):
            await db.put(b"k%05d" % i, b"x" * 50)

    w = asyncio.create_task(writer())
    f = asyncio.create_task(db.flush())
    await asyncio.sleep(0.05)
    assert not w.done()  # stalled behind the slow flush
    await db.close()
    with pytest.raises(GateClosed):
        await w
    with pytest.raises(GateClosed):
        await f
    with pytest.raises(GateClosed):
        await db.put(b"late", b"x")


async def test_async_for_over_iterator_both_ways(lsm_persistence: Persistence) -> None:
    db = await Database.open(tiny_options(), lsm_persistence)
    kvs = [(b"k%03d" % i, b"v%d" % i) for i in range(200)]
    for k, v in kvs:
        await db.put(k, v)
    await db.delete(b"k100")
    expected = [kv for kv in kvs if kv[0] != b"k100"]
    assert [kv async for kv in db.iterator()] == expected
    assert [kv async for kv in db.iterator(reverse=True)] == expected[::-1]
    it = db.iterator()
    await it.seek(b"k150")
    assert [kv async for kv in it] == expected[149:]
    await db.close()


async def test_seek_compaction_of_a_file_consulted_in_vain(lsm_persistence: Persistence) -> None:
    opts = tiny_options(
        memtable_bytes=1 << 20,
        l0_compaction_trigger=100,
        l0_slowdown_writes_trigger=100,
        l0_stop_writes_trigger=200,
        l1_max_bytes=1 << 30,
    )
    db = await Database.open(opts, lsm_persistence)
    for i in range(0, 200, 2):
        await db.put(b"k%03d" % i, b"even")
    await db.flush()
    for i in range(1, 200, 2):
        await db.put(b"k%03d" % i, b"odd")
    await db.flush()
    levels = [len(files) for files in db.current_version.levels]
    assert levels[1] == 1 and levels[2] == 1, levels  # odd keys above the even ones
    assert db.compactions == 0
    for _ in range(3):
        for i in range(0, 200, 2):
            assert await db.get(b"k%03d" % i) == b"even"
    await db.wait_for_background_work()
    for _ in range(100):
        if db.current_version.num_files(1) == 0:
            break
        await asyncio.sleep(0.01)
    assert db.current_version.num_files(1) == 0  # compacted down into L2
    assert db.compactions + db.trivial_moves >= 1
    assert await db.scan() == sorted(
        (b"k%03d" % i, b"even" if i % 2 == 0 else b"odd") for i in range(200)
    )
    await db.close()


async def test_snapshot_at_persisted_seqno_survives_flush_and_compaction() -> None:
    """A reader pinned at the persisted seqno keeps seeing it while newer writes are flushed
    and compacted (the L1 GC reads this way); an older seqno is refused."""
    from cachedaemon.lsm import Options
    from cachedaemon.lsm.io.memory import memory_persistence

    db = await Database.open(Options(memtable_bytes=1 << 20), memory_persistence())
    try:
        await db.put(b"k", b"old")
        await db.flush()
        persisted = db.max_persisted_seqno
        await db.put(b"k", b"new")
        with db.create_snapshot(persisted) as snap:
            await db.flush()
            await db.compact_range()
            await db.wait_for_background_work()
            assert await db.get(b"k", snap) == b"old"
            assert await db.get(b"k") == b"new"
        with pytest.raises(InvalidArgument):
            db.create_snapshot(persisted - 1)
    finally:
        await db.close()


async def test_range_reads_in_chunks_and_agrees_with_scan(lsm_persistence: Persistence) -> None:
    """range() reads ahead in chunks (one loop shared with scan()): across the chunk
    boundaries, with and without limits, both ways, it yields exactly what scan() returns."""
    db = await Database.open(tiny_options(), lsm_persistence)
    try:
        for i in range(300):
            await db.put(b"k%04d" % i, b"v%d" % i)
        for limit in (None, 1, 63, 64, 65, 128, 129, 300, 500):
            for reverse in (False, True):
                for start, end in ((None, None), (b"k0010", b"k0200"), (b"k0100", None)):
                    got = [kv async for kv in db.range(start, end, limit=limit,
                                                       reverse=reverse)]
                    assert got == await db.scan(start, end, limit=limit, reverse=reverse)
                    assert len(got) == min(limit or 1000, len(
                        [i for i in range(300) if (start is None or b"k%04d" % i >= start)
                         and (end is None or b"k%04d" % i < end)]))
    finally:
        await db.close()
