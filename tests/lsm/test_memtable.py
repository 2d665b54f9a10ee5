from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE, make_internal_key, seek_key
from cachedaemon.lsm.memtable import MemTable
from cachedaemon.lsm.write_batch import WriteBatch


def test_get_respects_snapshots_and_tombstones() -> None:
    m = MemTable()
    m.add(1, KIND_VALUE, b"a", b"1")
    m.add(2, KIND_VALUE, b"a", b"2")
    m.add(3, KIND_DELETE, b"a", b"")
    assert m.get(b"a", 1)[:3] == (1, KIND_VALUE, b"1")  # type: ignore[index]
    assert m.get(b"a", 2)[:3] == (2, KIND_VALUE, b"2")  # type: ignore[index]
    assert m.get(b"a")[:2] == (3, KIND_DELETE)  # type: ignore[index]
    assert m.get(b"a", 0) is None
    assert m.get(b"b") is None
    assert (m.first_seqno, m.last_seqno) == (1, 3)


def test_apply_batch_and_size() -> None:
    m = MemTable()
    b = WriteBatch().put(b"k", b"v" * 10).delete(b"j").put(b"k", b"w")
    assert m.apply(b.ops, 10, b.approximate_bytes) == 12
    assert m.get(b"k")[2] == b"w"  # type: ignore[index]
    assert m.get(b"k", 10)[2] == b"v" * 10  # type: ignore[index]
    assert m.approximate_bytes == b.approximate_bytes > 0


versions = st.lists(
    st.tuples(st.binary(max_size=4), st.sampled_from([KIND_VALUE, KIND_DELETE]), st.binary(max_size=3)),
    max_size=40,
)


@given(versions, st.data())
async def test_iterator_matches_sorted_internal_keys(
    items: list[tuple[bytes, int, bytes]], data: st.DataObject
) -> None:
    m = MemTable()
    expected = []
    for seq, (k, kind, v) in enumerate(items, 1):
        m.add(seq, kind, k, v)
        expected.append((make_internal_key(k, seq, kind), v))
    expected.sort()
    assert list(m.entries()) == expected
    it = m.iterator()
    m.add(1000, KIND_VALUE, b"later", b"x")  # not visible to the iterator made before
    got = []
    await it.seek_to_first()
    while it.valid():
        got.append((it.key(), it.value()))
        await it.next()
    assert got == expected
    back = []
    await it.seek_to_last()
    while it.valid():
        back.append((it.key(), it.value()))
        await it.prev()
    assert back == expected[::-1]
    target = seek_key(data.draw(st.binary(max_size=4)), data.draw(st.integers(0, 50)))
    await it.seek(target)
    rest = [e for e in expected if e[0] >= target]
    assert (it.key(), it.value()) == rest[0] if rest else not it.valid()
