from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import Corruption
from cachedaemon.lsm.block import decode_block
from cachedaemon.lsm.block_builder import BlockBuilder
from cachedaemon.lsm.iterator import ListIterator

kvs = st.dictionaries(st.binary(max_size=30), st.binary(max_size=50), max_size=80)


def build(d: dict[bytes, bytes], interval: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``d``'s items in order, and the block of them (restarts every ``interval``)."""
    b = BlockBuilder(interval)
    items = sorted(d.items())
    for k, v in items:
        b.add(k, v)
    return items, b.finish()


@given(kvs, st.integers(1, 20))
def test_round_trip(d: dict[bytes, bytes], interval: int) -> None:
    items, raw = build(d, interval)
    block = decode_block(raw, "t")
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
    items, raw = build(d, 4)
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
    items, raw = build(d, interval)
    for target in targets + [k for k, _ in items[:5]]:
        lazy = decode_block(raw, "t").find(target)  # never fully decoded
        expected = next(((k, v) for k, v in items if k >= target), None)
        assert lazy == expected
        full = decode_block(raw, "t")
        assert len(full) == len(items)
        assert full.find(target) == expected


@given(kvs.filter(bool), st.integers(1, 20), st.lists(st.binary(max_size=30), max_size=20))
def test_runs_are_the_block_in_pieces_and_repeated_finds_agree(
    d: dict[bytes, bytes], interval: int, targets: list[bytes]
) -> None:
    items, raw = build(d, interval)
    block = decode_block(raw, "t")
    # Each target looked up three times: walked, then decoded, then found in the decoded run.
    for target in targets + [k for k, _ in items[:5]]:
        expected = next(((k, v) for k, v in items if k >= target), None)
        for _ in range(3):
            assert block.find(target) == expected
    runs = [block.run(r) for r in range(block.nruns)]
    assert all(0 < len(keys) <= interval for keys, _ in runs)
    assert [k for keys, _ in runs for k in keys] == [k for k, _ in items]
    assert [v for _, values in runs for v in values] == [v for _, v in items]
    assert block.restart_keys == [keys[0] for keys, _ in runs]


def test_a_lookup_decodes_one_run_not_the_block() -> None:
    b = BlockBuilder(16)
    for i in range(64):
        b.add(b"key%04d" % i, b"v%d" % i)
    block = decode_block(b.finish(), "t")
    assert block.nruns == 4
    for _ in range(2):  # walked, then decoded
        assert block.find(b"key0040") == (b"key0040", b"v40")
    assert block._keys is None  # never decoded whole
    assert [r is not None for r in block._runs] == [False, False, True, False]
    assert block.find(b"key0015x") == (b"key0016", b"v16")  # between runs: a restart entry
    assert block._runs[1] is None


def test_restart_point_inside_an_entry_is_corruption_not_an_entry() -> None:
    """Restart 1 points into entry 0's value: entry 0 overruns its run, which a lookup or a
    decode of that run reports (restart points are trusted, as in LevelDB; the block checksum
    is what guards them)."""
    fake = struct.pack("<III", 0, 1, 0) + b"b"
    entry0 = struct.pack("<III", 0, 1, len(fake)) + b"a" + fake
    entry1 = struct.pack("<III", 0, 1, 0) + b"c"
    raw = entry0 + entry1 + struct.pack("<III", 0, 13, 2)
    block = decode_block(raw, "t")
    with pytest.raises(Corruption, match=r"t: .*malformed"):
        block.find(b"a")
    with pytest.raises(Corruption, match=r"t: .*overruns its run"):
        block.run(0)
