from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE, make_internal_key, seek_key, user_key
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


@given(
    st.lists(st.one_of(st.tuples(st.binary(max_size=3), st.sampled_from([KIND_VALUE, KIND_DELETE])),
                       st.just("iterator")), max_size=80),
    st.integers(1, 4),
    st.data(),
)
async def test_iterators_made_between_writes_walk_their_keys(
    steps: list[object], min_recent: int, data: st.DataObject
) -> None:
    """With a tiny bound on ``_recent``, keys spread over both sorted lists and iterators are
    made between writes: each walks, both ways and from any seek, exactly the versions that
    existed when it was made."""
    import cachedaemon.lsm.memtable as memtable_module

    old = memtable_module.MIN_RECENT
    memtable_module.MIN_RECENT = min_recent
    try:
        m = MemTable()
        made = []
        expected: list[tuple[bytes, bytes]] = []
        for seq, step in enumerate(steps, 1):
            if step == "iterator":
                made.append((m.iterator(), sorted(expected)))
                continue
            k, kind = step  # type: ignore[misc]
            m.add(seq, kind, k, b"v%d" % seq)
            expected.append((make_internal_key(k, seq, kind), b"v%d" % seq))
        made.append((m.iterator(), sorted(expected)))
        for it, want in made:
            # Versions added later to keys the iterator knows show up (as before): compare
            # only the entries the iterator's creation saw, which a snapshot read filters to.
            seen = set(want)
            got = []
            await it.seek_to_first()
            while it.valid():
                if (it.key(), it.value()) in seen:
                    got.append((it.key(), it.value()))
                await it.next()
            assert got == want
            back = []
            await it.seek_to_last()
            while it.valid():
                if (it.key(), it.value()) in seen:
                    back.append((it.key(), it.value()))
                await it.prev()
            assert back == want[::-1]
            if want:
                target = seek_key(data.draw(st.binary(max_size=3)), data.draw(st.integers(0, 90)))
                await it.seek(target)
                rest = [e for e in sorted(set(want) | _later(it, m)) if e[0] >= target]
                assert (it.key(), it.value()) == rest[0] if rest else not it.valid()
    finally:
        memtable_module.MIN_RECENT = old


def _later(it: object, m: MemTable) -> set[tuple[bytes, bytes]]:
    """Every version now in ``m`` of the user keys ``it`` knows (later versions included)."""
    out = set()
    for key in list(it._a) + list(it._b):  # type: ignore[attr-defined]
        node = m.get(key)
        while node is not None:
            out.add((make_internal_key(key, node[0], node[1]), node[2]))
            node = node[3]
    return out


async def test_an_iterator_after_a_small_write_does_not_resort_every_key() -> None:
    """A reverse seek after each small write (add_objects reading a partition's highest term)
    must not pay for sorting the whole memtable: the big sorted list is kept as it is."""
    m = MemTable()
    for i in range(10000):
        m.add(i + 1, KIND_VALUE, b"k%05d" % i, b"v")
    m.iterator()
    big = m.sorted_keys()
    for seq in range(10001, 10011):
        m.add(seq, KIND_VALUE, b"k%05d+" % seq, b"v")
        it = m.iterator()
        await it.seek(seek_key(b"k%05d+" % seq))
        assert user_key(it.key()) == b"k%05d+" % seq
        assert m._sorted is big  # not rebuilt
    assert len(m.sorted_keys()) == 10010
