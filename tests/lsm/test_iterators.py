"""MergingIterator and DBIter against simple models, with random direction changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.lsm.db_iter import DBIter
from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE, make_internal_key
from cachedaemon.lsm.iterator import InternalIterator, ListIterator
from cachedaemon.lsm.merger import MergingIterator

ops = st.lists(
    st.tuples(
        st.sampled_from([b"", b"a", b"a\x00", b"b", b"ba", b"c", b"\x00", b"\xff"]),
        st.sampled_from([KIND_VALUE, KIND_DELETE]),
        st.integers(0, 3),  # which child
    ),
    max_size=40,
)


def split(items: list[tuple[bytes, int, int]]) -> tuple[list[InternalIterator], list[tuple[bytes, bytes]]]:
    children: list[list[tuple[bytes, bytes]]] = [[], [], [], []]
    every = []
    for seq, (k, kind, child) in enumerate(items, 1):
        e = (make_internal_key(k, seq, kind), b"v%d" % seq)
        children[child].append(e)
        every.append(e)
    its: list[InternalIterator] = []
    for c in children:
        c.sort()
        its.append(ListIterator([k for k, _ in c], [v for _, v in c]))
    every.sort()
    return its, every


@settings(max_examples=150)
@given(ops, st.lists(st.sampled_from(["next", "prev"]), max_size=30), st.data())
async def test_merging_iterator_walks_like_a_sorted_list(
    items: list[tuple[bytes, int, int]], moves: list[str], data: st.DataObject
) -> None:
    children, every = split(items)
    it = MergingIterator(children)
    await it.seek_to_first()
    assert it.valid() == bool(every)
    got = []
    while it.valid():
        got.append((it.key(), it.value()))
        await it.next()
    assert got == every
    if not every:
        return
    pos = data.draw(st.integers(0, len(every) - 1))
    await it.seek(every[pos][0])
    for move in moves:
        if move == "next":
            await it.next()
            pos += 1
        else:
            await it.prev()
            pos -= 1
        if not 0 <= pos < len(every):
            assert not it.valid()
            break
        assert (it.key(), it.value()) == every[pos]


async def walk_checking(it: DBIter, model: list[tuple[bytes, bytes]], pos: int,
                        moves: list[str]) -> None:
    """From ``it`` at ``model[pos]`` (or past either end), step as ``moves`` say, checking each
    entry against the model until it leaves either end; then close ``it``."""
    for move in [None, *moves]:
        if move == "next":
            pos += 1
            await it.next()
        elif move == "prev":
            pos -= 1
            await it.prev()
        if not 0 <= pos < len(model):
            assert not it.valid()
            break
        assert (it.key(), it.value()) == model[pos]
    await it.close()


def model_at(items: list[tuple[bytes, int, int]], snap: int) -> list[tuple[bytes, bytes]]:
    state: dict[bytes, bytes | None] = {}
    for seq, (k, kind, _) in enumerate(items, 1):
        if seq <= snap:
            state[k] = b"v%d" % seq if kind == KIND_VALUE else None
    return sorted((k, v) for k, v in state.items() if v is not None)


@settings(max_examples=150)
@given(ops, st.lists(st.sampled_from(["next", "prev"]), max_size=30), st.data())
async def test_db_iter_shows_the_snapshot_view(
    items: list[tuple[bytes, int, int]], moves: list[str], data: st.DataObject
) -> None:
    snap = data.draw(st.integers(0, len(items)))
    model = model_at(items, snap)
    children, _ = split(items)
    it = DBIter(MergingIterator(children), snap)
    await it.seek_to_first()
    fwd = []
    while it.valid():
        fwd.append((it.key(), it.value()))
        await it.next()
    assert fwd == model
    await it.seek_to_last()
    back = []
    while it.valid():
        back.append((it.key(), it.value()))
        await it.prev()
    assert back == model[::-1]
    if not model:
        return
    target = data.draw(st.sampled_from([b"", b"a", b"a\x00", b"b", b"bb", b"c", b"d", b"\x00"]))
    await it.seek(target)
    pos = next((i for i, (k, _) in enumerate(model) if k >= target), len(model))
    await walk_checking(it, model, pos, moves)


@settings(max_examples=150)
@given(ops, st.lists(st.sampled_from(["next", "prev"]), max_size=30), st.data())
async def test_seek_before_lands_on_the_last_smaller_key_and_walks_both_ways(
    items: list[tuple[bytes, int, int]], moves: list[str], data: st.DataObject
) -> None:
    """``seek_before`` (a reverse scan's first step) on the merged children and on DBIter:
    the last entry (user key) below the target, then steps either way, as the models say."""
    children, every = split(items)
    merged = MergingIterator(children)
    target = data.draw(st.sampled_from([b"", b"a", b"a\x00", b"b", b"bb", b"c", b"d", b"\x00"]))
    ikey = make_internal_key(target, 2**56 - 1, 0xFF)
    await merged.seek_before(ikey)
    below = [e for e in every if e[0] < ikey]
    assert (merged.key(), merged.value()) == below[-1] if below else not merged.valid()

    snap = data.draw(st.integers(0, len(items)))
    model = model_at(items, snap)
    children, _ = split(items)
    it = DBIter(MergingIterator(children), snap)
    await it.seek_before(target)
    pos = sum(1 for k, _ in model if k < target) - 1
    await walk_checking(it, model, pos, moves)
