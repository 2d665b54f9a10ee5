from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import Corruption
from cachedaemon.lsm.block import decode_block
from cachedaemon.lsm.block_builder import BlockBuilder
from cachedaemon.lsm.iterator import ListIterator

kvs = st.dictionaries(st.binary(max_size=30), st.binary(max_size=50), max_size=80)


@given(kvs, st.integers(1, 20))
def test_round_trip(d: dict[bytes, bytes], interval: int) -> None:
    b = BlockBuilder(interval)
    items = sorted(d.items())
    for k, v in items:
        b.add(k, v)
    block = decode_block(b.finish(), "t")
    assert list(zip(block.keys, block.values, strict=True)) == items
    for k, _ in items:
        assert block.keys[block.seek(k)] == k


def test_restart_points_every_16_entries() -> None:
    b = BlockBuilder(16)
    for i in range(40):
        b.add(b"key%04d" % i, b"v")
    raw = b.finish()
    assert int.from_bytes(raw[-4:], "little") == 3  # entries 0, 16, 32 restart


def test_prefix_compression_shrinks_shared_prefixes() -> None:
    b1, b16 = BlockBuilder(1), BlockBuilder(16)
    for i in range(100):
        k = b"a-long-common-prefix/%05d" % i
        b1.add(k, b"")
        b16.add(k, b"")
    assert len(b16.finish()) < len(b1.finish()) - 100 * 15


@given(kvs.filter(bool), st.data())
def test_damage_never_yields_other_data(d: dict[bytes, bytes], data: st.DataObject) -> None:
    b = BlockBuilder(4)
    items = sorted(d.items())
    for k, v in items:
        b.add(k, v)
    raw = b.finish()
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        block = decode_block(raw[:cut], "t")
        keys = block.keys
    except Corruption:
        return
    # A truncation that still parses must not invent entries.
    assert len(keys) <= len(items)


def test_corrupt_restart_count() -> None:
    with pytest.raises(Corruption, match="t: "):
        decode_block(b"\x00\x00\x00\x00", "t")
    with pytest.raises(Corruption):
        decode_block(b"\xff\xff\xff\xff", "t")


async def test_list_iterator_walks_both_ways() -> None:
    keys = [b"a", b"b", b"c"]
    it = ListIterator(keys, [b"1", b"2", b"3"])
    await it.seek(b"bb")
    assert it.key() == b"c"
    await it.prev()
    assert it.key() == b"b"
    await it.seek_to_first()
    await it.prev()
    assert not it.valid()
    await it.seek_to_last()
    await it.next()
    assert not it.valid()


@given(kvs, st.integers(1, 20), st.lists(st.binary(max_size=30), max_size=20))
def test_find_by_restart_points_matches_full_decode(
    d: dict[bytes, bytes], interval: int, targets: list[bytes]
) -> None:
    b = BlockBuilder(interval)
    items = sorted(d.items())
    for k, v in items:
        b.add(k, v)
    raw = b.finish()
    for target in targets + [k for k, _ in items[:5]]:
        lazy = decode_block(raw, "t").find(target)  # never fully decoded
        expected = next(((k, v) for k, v in items if k >= target), None)
        assert lazy == expected
        full = decode_block(raw, "t")
        assert len(full) == len(items)
        assert full.find(target) == expected
