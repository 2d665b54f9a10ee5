from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.lsm.bloom import create_filter, key_may_match
from cachedaemon.lsm.filter_block import FilterBlockBuilder, FilterBlockReader


@given(st.lists(st.binary(max_size=20), max_size=200))
def test_no_false_negatives(keys: list[bytes]) -> None:
    f = create_filter(keys, 10)
    assert all(key_may_match(k, f) for k in keys)


def test_false_positive_rate_is_bounded() -> None:
    for n in (100, 1000, 10000):
        keys = [b"key-%d" % i for i in range(n)]
        f = create_filter(keys, 10)
        probes = 20000
        fp = sum(key_may_match(b"other-%d" % i, f) for i in range(probes))
        assert fp / probes < 0.02, (n, fp / probes)
        assert len(f) <= (n * 10 + 7) // 8 + 1 + 8


def test_filter_block_routes_by_block_offset() -> None:
    b = FilterBlockBuilder(10)
    b.start_block(0)
    b.add_key(b"foo")
    b.add_key(b"bar")
    b.start_block(3100)  # second filter range (2 KiB base)
    b.add_key(b"box")
    b.start_block(9000)  # skips empty ranges
    b.add_key(b"hello")
    r = FilterBlockReader(b.finish())
    assert r.key_may_match(0, b"foo") and r.key_may_match(100, b"bar")
    assert not r.key_may_match(0, b"box") or not r.key_may_match(0, b"hello")
    assert r.key_may_match(3100, b"box")
    assert not r.key_may_match(4100, b"box")  # empty filter range: definite miss
    assert r.key_may_match(9000, b"hello")


def test_empty_and_damaged_filter_blocks_never_deny() -> None:
    r = FilterBlockReader(FilterBlockBuilder(10).finish())
    assert r.key_may_match(0, b"x")
    assert FilterBlockReader(b"\x01\x02").key_may_match(0, b"x")


def _reference_filter(keys: list[bytes], bits_per_key: int) -> bytes:
    """The filter exactly as the module docstring defines it, one key and probe at a time."""
    from cachedaemon.lsm.bloom import bloom_hash, num_probes

    k = num_probes(bits_per_key)
    nbytes = (max(64, len(keys) * bits_per_key) + 7) // 8
    bits = nbytes * 8
    out = bytearray(nbytes)
    for key in keys:
        h = bloom_hash(key)
        delta = ((h >> 17) | (h << 15)) & 0xFFFFFFFF
        for _ in range(k):
            b = h % bits
            out[b >> 3] |= 1 << (b & 7)
            h = (h + delta) & 0xFFFFFFFF
    return bytes(out) + bytes((k,))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=40), max_size=400),
    st.sampled_from([1, 2, 5, 10, 16, 20, 44]),
)
def test_batched_filter_equals_the_per_key_definition(keys: list[bytes], bpk: int) -> None:
    """create_filter hashes many keys per big-int step; it must set exactly the bits the
    per-key definition sets (the format is on disk: readers probe one key at a time)."""
    assert create_filter(keys, bpk) == _reference_filter(keys, bpk)
