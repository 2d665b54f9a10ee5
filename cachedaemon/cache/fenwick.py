"""FenwickTree: prefix sums over positions ``1..n`` with point updates, both O(log n).

A binary indexed tree (Fenwick, 1994) of integers. The miss-ratio curve
(:mod:`cachedaemon.cache.mrc`) keeps one over reference times: position ``t`` holds the size of
the key whose latest reference was at ``t``, so the bytes referenced since time ``t`` are the
total minus the prefix sum up to ``t``. Pure data structure, no locking: used by one owner on
one loop.
"""

from __future__ import annotations

from collections.abc import Sequence


class FenwickTree:
    """Integer prefix sums over ``1..size``. See the module docstring."""

    __slots__ = ("_tree", "size", "total")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a Fenwick tree needs at least one position, not {size}")
        self.size = size
        self._tree = [0] * (size + 1)
        self.total = 0

    @classmethod
    def from_values(cls, size: int, values: Sequence[tuple[int, int]]) -> FenwickTree:
        """A tree of ``size`` positions holding ``values`` (``(position, value)``), built in
        O(size) rather than one update each."""
        tree = cls(size)
        t = tree._tree
        for pos, value in values:
            t[pos] += value
            tree.total += value
        for i in range(1, size + 1):
            parent = i + (i & -i)
            if parent <= size:
                t[parent] += t[i]
        return tree

    def add(self, pos: int, delta: int) -> None:
        """Add ``delta`` at ``pos`` (1-based). REQUIRES: ``1 <= pos <= size``."""
        self.total += delta
        t = self._tree
        n = self.size
        while pos <= n:
            t[pos] += delta
            pos += pos & -pos

    def prefix(self, pos: int) -> int:
        """The sum of positions ``1..pos`` (0 for ``pos <= 0``)."""
        t = self._tree
        s = 0
        while pos > 0:
            s += t[pos]
            pos -= pos & -pos
        return s

    def suffix(self, pos: int) -> int:
        """The sum of positions after ``pos``."""
        return self.total - self.prefix(pos)
