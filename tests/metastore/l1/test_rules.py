"""The validation rules of Redpanda's L1 write operations (``reference/redpanda-behaviour.md``
§4a, ``metastore/lsm/state_update.cc``), one test per rule, each with its accepting and its
rejecting side; a rejected request must change nothing. Over a real ``lsm.Database``."""

from __future__ import annotations

import logging
import uuid

import pytest
from prometheus_client import REGISTRY

from cachedaemon.clock import ManualClock
from cachedaemon.errors import Corruption
from cachedaemon.lsm import Database, WriteBatch
from cachedaemon.metastore.l1 import (
    DatabaseRowStore,
    InvalidRequest,
    L1Metastore,
    MissingPartition,
    ObjectGC,
    OutOfRange,
    TopicIdPartition,
    keys,
    object_bucket_key,
    values,
)
from cachedaemon.metastore.l1.types import CleanedRange, CompactionUpdate, OffsetRange
from cachedaemon.remote.memory import MemoryObjectStore
from tests.metastore.l1.helpers import P0, P1, Q0, T1, add, ext, obj, prereg, term, terms_for

DELAY_S = 600.0
TTL_S = 300.0


async def seed(l1: L1Metastore) -> list[uuid.UUID]:
    """P0: [0,9] in o1 (100 B), [10,19] in o2 (100 B); P1: [0,4] in o1 (50 B). Terms of P0:
    1 from 0, 2 from 15."""
    o1 = obj(ext(P0, 0, 9), ext(P1, 0, 4, length=50))
    o2 = obj(ext(P0, 10, 19))
    assert await add(l1, [o1], [term(P0, 1, 0), term(P1, 1, 0)]) == {}
    assert await add(l1, [o2], [term(P0, 1, 10), term(P0, 2, 15)]) == {}
    return [o1.oid, o2.oid]


async def snapshot(l1: L1Metastore) -> list[tuple[bytes, bytes]]:
    """Every row, to check that a rejected request changed nothing."""
    async with l1.store.snapshot() as reader:
        return await reader.scan(b"", b"\xff")


def metric(name: str, domain: str) -> float:
    return REGISTRY.get_sample_value(name, {"domain": domain}) or 0.0


async def rejected(l1: L1Metastore, coro: object, match: str,
                   kind: type[Exception] = InvalidRequest) -> None:
    before = await snapshot(l1)
    with pytest.raises(kind, match=match):
        await coro  # type: ignore[misc]
    assert await snapshot(l1) == before, "a rejected request changed rows"


# --- preregister_objects -------------------------------------------------------------------------


async def test_preregister_refuses_ids_that_exist(l1: L1Metastore, clock: ManualClock) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert await l1.preregister_objects(oids=[a, b]) == [a, b]
    info = await l1.get_object(a)
    assert info is not None and info.is_preregistration
    assert info.last_updated == int(clock.time() * 1000) and info.total_data_size == 0
    # a live preregistration, a registered object, an id twice in one request
    await rejected(l1, l1.preregister_objects(oids=[uuid.uuid4(), a]), f"object {a} already")
    o = obj(ext(P0, 0, 9))
    await add(l1, [o])
    await rejected(l1, l1.preregister_objects(oids=[o.oid]), f"object {o.oid} already")
    c = uuid.uuid4()
    await rejected(l1, l1.preregister_objects(oids=[c, c]), "twice")
    # the count form hands out fresh ids
    fresh = await l1.preregister_objects(3)
    assert len(set(fresh)) == 3 and not {a, b} & set(fresh)
    with pytest.raises(InvalidRequest, match="exactly one of"):
        await l1.preregister_objects(2, oids=[uuid.uuid4()])
    with pytest.raises(InvalidRequest, match="exactly one of"):
        await l1.preregister_objects()


# --- add_objects ---------------------------------------------------------------------------------


async def test_add_requires_a_live_preregistration(l1: L1Metastore, clock: ManualClock) -> None:
    never = obj(ext(P0, 0, 9))
    await rejected(l1, l1.add_objects([never], terms_for([never])),
                   f"object {never.oid} is not pre-registered")
    await prereg(l1, never)
    clock.advance(3)
    assert await l1.add_objects([never], terms_for([never])) == {}
    info = await l1.get_object(never.oid)
    assert info is not None and not info.is_preregistration
    assert (info.total_data_size, info.removed_data_size, info.footer_pos, info.object_size,
            info.last_updated) == (100, 0, 100, 116, int(clock.time() * 1000))
    # once added it is an ordinary object: it cannot be added again
    again = obj(ext(P0, 10, 19), oid=never.oid)
    await rejected(l1, l1.add_objects([again], terms_for([again])), "not pre-registered")


async def test_add_requires_terms_for_every_partition(l1: L1Metastore) -> None:
    o = obj(ext(P0, 0, 9), ext(P1, 0, 9))
    await prereg(l1, o)
    await rejected(l1, l1.add_objects([o], []), "terms")
    await rejected(l1, l1.add_objects([o], [term(P0, 1, 0)]), f"partition {P1}.*term")
    await rejected(l1, l1.add_objects([o], [term(P0, 1, 0), term(P1, 1, 0), term(Q0, 1, 0)]),
                   f"{Q0}.*no extents")
    assert await l1.add_objects([o], [term(P0, 1, 0), term(P1, 3, 0)]) == {}
    assert await l1.get_term_for_offset(P1, 5) == 3
    await rejected(l1, l1.add_objects([], []), "no objects")


async def test_add_first_term_starts_at_the_first_base(l1: L1Metastore) -> None:
    o = obj(ext(P0, 0, 9), ext(P0, 10, 19))
    await prereg(l1, o)
    await rejected(l1, l1.add_objects([o], [term(P0, 1, 5)]),
                   f"{P0}.*term 1 starts at 5.*first extent.*0")
    assert await l1.add_objects([o], [term(P0, 1, 0), term(P0, 2, 12)]) == {}
    assert await l1.get_term_for_offset(P0, 12) == 2


async def test_add_last_term_starts_within_the_added_range(l1: L1Metastore) -> None:
    o = obj(ext(P0, 0, 9))
    await prereg(l1, o)
    await rejected(l1, l1.add_objects([o], [term(P0, 1, 0), term(P0, 2, 10)]),
                   f"{P0}.*term 2 starts at 10.*last offset 9")
    assert await l1.add_objects([o], [term(P0, 1, 0), term(P0, 2, 9)]) == {}
    assert await l1.get_end_offset_for_term(P0, 1) == 9


async def test_add_terms_strictly_increase(l1: L1Metastore) -> None:
    o = obj(ext(P0, 0, 29))
    await prereg(l1, o)
    for bad in ([term(P0, 1, 0), term(P0, 1, 5)], [term(P0, 1, 0), term(P0, 2, 0)],
                [term(P0, 2, 0), term(P0, 1, 5)]):
        await rejected(l1, l1.add_objects([o], bad),
                       rf"terms of partition {P0}.*increase.*term {bad[1].term} at "
                       rf"{bad[1].start_offset} follows term {bad[0].term} at 0")
    assert await l1.add_objects([o], [term(P0, 1, 0), term(P0, 2, 5), term(P0, 4, 6)]) == {}


async def test_add_terms_continue_from_the_stored_ones(l1: L1Metastore, db: Database) -> None:
    await seed(l1)  # P0 highest term 2, from 15; next 20
    low = obj(ext(P0, 20, 29))
    await prereg(l1, low)
    await rejected(l1, l1.add_objects([low], [term(P0, 1, 20)]),
                   f"{P0}.*term 1.*below.*highest term 2")
    # the highest term goes on (not stored again), a higher one starts
    assert await l1.add_objects([low], [term(P0, 2, 20), term(P0, 3, 25)]) == {}
    assert await l1.get_end_offset_for_term(P0, 2) == 25
    # a stored term that starts at or after the added range (only a damaged catalogue has one)
    await db.apply(WriteBatch().put(keys.term_key(P0, 3), values.encode_term(30)))
    late = obj(ext(P0, 30, 39))
    await prereg(l1, late)
    await rejected(l1, l1.add_objects([late], [term(P0, 4, 30)]),
                   f"{P0}.*term 4 starts at 30.*not after.*term 3.*30")


async def test_add_extents_contiguous_ordered_not_inverted(l1: L1Metastore) -> None:
    cases = {
        "inverted": [obj(ext(P0, 9, 0))],
        "gap": [obj(ext(P0, 0, 9)), obj(ext(P0, 11, 19))],
        "overlap": [obj(ext(P0, 0, 9), ext(P0, 5, 12))],
    }
    for objects in cases.values():
        await prereg(l1, *objects)
        await rejected(l1, l1.add_objects(objects, terms_for(objects)),
                       f"partition {P0}.*(last offset 0 is below base_offset 9|not contiguous "
                       r"\((11 follows last offset 9|5 follows last offset 9)\))")
    good = [obj(ext(P0, 0, 9)), obj(ext(P0, 10, 19))]
    assert await add(l1, good) == {}


async def test_add_new_partition_expects_offset_zero(l1: L1Metastore) -> None:
    late = obj(ext(P0, 100, 109), ext(Q0, 0, 9))
    assert await add(l1, [late]) == {P0: 0}
    with pytest.raises(MissingPartition):
        await l1.get_offsets(P0)  # nothing was added for it
    assert (await l1.get_offsets(Q0)).next_offset == 10
    info = await l1.get_object(late.oid)
    assert info is not None and (info.total_data_size, info.removed_data_size) == (200, 100)
    # from 0 it is accepted
    first = obj(ext(P0, 0, 9))
    assert await add(l1, [first], [term(P0, 5, 0)]) == {}
    assert await l1.get_term_for_offset(P0, 3) == 5


async def test_add_extents_not_at_the_next_offset_are_dropped(l1: L1Metastore) -> None:
    await seed(l1)
    for base in (30, 10):  # a gap, a retry of something already added
        o = obj(ext(P0, base, base + 9))
        assert await add(l1, [o], [term(P0, 7, base)]) == {P0: 20}
        info = await l1.get_object(o.oid)
        assert info is not None and info.removed_data_size == info.total_data_size == 100
    part = await l1.get_partition(P0)
    assert (part.next_offset, part.num_extents, part.size) == (20, 2, 200)
    assert await l1.get_end_offset_for_term(P0, 2) == 20  # the dropped term 7 was not stored


# --- replace_objects / compact_objects -----------------------------------------------------------


async def test_replace_new_objects_must_be_preregistered(l1: L1Metastore) -> None:
    await seed(l1)
    merged = obj(ext(P0, 0, 19, length=150))
    await rejected(l1, l1.replace_objects([merged], {P0: 0}), "not pre-registered")
    await prereg(l1, merged)
    assert await l1.replace_objects([merged], {P0: 0}) == {P0: 1}


async def test_replace_several_disjoint_runs_per_partition(l1: L1Metastore) -> None:
    parts = [obj(ext(P0, i * 10, i * 10 + 9)) for i in range(5)]  # [0,9] ... [40,49]
    await add(l1, parts)
    # two runs in one request: [0,9]+[10,19] -> one extent, [30,39] -> one extent
    new = obj(ext(P0, 0, 19, length=60), ext(P0, 30, 39, length=40))
    await prereg(l1, new)
    assert await l1.replace_objects([new], {P0: 0}) == {P0: 1}
    got = await l1.get_extents(P0)
    assert [(e.base_offset, e.last_offset, e.oid) for e in got.extents] == [
        (0, 19, new.oid), (20, 29, parts[2].oid), (30, 39, new.oid), (40, 49, parts[4].oid)]
    part = await l1.get_partition(P0)
    assert (part.size, part.num_extents, part.compaction_epoch) == (300, 4, 1)
    for o in (parts[0], parts[1], parts[3]):
        info = await l1.get_object(o.oid)
        assert info is not None and info.removed_data_size == info.total_data_size
    # one run misaligned: the whole request is refused
    bad = obj(ext(P0, 20, 29), ext(P0, 40, 44))
    await prereg(l1, bad)
    await rejected(l1, l1.replace_objects([bad], {P0: 1}), rf"{P0}.*\[40, 44\]")


async def test_replace_intervals_below_the_start_are_dropped_or_trimmed(l1: L1Metastore) -> None:
    await add(l1, [obj(ext(P0, i * 10, i * 10 + 9)) for i in range(4)])  # [0,39]
    await l1.set_start_offset(P0, 25)  # [0,9], [10,19] go; [20,29] straddles
    # The run [0, 29] straddles the start: it is trimmed to the first extent there ([20, 29]
    # is what it replaces), and its extents wholly below the start are dropped (their bytes
    # count as removed in the new object).
    new = obj(ext(P0, 0, 9, length=30), ext(P0, 10, 22, length=20), ext(P0, 23, 29, length=20))
    await prereg(l1, new)
    assert await l1.replace_objects([new], {P0: 0}) == {P0: 1}
    got = await l1.get_extents(P0)
    assert [(e.base_offset, e.last_offset) for e in got.extents] == [(23, 29), (30, 39)]
    part = await l1.get_partition(P0)
    assert (part.start_offset, part.size, part.num_extents) == (25, 120, 2)
    info = await l1.get_object(new.oid)
    assert info is not None and (info.total_data_size, info.removed_data_size) == (70, 50)
    # a run wholly below the start is dropped; when every run is: refused
    stale = obj(ext(P0, 0, 9))
    await prereg(l1, stale)
    await rejected(l1, l1.replace_objects([stale], {P0: 1}), "all filtered out")


async def test_compaction_update_needs_extents(l1: L1Metastore) -> None:
    await seed(l1)

    def up(tidp: TopicIdPartition = P0) -> CompactionUpdate:
        return CompactionUpdate(topic_id=T1, partition=tidp.partition,
                                expected_epoch=0)

    new = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, new)
    await rejected(l1, l1.compact_objects([], [up()]), "no objects")
    await rejected(l1, l1.compact_objects([new], [up(), up(P1)]), f"{P1}.*no extents")
    await rejected(l1, l1.compact_objects([new], []), f"{P0}.*no compaction update")
    assert await l1.compact_objects([new], [up()]) == {P0: 1}


async def test_cleaned_range_is_covered_by_the_new_extents(l1: L1Metastore) -> None:
    await seed(l1)
    new = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, new)

    def up(base: int, last: int) -> CompactionUpdate:
        return CompactionUpdate(topic_id=T1, partition=0, expected_epoch=0,
                                cleaned_ranges=[CleanedRange(base=base, last=last)])

    await rejected(l1, l1.compact_objects([new], [up(0, 12)]), rf"{P0}.*\[0, 12\].*covered")
    assert await l1.compact_objects([new], [up(0, 9)]) == {P0: 1}
    info = await l1.get_compaction_info(P0)
    assert [(r.base, r.last) for r in info.cleaned_ranges] == [(0, 9)]


async def test_cleaned_ranges_reach_back_to_the_start(l1: L1Metastore) -> None:
    await seed(l1)

    def up(epoch: int, base: int, last: int) -> CompactionUpdate:
        return CompactionUpdate(topic_id=T1, partition=0, expected_epoch=epoch,
                                cleaned_ranges=[CleanedRange(base=base, last=last)])

    second = obj(ext(P0, 10, 19, length=40))
    await prereg(l1, second)
    await rejected(l1, l1.compact_objects([second], [up(0, 10, 19)]),
                   rf"{P0}.*start offset 0.*\[0, 9\] is not cleaned")
    first = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, first)
    assert await l1.compact_objects([first], [up(0, 0, 9)]) == {P0: 1}
    assert await l1.compact_objects([second], [up(1, 10, 19)]) == {P0: 2}
    info = await l1.get_compaction_info(P0)
    assert [(r.base, r.last) for r in info.cleaned_ranges] == [(0, 19)]
    assert info.dirty_ranges == []


async def test_tombstone_ranges_may_not_overlap(l1: L1Metastore) -> None:
    await seed(l1)

    def up(epoch: int, *ranges: tuple[int, int]) -> CompactionUpdate:
        return CompactionUpdate(topic_id=T1, partition=0, expected_epoch=epoch, cleaned_at=77,
                                cleaned_ranges=[CleanedRange(base=b, last=e, has_tombstones=True)
                                                for b, e in ranges])

    a = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, a)
    assert await l1.compact_objects([a], [up(0, (0, 9))]) == {P0: 1}
    b = obj(ext(P0, 0, 19, length=70))
    await prereg(l1, b)
    await rejected(l1, l1.compact_objects([b], [up(1, (5, 19))]),
                   rf"{P0}.*\[5, 19\].*overlaps.*\[0, 9\]")
    await rejected(l1, l1.compact_objects([b], [up(1, (10, 15), (14, 19))]),
                   rf"{P0}.*\[14, 19\].*overlaps.*\[10, 15\]")
    assert await l1.compact_objects([b], [up(1, (10, 19))]) == {P0: 2}
    info = await l1.get_compaction_info(P0)
    assert [(t.base, t.last, t.cleaned_at) for t in info.cleaned_ranges_with_tombstones] == [
        (0, 9, 77), (10, 19, 77)]


async def test_removing_a_tombstone_range_that_is_not_tracked(l1: L1Metastore) -> None:
    await seed(l1)
    a = obj(ext(P0, 0, 9, length=40), ext(P0, 10, 19, length=40))
    await prereg(l1, a)
    assert await l1.compact_objects([a], [CompactionUpdate(
        topic_id=T1, partition=0, expected_epoch=0, cleaned_at=5,
        cleaned_ranges=[CleanedRange(base=0, last=9, has_tombstones=True),
                        CleanedRange(base=10, last=19, has_tombstones=True)])]) == {P0: 1}

    def removal(*ranges: tuple[int, int]) -> CompactionUpdate:
        return CompactionUpdate(topic_id=T1, partition=0, expected_epoch=1,
                                removed_tombstone_ranges=[OffsetRange(base=b, last=e)
                                                          for b, e in ranges])

    await rejected(l1, l1.commit_compaction_metadata([removal((15, 20))]),
                   rf"{P0}.*\[15, 20\].*not tracked")
    # covered by two adjacent tracked ranges: fine (Redpanda's erase_contiguous_range example)
    assert await l1.commit_compaction_metadata([removal((5, 14))]) == {P0: 2}
    info = await l1.get_compaction_info(P0)
    assert [(t.base, t.last) for t in info.cleaned_ranges_with_tombstones] == [(0, 4),
                                                                              (15, 19)]


async def test_commit_compaction_metadata(l1: L1Metastore) -> None:
    await seed(l1)
    up = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=0,
                          cleaned_ranges=[CleanedRange(base=0, last=19)])
    assert await l1.commit_compaction_metadata([up]) == {P0: 1}
    await rejected(l1, l1.commit_compaction_metadata([up]), "stale compaction epoch")
    past = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=1,
                            cleaned_ranges=[CleanedRange(base=0, last=20)])
    await rejected(l1, l1.commit_compaction_metadata([past]), "next offset 20", OutOfRange)
    await rejected(l1, l1.commit_compaction_metadata([]), "no compaction updates")


# --- object accounting -------------------------------------------------------------------------


async def test_removed_above_total_is_corruption_not_clamped(
        db: Database, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    domain = f"acct-{uuid.uuid4().hex[:6]}"
    l1 = L1Metastore(DatabaseRowStore(db), clock=clock, domain=domain)
    o = obj(ext(P0, 0, 9), ext(P0, 10, 19))
    await add(l1, [o])
    # damage: the object row already counts 50 of its 200 bytes as removed
    await db.apply(WriteBatch().put(keys.object_key(o.oid), values.encode_object(
        values.ObjectEntry(200, 50, o.footer_pos, o.object_size, 0, False))))
    await l1.set_start_offset(P0, 10)  # 150 of 200; the next 100 would make 250
    with caplog.at_level(logging.ERROR), pytest.raises(Corruption, match=str(o.oid)):
        await l1.set_start_offset(P0, 20)
    assert any(str(o.oid) in r.getMessage() for r in caplog.records)
    assert metric("cachedaemon_l1_corruption_total", domain) == 1
    info = await l1.get_object(o.oid)
    assert info is not None and info.removed_data_size == 150  # unchanged, not clamped
    assert (await l1.get_offsets(P0)).start_offset == 10


async def test_a_preregistered_object_with_extents_is_corruption(db: Database,
                                                                 clock: ManualClock) -> None:
    domain = f"acct-{uuid.uuid4().hex[:6]}"
    l1 = L1Metastore(DatabaseRowStore(db), clock=clock, domain=domain)
    o = obj(ext(P0, 0, 9), ext(P0, 10, 19))
    await add(l1, [o])
    await db.apply(WriteBatch().put(keys.object_key(o.oid), values.encode_object(
        values.ObjectEntry(0, 0, 0, 0, 0, True))))
    for query in (l1.get_first_ge(P0, 3), l1.get_first_ge_timestamp(P0, -1)):
        with pytest.raises(Corruption, match=f"{o.oid}.*preregistration"):
            await query
    with pytest.raises(Corruption, match=f"{o.oid}.*preregistration"):
        await l1.set_start_offset(P0, 10)
    assert metric("cachedaemon_l1_corruption_total", domain) == 3
    assert (await l1.get_offsets(P0)).start_offset == 0


# --- queries ------------------------------------------------------------------------------------


async def test_first_ge_answers_with_the_object_footer(l1: L1Metastore) -> None:
    o1 = obj(ext(P0, 0, 9, ts=100), size=500)
    o2 = obj(ext(P0, 10, 19, ts=200), ext(P1, 0, 4, length=30, ts=1))
    await add(l1, [o1, o2])
    got = await l1.get_first_ge(P0, 12)
    assert (got.oid, got.base_offset, got.last_offset, got.footer_pos, got.object_size) == (
        o2.oid, 10, 19, 130, 146)
    assert got.object_key == object_bucket_key(l1.domain, o2.oid)
    got = await l1.get_first_ge_timestamp(P0, 50)
    assert (got.oid, got.footer_pos, got.object_size) == (o1.oid, 100, 500)


async def test_bulk_compaction_infos(l1: L1Metastore) -> None:
    await seed(l1)
    a = obj(ext(P0, 0, 9, length=40))
    await prereg(l1, a)
    await l1.compact_objects([a], [CompactionUpdate(
        topic_id=T1, partition=0, expected_epoch=0, cleaned_at=10,
        cleaned_ranges=[CleanedRange(base=0, last=9, has_tombstones=True)])])
    infos = await l1.get_compaction_infos([P0, P1, Q0], 10)
    assert infos[Q0] is None
    p0, p1 = infos[P0], infos[P1]
    assert p0 is not None and p1 is not None
    assert (p0.compaction_epoch, p1.compaction_epoch) == (1, 0)
    assert [(r.base, r.last) for r in p0.removable_tombstone_ranges] == [(0, 9)]
    assert [(r.base, r.last) for r in p1.dirty_ranges] == [(0, 4)]


# --- the preregistration lifecycle and the object GC ---------------------------------------------


async def test_expired_preregistration_becomes_a_dead_object_collected_later(
        l1: L1Metastore, db: Database, clock: ManualClock) -> None:
    bucket = MemoryObjectStore()
    gc = ObjectGC(l1, bucket, deletion_delay_s=DELAY_S, preregistration_ttl_s=TTL_S,
                  domain=l1.domain)
    o = obj(ext(P0, 0, 9))
    await prereg(l1, o)
    await bucket.put(object_bucket_key(l1.domain, o.oid), b"x" * o.object_size)  # the upload
    await db.flush()
    clock.advance(TTL_S + 1)
    got = await gc.collect()
    assert (got.preregistrations_expired, got.objects_deleted) == (1, 0)
    # not deleted: rewritten as an ordinary zero-size object, stamped now
    info = await l1.get_object(o.oid)
    assert info is not None and not info.is_preregistration
    assert (info.total_data_size, info.removed_data_size) == (0, 0)
    assert info.last_updated == int(clock.time() * 1000)
    assert await bucket.head(object_bucket_key(l1.domain, o.oid)) is not None
    # the upload that raced the expiry cannot be registered
    await rejected(l1, l1.add_objects([o], terms_for([o])), "not pre-registered")
    await db.flush()
    clock.advance(DELAY_S - 1)
    assert (await gc.collect()).objects_deleted == 0
    clock.advance(2)
    got = await gc.collect()
    assert (got.objects_deleted, got.preregistrations_expired) == (1, 0)
    assert await l1.get_object(o.oid) is None
    assert await bucket.head(object_bucket_key(l1.domain, o.oid)) is None
    # its id is free again
    assert await l1.preregister_objects(oids=[o.oid]) == [o.oid]


async def test_gc_of_one_domain_never_deletes_another_domains_object(
        db: Database, clock: ManualClock) -> None:
    from cachedaemon.lsm import Options
    from cachedaemon.lsm.io.memory import memory_persistence

    other_db = await Database.open(Options(memtable_bytes=64 * 1024), memory_persistence())
    try:
        bucket = MemoryObjectStore()
        a = L1Metastore(DatabaseRowStore(db), clock=clock, domain="team-a")
        b = L1Metastore(DatabaseRowStore(other_db), clock=clock, domain="team-b")
        oid = uuid.uuid4()
        for l1 in (a, b):
            o = obj(ext(P0, 0, 9), oid=oid)
            await add(l1, [o])
            await bucket.put(object_bucket_key(l1.domain, oid), l1.domain.encode())
        assert object_bucket_key("team-a", oid) != object_bucket_key("team-b", oid)
        await b.remove_topics([T1])
        await other_db.flush()
        clock.advance(DELAY_S + 1)
        got = await ObjectGC(b, bucket, deletion_delay_s=DELAY_S, domain="team-b").collect()
        assert got.objects_deleted == 1
        assert await bucket.head(object_bucket_key("team-b", oid)) is None
        async with await bucket.get(object_bucket_key("team-a", oid)) as kept:
            assert await kept.read() == b"team-a"
        assert (await a.get_first_ge(P0, 0)).oid == oid
    finally:
        await other_db.close()
