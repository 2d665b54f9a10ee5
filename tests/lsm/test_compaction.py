"""Compaction picking (scores, pointers, expansion, trivial moves), output splitting on
grandparent overlap, flush placement and the file GC's safety rules, on hand-built versions."""

from __future__ import annotations

import dataclasses

from cachedaemon.clock import ManualClock
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.compaction import compact_range_compaction, pick_compaction
from cachedaemon.lsm.dbformat import KIND_VALUE, make_internal_key, user_prefix
from cachedaemon.lsm.file_gc import FileGC
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import FileHandle
from cachedaemon.lsm.options import NUM_LEVELS, Options
from cachedaemon.lsm.table_cache import TableCache
from cachedaemon.lsm.version_edit import FileMeta, VersionEdit
from cachedaemon.lsm.version_set import Version, VersionSet

OPTS = Options(
    max_file_bytes=100,
    l1_max_bytes=1000,
    l0_compaction_trigger=4,
    grandparent_overlap_factor=10,
    expanded_compaction_factor=25,
)
_ids = iter(range(2, 10**6))


def f(lo: bytes, hi: bytes, size: int = 100, seq: int = 1) -> FileMeta:
    return FileMeta(
        FileHandle(next(_ids), 0),
        size,
        make_internal_key(lo, seq, KIND_VALUE),
        make_internal_key(hi, seq, KIND_VALUE),
        seq,
        seq,
    )


def version(levels: dict[int, list[FileMeta]], opts: Options = OPTS) -> Version:
    edit = VersionEdit(added=[(lv, m) for lv, files in levels.items() for m in files])
    return Version.empty(opts).apply(edit, opts)


def test_scores() -> None:
    v = version({0: [f(b"a", b"b", seq=i) for i in range(1, 4)]})
    assert v.compaction_score == 0.75 and pick_compaction(v, [None] * NUM_LEVELS, OPTS) is None
    v = version({0: [f(b"a", b"b", seq=i) for i in range(1, 5)]})
    assert (v.compaction_level, v.compaction_score) == (0, 1.0)
    v = version({1: [f(b"%02d" % i, b"%02d~" % i, size=300) for i in range(5)]})
    assert v.compaction_level == 1 and v.compaction_score == 1.5
    v = version({2: [f(b"a", b"b", size=20_000)]})  # L2 limit = 10,000
    assert (v.compaction_level, v.compaction_score) == (2, 2.0)


def test_l0_compaction_takes_every_overlapping_l0_file_and_next_level() -> None:
    l0 = [f(b"a", b"c", seq=1), f(b"b", b"e", seq=2), f(b"d", b"f", seq=3), f(b"x", b"z", seq=4)]
    l1 = [f(b"a", b"b"), f(b"c", b"d"), f(b"m", b"n")]
    v = version({0: l0, 1: l1})
    c = pick_compaction(v, [None] * NUM_LEVELS, OPTS)
    assert c is not None and c.level == 0
    # Chosen: the first file, then transitively everything overlapping a..f.
    assert {m.handle for m in c.inputs[0]} == {m.handle for m in l0[:3]}
    assert {m.handle for m in c.inputs[1]} == {m.handle for m in l1[:2]}
    assert not c.is_trivial_move()


def test_compaction_pointer_round_robins_and_trivial_move() -> None:
    l1 = [f(b"%02d" % i, b"%02d~" % i, size=300) for i in range(5)]
    v = version({1: l1})
    pointers: list[bytes | None] = [None] * NUM_LEVELS
    c = pick_compaction(v, pointers, OPTS)
    assert c is not None and c.inputs[0] == [l1[0]] and c.is_trivial_move()
    pointers[1] = c.edit.compact_pointers[1]
    c = pick_compaction(v, pointers, OPTS)
    assert c is not None and c.inputs[0] == [l1[1]]
    pointers[1] = l1[-1].largest
    c = pick_compaction(v, pointers, OPTS)
    assert c is not None and c.inputs[0] == [l1[0]]  # wrapped around


def test_no_trivial_move_over_big_grandparent_overlap() -> None:
    l1 = [f(b"a", b"z", size=2000)]
    l3 = [f(b"b", b"c", size=600), f(b"d", b"e", size=600)]  # > 10 x 100 bytes
    v = version({1: l1, 3: l3})
    c = pick_compaction(v, [None] * NUM_LEVELS, OPTS)
    assert c is not None and not c.inputs[1] and not c.is_trivial_move()
    c2 = pick_compaction(version({1: l1}), [None] * NUM_LEVELS, OPTS)
    assert c2 is not None and c2.is_trivial_move()


def test_input_expansion_when_next_level_set_is_unchanged() -> None:
    l1 = [f(b"a", b"b", size=600), f(b"c", b"d", size=600), f(b"p", b"q", size=10)]
    l2 = [f(b"a", b"d", size=50)]
    v = version({1: l1, 2: l2})
    c = pick_compaction(v, [None] * NUM_LEVELS, OPTS)
    assert c is not None
    assert {m.handle for m in c.inputs[0]} == {l1[0].handle, l1[1].handle}
    assert c.inputs[1] == l2


def test_should_stop_before_splits_on_grandparent_overlap() -> None:
    gps = [f(b"%02d" % i, b"%02d~" % i, size=400) for i in range(10)]
    v = version({0: [f(b"00", b"99", seq=5)], 2: gps})
    c = compact_range_compaction(v, 0, None, None, OPTS)
    assert c is not None and len(c.grandparents) == 10
    cuts = [k for k in (user_prefix(b"%02d!" % i) for i in range(10)) if c.should_stop_before(k)]
    assert 2 <= len(cuts) <= 5  # every ~1000 bytes of grandparent overlap


def test_flush_placement_pushes_non_overlapping_files_down() -> None:
    v = version({})
    lo, hi = user_prefix(b"a"), user_prefix(b"b")
    assert v.pick_level_for_memtable_output(lo, hi, OPTS) == OPTS.max_mem_compact_level
    v = version({0: [f(b"a", b"c")]})
    assert v.pick_level_for_memtable_output(lo, hi, OPTS) == 0
    v = version({1: [f(b"b", b"c")]})
    assert v.pick_level_for_memtable_output(lo, hi, OPTS) == 0
    v = version({2: [f(b"a", b"c")]})
    assert v.pick_level_for_memtable_output(lo, hi, OPTS) == 1
    v = version({3: [f(b"a", b"c", size=5000)]})  # big grandparent overlap for L1
    assert v.pick_level_for_memtable_output(lo, hi, OPTS) == 1


async def test_file_gc_safety_rules() -> None:
    clock = ManualClock()
    opts = dataclasses.replace(OPTS, epoch=5, file_deletion_delay_s=10, clock=clock)
    p = memory_persistence()
    vs = VersionSet(opts, p.metadata)
    handles = {
        "live": FileHandle(2, 5),
        "garbage": FileHandle(3, 5),
        "old_epoch": FileHandle(40, 4),
        "future_epoch": FileHandle(1, 6),
        "in_flight": FileHandle(8, 5),
        "pinned": FileHandle(4, 5),
    }
    for h in handles.values():
        w = await p.data.open_sequential_writer(h)
        await w.append(b"x")
        await w.close()
    vs.next_file_id = 9
    pinned = version({1: [dataclasses.replace(f(b"a", b"b"), handle=handles["pinned"])]})
    vs.pin(pinned)
    await vs.log_and_apply(
        VersionEdit(added=[(1, dataclasses.replace(f(b"a", b"b"), handle=handles["live"]))])
    )
    in_flight = {8}
    gc = FileGC(p.data, vs, TableCache(p.data, BlockCache(1000)), opts, lambda: in_flight)
    assert gc.safe_highest() == 7
    due = await gc.collect()
    assert due == 10
    clock.advance(9)
    assert await gc.collect() == 1
    present = {h async for h in p.data.list_files()}
    assert handles["garbage"] in present
    clock.advance(1)
    await gc.collect()
    present = {h async for h in p.data.list_files()}
    assert present == {handles[n] for n in ("live", "future_epoch", "in_flight", "pinned")}
    vs.unpin(pinned)
    in_flight.clear()
    await gc.collect()
    clock.advance(10)
    await gc.collect()
    assert {h async for h in p.data.list_files()} == {handles["live"], handles["future_epoch"]}
