"""Unit tests of every L1 operation and query, rejection paths included, over a real
``lsm.Database`` (memory persistence)."""

from __future__ import annotations

import uuid

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.metastore.l1 import (
    InvalidRequest,
    L1Metastore,
    MissingPartition,
    OutOfRange,
    TopicIdPartition,
)
from cachedaemon.metastore.l1.types import CompactionUpdate, OffsetRange
from tests.metastore.l1.helpers import P0, P1, Q0, T1, T2, add, ext, obj, prereg, term, terms_for


async def seed(l1: L1Metastore) -> list[uuid.UUID]:
    """P0: [0,9] in o1 (100 B), [10,19] in o2 (100 B); P1: [0,4] in o1 (50 B)."""
    o1 = obj(ext(P0, 0, 9), ext(P1, 0, 4, length=50))
    o2 = obj(ext(P0, 10, 19))
    assert await add(l1, [o1], [term(P0, 1, 0), term(P1, 1, 0)]) == {}
    assert await add(l1, [o2], [term(P0, 1, 10), term(P0, 2, 15)]) == {}
    return [o1.oid, o2.oid]


# --- add_objects -------------------------------------------------------------------------------


async def test_add_objects_builds_partition_and_object_rows(l1: L1Metastore,
                                                            clock: ManualClock) -> None:
    o1, _o2 = await seed(l1)
    m = await l1.get_partition(P0)
    assert (m.start_offset, m.next_offset, m.size, m.num_extents, m.compaction_epoch) == (
        0, 20, 200, 2, 0)
    assert (await l1.get_offsets(P1)).next_offset == 5
    assert await l1.get_size(P1) == 50
    info = await l1.get_object(o1)
    assert info is not None
    assert (info.total_data_size, info.removed_data_size, info.is_preregistration) == (150, 0,
                                                                                        False)
    assert info.last_updated == int(clock.time() * 1000)
    assert info.footer_pos == 150 and info.object_size == 166
    assert await l1.get_object(uuid.uuid4()) is None


async def test_add_objects_misaligned_partition_is_corrected_not_added(l1: L1Metastore) -> None:
    await seed(l1)
    late = obj(ext(P0, 30, 39), ext(Q0, 0, 9))
    corrected = await add(l1, [late])
    assert corrected == {P0: 20}
    assert (await l1.get_offsets(P0)).next_offset == 20
    assert (await l1.get_offsets(Q0)).next_offset == 10
    info = await l1.get_object(late.oid)
    assert info is not None and info.removed_data_size == 100 and info.total_data_size == 200
    # A duplicate (already added) range is corrected too.
    again = obj(ext(P0, 10, 19))
    assert await add(l1, [again]) == {P0: 20}
    info = await l1.get_object(again.oid)
    assert info is not None and info.removed_data_size == info.total_data_size


@pytest.mark.parametrize("case", [
    "dup_oid", "no_extents", "footer", "base_gt_last", "past_footer", "gap", "overlap",
    "zero_length",
])
async def test_add_objects_rejects_bad_objects(l1: L1Metastore, case: str) -> None:
    oid = uuid.uuid4()
    good = obj(ext(P0, 0, 9), oid=oid)
    bad = {
        "dup_oid": [good, obj(ext(P0, 10, 19), oid=oid)],
        "no_extents": [good.__class__(oid=oid, footer_pos=0, object_size=0, extents=[])],
        "footer": [good.__class__(oid=oid, footer_pos=500, object_size=100,
                                  extents=good.extents)],
        "base_gt_last": [obj(ext(P0, 9, 0))],
        "past_footer": [good.__class__(oid=oid, footer_pos=50, object_size=200,
                                       extents=good.extents)],
        "gap": [good, obj(ext(P0, 11, 19))],
        "overlap": [obj(ext(P0, 0, 9), ext(P0, 5, 12))],
        "zero_length": [obj(ext(P0, 0, 9, length=0))],
    }[case]
    await l1.preregister_objects(oids=list(dict.fromkeys(o.oid for o in bad)))
    with pytest.raises(InvalidRequest) as info:
        await l1.add_objects(bad, terms_for(bad) or [term(P0, 1, 0)])
    assert info.value.http_status == 400 and info.value.reason
    with pytest.raises(MissingPartition):
        await l1.get_offsets(P0)  # nothing was written


async def test_add_objects_rejects_registered_oid(l1: L1Metastore) -> None:
    o1, _ = await seed(l1)
    with pytest.raises(InvalidRequest, match="not pre-registered"):
        await l1.add_objects([obj(ext(P0, 20, 29), oid=o1)], [term(P0, 2, 20)])
    assert (await l1.get_offsets(P0)).next_offset == 20


@pytest.mark.parametrize("case", ["no_extents", "outside", "not_increasing", "regression"])
async def test_add_objects_rejects_bad_terms(l1: L1Metastore, case: str) -> None:
    await seed(l1)  # P0 latest term is 2
    o = obj(ext(P0, 20, 29))
    await prereg(l1, o)
    terms = {
        "no_extents": [term(P0, 3, 20), term(P1, 3, 5)],
        "outside": [term(P0, 3, 20), term(P0, 4, 30)],
        "not_increasing": [term(P0, 4, 20), term(P0, 3, 25)],
        "regression": [term(P0, 1, 20)],
    }[case]
    with pytest.raises(InvalidRequest):
        await l1.add_objects([o], terms)
    assert (await l1.get_offsets(P0)).next_offset == 20
    info = await l1.get_object(o.oid)
    assert info is not None and info.is_preregistration  # still waiting to be added


async def test_add_objects_same_term_continues(l1: L1Metastore) -> None:
    await seed(l1)
    await add(l1, [obj(ext(P0, 20, 29))], [term(P0, 2, 20), term(P0, 3, 25)])
    assert await l1.get_term_for_offset(P0, 21) == 2
    assert await l1.get_term_for_offset(P0, 25) == 3
    assert await l1.get_end_offset_for_term(P0, 2) == 25


# --- queries -----------------------------------------------------------------------------------


async def test_offset_queries(l1: L1Metastore) -> None:
    o1, o2 = await seed(l1)
    e = await l1.get_first_ge(P0, 12)
    assert (e.base_offset, e.last_offset, e.oid) == (10, 19, o2)
    assert (await l1.get_first_ge(P0, 0)).oid == o1
    with pytest.raises(OutOfRange) as info:
        await l1.get_first_ge(P0, 20)
    assert info.value.http_status == 416 and info.value.code == "invalid_range"
    with pytest.raises(MissingPartition):
        await l1.get_first_ge(Q0, 0)


async def test_timestamp_query(l1: L1Metastore) -> None:
    await add(l1, [obj(ext(P0, 0, 9, ts=100), ext(P0, 10, 19, ts=200), ext(P0, 20, 29, ts=300))])
    assert (await l1.get_first_ge_timestamp(P0, 150)).base_offset == 10
    assert (await l1.get_first_ge_timestamp(P0, 50)).base_offset == 0
    assert (await l1.get_first_ge_timestamp(P0, 50, min_offset=21)).base_offset == 20
    with pytest.raises(OutOfRange):
        await l1.get_first_ge_timestamp(P0, 301)


async def test_first_offset_for_bytes(l1: L1Metastore) -> None:
    await seed(l1)
    assert await l1.get_first_offset_for_bytes(P0, 1000) == 0
    assert await l1.get_first_offset_for_bytes(P0, 150) == 10
    assert await l1.get_first_offset_for_bytes(P0, 99) == 20


async def test_term_queries(l1: L1Metastore) -> None:
    await seed(l1)
    assert await l1.get_term_for_offset(P0, 14) == 1
    assert await l1.get_term_for_offset(P0, 15) == 2
    assert await l1.get_end_offset_for_term(P0, 1) == 15
    assert await l1.get_end_offset_for_term(P0, 2) == 20
    assert await l1.get_end_offset_for_term(P0, 7) == 20
    with pytest.raises(OutOfRange):
        await l1.get_term_for_offset(P0, 20)
    with pytest.raises(OutOfRange):
        await l1.get_end_offset_for_term(P0, 0)


async def test_extent_listing(l1: L1Metastore) -> None:
    await add(l1, [obj(*(ext(P0, i * 10, i * 10 + 9) for i in range(10)))])
    got = await l1.get_extents(P0, 25, 61)
    assert [e.base_offset for e in got.extents] == [20, 30, 40, 50, 60] and not got.more
    got = await l1.get_extents(P0, 25, 61, limit=2)
    assert [e.base_offset for e in got.extents] == [20, 30] and got.more
    got = await l1.get_extents(P0, 25, 61, limit=2, reverse=True)
    assert [e.base_offset for e in got.extents] == [60, 50] and got.more
    got = await l1.get_extents(P0, reverse=True, limit=3)
    assert [e.base_offset for e in got.extents] == [90, 80, 70]
    assert (await l1.get_extents(P0, 200)).extents == []
    with pytest.raises(InvalidRequest):
        await l1.get_extents(P0, limit=0)
    with pytest.raises(MissingPartition):
        await l1.get_extents(Q0)


# --- set_start_offset --------------------------------------------------------------------------


async def test_set_start_offset_removes_whole_extents_below(l1: L1Metastore,
                                                            clock: ManualClock) -> None:
    o1, o2 = await seed(l1)
    clock.advance(5)
    got = await l1.set_start_offset(P0, 12)
    assert (got.start_offset, got.next_offset) == (12, 20)
    m = await l1.get_partition(P0)
    assert (m.start_offset, m.size, m.num_extents) == (12, 100, 1)
    info1 = await l1.get_object(o1)
    assert info1 is not None and info1.removed_data_size == 100
    assert info1.last_updated == int(clock.time() * 1000)
    info2 = await l1.get_object(o2)
    assert info2 is not None and info2.removed_data_size == 0
    assert (await l1.get_first_ge(P0, 0)).base_offset == 10  # straddling extent stays
    assert await l1.get_term_for_offset(P0, 15) == 2
    with pytest.raises(OutOfRange):
        await l1.get_term_for_offset(P0, 11)
    # term 1 still covers 12..14
    assert await l1.get_term_for_offset(P0, 12) == 1
    # backwards is a no-op; to the end empties the partition
    assert (await l1.set_start_offset(P0, 3)).start_offset == 12
    await l1.set_start_offset(P0, 20)
    m = await l1.get_partition(P0)
    assert (m.start_offset, m.next_offset, m.size, m.num_extents) == (20, 20, 0, 0)
    info2 = await l1.get_object(o2)
    assert info2 is not None and info2.removed_data_size == 100
    with pytest.raises(OutOfRange):
        await l1.get_first_ge(P0, 20)


async def test_set_start_offset_rejections(l1: L1Metastore) -> None:
    await seed(l1)
    with pytest.raises(OutOfRange):
        await l1.set_start_offset(P0, 21)
    with pytest.raises(MissingPartition):
        await l1.set_start_offset(Q0, 1)
    assert (await l1.get_offsets(P0)).start_offset == 0


# --- replace / compact -------------------------------------------------------------------------


async def test_replace_objects_swaps_extents_and_bumps_epoch(l1: L1Metastore) -> None:
    o1, o2 = await seed(l1)
    merged = obj(ext(P0, 0, 19, length=150))
    await prereg(l1, merged)
    assert await l1.replace_objects([merged], {P0: 0}) == {P0: 1}
    m = await l1.get_partition(P0)
    assert (m.size, m.num_extents, m.compaction_epoch, m.next_offset) == (150, 1, 1, 20)
    assert (await l1.get_first_ge(P0, 15)).oid == merged.oid
    info1, info2 = await l1.get_object(o1), await l1.get_object(o2)
    assert info1 is not None and info1.removed_data_size == 100  # P1's 50 B still live
    assert info2 is not None and info2.removed_data_size == 100 and info2.total_data_size == 100
    # stale epoch
    late = obj(ext(P0, 0, 19))
    await prereg(l1, late)
    with pytest.raises(InvalidRequest, match="stale compaction epoch"):
        await l1.replace_objects([late], {P0: 0})


@pytest.mark.parametrize("case", ["boundaries", "past_next", "missing", "no_epoch",
                                  "epoch_without_extents", "registered"])
async def test_replace_objects_rejections(l1: L1Metastore, case: str) -> None:
    o1, _ = await seed(l1)
    exc: type[Exception] = InvalidRequest
    if case == "boundaries":
        args = ([obj(ext(P0, 0, 14))], {P0: 0})
    elif case == "past_next":
        args, exc = ([obj(ext(P0, 10, 25))], {P0: 0}), OutOfRange
    elif case == "missing":
        args, exc = ([obj(ext(Q0, 0, 5))], {Q0: 0}), MissingPartition
    elif case == "no_epoch":
        args = ([obj(ext(P0, 0, 9))], {})
    elif case == "epoch_without_extents":
        args = ([obj(ext(P0, 0, 9))], {P0: 0, P1: 0})
    else:
        args = ([obj(ext(P0, 0, 9), oid=o1)], {P0: 0})
    if case != "registered":
        await prereg(l1, *args[0])
    with pytest.raises(exc):
        await l1.replace_objects(*args)
    m = await l1.get_partition(P0)
    assert (m.compaction_epoch, m.num_extents) == (0, 2)


async def test_compact_objects_records_cleaned_ranges(l1: L1Metastore) -> None:
    await seed(l1)
    compacted = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, compacted)
    up = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=0,
                          cleaned_range=OffsetRange(base=0, last=9), has_tombstones=True,
                          cleaned_at=1000)
    assert await l1.compact_objects([compacted], [up]) == {P0: 1}
    info = await l1.get_compaction_info(P0, tombstone_removal_upper_bound=999)
    assert [(r.base, r.last) for r in info.cleaned_ranges] == [(0, 9)]
    assert [(r.base, r.last) for r in info.dirty_ranges] == [(10, 19)]
    assert info.removable_tombstone_ranges == []
    assert [(t.base, t.last, t.cleaned_at) for t in info.cleaned_ranges_with_tombstones] == [
        (0, 9, 1000)]
    assert (await l1.get_compaction_info(P0, 1000)).removable_tombstone_ranges[0].last == 9
    assert await l1.get_size(P0) == 140
    # metadata-only commit: tombstones of [0, 4] removed, [10, 19] cleaned without tombstones
    up2 = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=1,
                           cleaned_range=OffsetRange(base=10, last=19),
                           removed_tombstone_ranges=[OffsetRange(base=0, last=4)])
    assert await l1.commit_compaction_metadata([up2]) == {P0: 2}
    info = await l1.get_compaction_info(P0)
    assert [(r.base, r.last) for r in info.cleaned_ranges] == [(0, 19)]
    assert info.dirty_ranges == []
    assert [(t.base, t.last) for t in info.cleaned_ranges_with_tombstones] == [(5, 9)]
    # truncation clips compaction state
    await l1.set_start_offset(P0, 7)
    info = await l1.get_compaction_info(P0)
    assert [(r.base, r.last) for r in info.cleaned_ranges] == [(7, 19)]
    assert [(t.base, t.last) for t in info.cleaned_ranges_with_tombstones] == [(7, 9)]
    infos = await l1.get_compaction_infos([P0, P1])
    assert infos[P1].compaction_epoch == 0 and infos[P0].compaction_epoch == 2


@pytest.mark.parametrize("case", ["stale", "dup", "inverted", "tomb_no_range", "past_next",
                                  "missing", "objects_without_update"])
async def test_compact_objects_rejections(l1: L1Metastore, case: str) -> None:
    await seed(l1)

    def up(**kw: object) -> CompactionUpdate:
        base: dict[str, object] = {"topic_id": T1, "partition": 0, "expected_epoch": 0}
        base.update(kw)
        return CompactionUpdate(**base)  # type: ignore[arg-type]

    exc: type[Exception] = InvalidRequest
    objects = []
    if case == "stale":
        updates = [up(expected_epoch=3)]
    elif case == "dup":
        updates = [up(), up()]
    elif case == "inverted":
        updates = [up(cleaned_range=OffsetRange(base=5, last=2))]
    elif case == "tomb_no_range":
        updates = [up(has_tombstones=True)]
    elif case == "past_next":
        updates, exc = [up(cleaned_range=OffsetRange(base=5, last=20))], OutOfRange
    elif case == "missing":
        updates, exc = [up(topic_id=T2)], MissingPartition
    else:
        objects, updates = [obj(ext(P0, 0, 9))], [up(partition=1)]
    with pytest.raises(exc):
        if objects:
            await prereg(l1, *objects)
            await l1.compact_objects(objects, updates)
        else:
            await l1.commit_compaction_metadata(updates)
    assert (await l1.get_partition(P0)).compaction_epoch == 0
    assert (await l1.get_compaction_info(P0)).cleaned_ranges == []


# --- remove_topics / preregistration / remove_objects -------------------------------------------


async def test_remove_topics(l1: L1Metastore) -> None:
    o1, o2 = await seed(l1)
    o3 = obj(ext(Q0, 0, 9))
    await add(l1, [o3])
    assert await l1.remove_topics([T1, uuid.uuid4()]) == 2
    for tidp in (P0, P1):
        with pytest.raises(MissingPartition):
            await l1.get_offsets(tidp)
    assert (await l1.get_offsets(Q0)).next_offset == 10
    for oid in (o1, o2):
        info = await l1.get_object(oid)
        assert info is not None and info.removed_data_size == info.total_data_size
    info3 = await l1.get_object(o3.oid)
    assert info3 is not None and info3.removed_data_size == 0
    # nothing of T1 is left at all: a fresh partition restarts from scratch, at 0
    assert await add(l1, [obj(ext(P0, 20, 29))]) == {P0: 0}
    await add(l1, [obj(ext(P0, 0, 9))], [term(P0, 9, 0)])
    m = await l1.get_partition(P0)
    assert (m.start_offset, m.num_extents, m.size) == (0, 1, 100)
    assert await l1.get_term_for_offset(P0, 5) == 9
    assert await l1.get_end_offset_for_term(P0, 9) == 10
    assert await l1.remove_topics([uuid.uuid4()]) == 0


async def test_preregistration_then_add(l1: L1Metastore) -> None:
    (oid,) = await l1.preregister_objects(1)
    info = await l1.get_object(oid)
    assert info is not None and info.is_preregistration and info.total_data_size == 0
    await l1.add_objects([obj(ext(P0, 0, 9), oid=oid)], [term(P0, 1, 0)])
    info = await l1.get_object(oid)
    assert info is not None and not info.is_preregistration and info.total_data_size == 100
    with pytest.raises(InvalidRequest):
        await l1.preregister_objects(0)


async def test_remove_objects(l1: L1Metastore) -> None:
    o1, o2 = await seed(l1)
    (pre,) = await l1.preregister_objects(1)
    with pytest.raises(InvalidRequest, match="still referenced"):
        await l1.remove_objects([o2])
    await l1.set_start_offset(P0, 20)
    # o1 still holds P1's data
    with pytest.raises(InvalidRequest, match="still referenced"):
        await l1.remove_objects([o1, o2])
    assert await l1.remove_objects([o2, pre, uuid.uuid4()]) == 2
    assert await l1.get_object(o2) is None and await l1.get_object(pre) is None
    assert await l1.get_object(o1) is not None
    listed = await l1.list_objects()
    assert [o.oid for o in listed] == [o1]


async def test_partitions_of_other_topics_are_independent(l1: L1Metastore) -> None:
    await add(l1, [obj(ext(TopicIdPartition(T2, 7), 0, 4))])
    await add(l1, [obj(ext(TopicIdPartition(T2, 70), 0, 9))])
    assert (await l1.get_offsets(TopicIdPartition(T2, 7))).next_offset == 5
    assert (await l1.get_offsets(TopicIdPartition(T2, 70))).next_offset == 10
