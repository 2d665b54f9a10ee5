"""Internal keys sort by user key ascending, then newest first, under plain bytes order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.lsm.dbformat import (
    KIND_DELETE,
    KIND_SEEK,
    KIND_VALUE,
    MAX_SEQNO,
    make_internal_key,
    parse_internal_key,
    seek_key,
    seqno_kind,
    user_key,
    user_prefix,
)

keys = st.binary(max_size=12)
entries = st.tuples(keys, st.integers(0, MAX_SEQNO), st.sampled_from([KIND_VALUE, KIND_DELETE]))


def test_prefix_user_keys_order_correctly() -> None:
    # Redpanda's user ‖ 0x00 ‖ trailer would put b"a\x00" before b"a"; ours must not.
    a = make_internal_key(b"a", 1, KIND_VALUE)
    a0 = make_internal_key(b"a\x00", 1, KIND_VALUE)
    a1 = make_internal_key(b"a\x01", 1, KIND_VALUE)
    assert a < a0 < a1
    assert make_internal_key(b"", 5, KIND_VALUE) < make_internal_key(b"\x00", 1, KIND_VALUE)


@given(st.lists(entries, max_size=40, unique_by=lambda e: (e[0], e[1])))
def test_bytes_order_matches_logical_order(items: list[tuple[bytes, int, int]]) -> None:
    encoded = sorted(items, key=lambda e: make_internal_key(*e))
    logical = sorted(items, key=lambda e: (e[0], -e[1], -e[2]))
    assert encoded == logical


@given(entries)
def test_round_trip(e: tuple[bytes, int, int]) -> None:
    ikey = make_internal_key(*e)
    assert parse_internal_key(ikey) == e
    assert user_key(ikey) == e[0]
    assert seqno_kind(ikey) == (e[1], e[2])
    assert ikey.startswith(user_prefix(e[0]))


@given(entries, st.integers(0, MAX_SEQNO))
def test_seek_key_lands_on_visible_versions(e: tuple[bytes, int, int], snap: int) -> None:
    ikey = make_internal_key(*e)
    target = seek_key(e[0], snap)
    assert (ikey >= target) == (e[1] <= snap)
    assert seqno_kind(target) == (snap, KIND_SEEK)
