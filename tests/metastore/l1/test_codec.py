"""Row keys and values: round trips, order preservation, and Corruption on damage."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import Corruption
from cachedaemon.metastore.l1 import TopicIdPartition, keys, values
from cachedaemon.metastore.l1.values import (
    CompactionState,
    ExtentValue,
    ObjectEntry,
    PartitionMetadata,
    TombstoneRange,
)

u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
uuids = st.uuids()
tidps = st.builds(TopicIdPartition, uuids, st.integers(0, 2**31 - 1))


@given(tidps, u64)
def test_key_round_trips(tidp: TopicIdPartition, n: int) -> None:
    for make in (keys.extent_key, keys.term_key):
        k = make(tidp, n)
        assert keys.decode_tidp(k) == tidp and keys.decode_suffix(k) == n
    assert keys.decode_tidp(keys.metadata_key(tidp)) == tidp
    assert keys.decode_tidp(keys.compaction_key(tidp)) == tidp
    lo, hi = keys.extents_range(tidp)
    assert lo <= keys.extent_key(tidp, n) < hi
    tlo, thi = keys.topic_metadata_range(tidp.topic_id)
    assert tlo <= keys.metadata_key(tidp) < thi


@given(tidps, u64, tidps, u64)
def test_key_order_is_field_order(a: TopicIdPartition, x: int, b: TopicIdPartition,
                                  y: int) -> None:
    ka, kb = keys.extent_key(a, x), keys.extent_key(b, y)
    assert (ka < kb) == ((a.topic_id.int, a.partition, x) < (b.topic_id.int, b.partition, y))


@given(uuids)
def test_object_key_round_trip(oid: uuid.UUID) -> None:
    k = keys.object_key(oid)
    assert keys.decode_object_key(k) == oid
    lo, hi = keys.objects_range()
    assert lo <= k < hi


@given(st.builds(PartitionMetadata, u64, u64, u64, u64, u64),
       st.builds(ExtentValue, u64, i64, u64, u64, uuids),
       u64,
       st.builds(CompactionState,
                 st.lists(st.tuples(u64, u64)).map(tuple),
                 st.lists(st.builds(TombstoneRange, u64, u64, i64)).map(tuple)),
       st.builds(ObjectEntry, u64, u64, u64, u64, i64, st.booleans(), st.booleans()))
def test_value_round_trips(m: PartitionMetadata, e: ExtentValue, term_start: int,
                           c: CompactionState, o: ObjectEntry) -> None:
    assert values.decode_metadata(values.encode_metadata(m)) == m
    assert values.decode_extent(values.encode_extent(e)) == e
    assert values.decode_term(values.encode_term(term_start)) == term_start
    assert values.decode_compaction(values.encode_compaction(c)) == c
    assert values.decode_object(values.encode_object(o)) == o


def test_damaged_values_are_corruption() -> None:
    m = values.encode_metadata(PartitionMetadata(0, 1, 2, 3, 4))
    o = values.encode_object(ObjectEntry(1, 0, 1, 2, 3, False))
    c = values.encode_compaction(CompactionState(((1, 2),), (TombstoneRange(1, 2, 3),)))
    bad = [
        (values.decode_metadata, b""),
        (values.decode_metadata, m[:-1]),
        (values.decode_metadata, b"\x02" + m[1:]),
        (values.decode_extent, m),
        (values.decode_term, m),
        (values.decode_object, o[:-1] + b"\x07"),
        (values.decode_object, b"\x03" + o[1:]),
        (values.decode_compaction, c[:-1]),
        (values.decode_compaction, c + b"\x00"),
    ]
    # object rows: version 2 (the domain's own key), version 1 (the shared legacy key)
    assert o[0] == 2 and not values.decode_object(o).legacy_key
    assert values.decode_object(b"\x01" + o[1:]).legacy_key
    for decode, data in bad:
        with pytest.raises(Corruption):
            decode(data)  # type: ignore[operator]
    for bad_key in (b"01zz", b"09" + b"0" * 40, b"04" + b"g" * 32):
        with pytest.raises(Corruption):
            if bad_key.startswith(b"04"):
                keys.decode_object_key(bad_key)
            else:
                keys.decode_tidp(bad_key)
