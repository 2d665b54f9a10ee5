"""MergingIterator: the union of several sorted internal iterators (LevelDB's
``NewMergingIterator``), forward and reverse.

Forward steps keep a heap of ``(key, child index)``; reverse steps scan the children for the
largest key (few children, and reverse scans are rarer). Switching direction repositions
every non-current child around the current key, as LevelDB does. Internal keys are unique
across children (every version has its own seqno), so ties do not arise.

Owns its children: :meth:`close` closes them. Single task, single shard.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from cachedaemon.lsm.iterator import InternalIterator

_FORWARD = 0
_REVERSE = 1


class MergingIterator(InternalIterator):
    __slots__ = ("_children", "_cur", "_direction", "_heap", "_key")

    def __init__(self, children: Sequence[InternalIterator]) -> None:
        self._children = list(children)
        self._heap: list[tuple[bytes, int]] = []
        self._cur = -1
        self._key: bytes | None = None
        self._direction = _FORWARD

    def valid(self) -> bool:
        return self._key is not None

    def key(self) -> bytes:
        assert self._key is not None
        return self._key

    def value(self) -> bytes:
        return self._children[self._cur].value()

    def _build_heap(self) -> None:
        heap = [(c.key(), i) for i, c in enumerate(self._children) if c.valid()]
        heapq.heapify(heap)
        self._heap = heap
        self._direction = _FORWARD
        self._top()

    def _top(self) -> None:
        if self._heap:
            self._key, self._cur = self._heap[0]
        else:
            self._key = None
            self._cur = -1

    def _find_largest(self) -> None:
        best: bytes | None = None
        cur = -1
        for i, c in enumerate(self._children):
            if c.valid():
                k = c.key()
                if best is None or k > best:
                    best = k
                    cur = i
        self._key = best
        self._cur = cur
        self._direction = _REVERSE

    async def seek_to_first(self) -> None:
        for c in self._children:
            await c.seek_to_first()
        self._build_heap()

    async def seek_to_last(self) -> None:
        for c in self._children:
            await c.seek_to_last()
        self._find_largest()

    async def seek(self, target: bytes) -> None:
        for c in self._children:
            await c.seek(target)
        self._build_heap()

    async def seek_before(self, target: bytes) -> None:
        # Every child straight to its last entry < target: what ``prev`` after ``seek`` would
        # leave, without first building the forward heap and then repositioning every child.
        for c in self._children:
            await c.seek_before(target)
        self._find_largest()

    async def next(self) -> None:
        if self._direction != _FORWARD:
            key = self._key
            assert key is not None
            for i, c in enumerate(self._children):
                if i != self._cur:
                    await c.seek(key)
                    if c.valid() and c.key() == key:
                        await c.next()
            child = self._children[self._cur]
            await child.next()
            self._build_heap()
            return
        child = self._children[self._cur]
        await child.next()
        if child.valid():
            heapq.heapreplace(self._heap, (child.key(), self._cur))
        else:
            heapq.heappop(self._heap)
        heap = self._heap
        if heap:
            self._key, self._cur = heap[0]
        else:
            self._key = None
            self._cur = -1

    async def prev(self) -> None:
        key = self._key
        assert key is not None
        if self._direction != _REVERSE:
            for i, c in enumerate(self._children):
                if i != self._cur:
                    await c.seek(key)
                    if c.valid():
                        await c.prev()
                    else:
                        await c.seek_to_last()
        await self._children[self._cur].prev()
        self._find_largest()

    async def close(self) -> None:
        for c in self._children:
            await c.close()
