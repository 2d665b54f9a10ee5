from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import Corruption
from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE
from cachedaemon.lsm.write_batch import WriteBatch

ops = st.lists(
    st.one_of(
        st.tuples(st.just(KIND_VALUE), st.binary(max_size=20), st.binary(max_size=40)),
        st.tuples(st.just(KIND_DELETE), st.binary(max_size=20), st.just(b"")),
    ),
    max_size=30,
)


def build(items: list[tuple[int, bytes, bytes]]) -> WriteBatch:
    b = WriteBatch()
    for kind, k, v in items:
        if kind == KIND_VALUE:
            b.put(k, v)
        else:
            b.delete(k)
    return b


@given(ops, st.integers(0, 2**56))
def test_encode_decode_round_trip(items: list[tuple[int, bytes, bytes]], base: int) -> None:
    batch = build(items)
    decoded, got_base = WriteBatch.decode(batch.encode(base))
    assert decoded == batch
    assert decoded.ops == items
    assert got_base == base
    assert decoded.approximate_bytes == batch.approximate_bytes


@given(ops, st.data())
def test_any_flipped_byte_is_detected(items: list[tuple[int, bytes, bytes]], data: st.DataObject) -> None:
    raw = bytearray(build(items).encode(7))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Corruption):
        WriteBatch.decode(bytes(raw))


def test_truncated_is_corruption() -> None:
    raw = WriteBatch().put(b"k", b"v").encode()
    for n in range(len(raw)):
        with pytest.raises(Corruption):
            WriteBatch.decode(raw[:n])
