"""MemTable: the in-memory, newest part of the database (LevelDB's ``MemTable``).

Owned by one :class:`~cachedaemon.lsm.db.Database` on one shard; mutated only by
``Database.apply`` (synchronously, so a batch is all-or-nothing to readers) and read by
gets, iterators and the flush.

Layout, chosen for Python speed rather than copied from LevelDB's skiplist:

* ``_table`` maps a user key to the head of an immutable chain of versions, newest first:
  ``(seqno, kind, value, older)``. A put is one dict store and one tuple; a point lookup is one
  dict probe plus a walk down the chain to the first version visible at the snapshot.
* Ordered access sorts the user keys lazily, in two sorted lists: ``_sorted`` (most keys) and
  ``_recent`` (the keys added since ``_sorted`` was last rebuilt, at most about
  ``sqrt(len)``). New keys are appended to ``_new_keys``; the next time order is needed (an
  iterator, the flush) they are sorted and merged into a new ``_recent``, and only when that
  grows past its bound into a new ``_sorted``. So an iterator made after a few writes costs
  O(sqrt n), not a copy and merge of every key (which made a reverse seek after each small
  write cost O(n)); merging into ``_sorted`` costs O(n) once per ~sqrt(n) new keys. The lists
  are never mutated once built (each fold makes new ones): an iterator keeps the pair it was
  given, so later inserts never disturb it, and the chains it walks are immutable.

``approximate_bytes`` charges key + value + a fixed per-entry overhead.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Iterator
from typing import Any

from cachedaemon.lsm.dbformat import (
    KIND_DELETE,
    KIND_VALUE,
    MAX_SEQNO,
    TERMINATOR,
    make_internal_key,
    seqno_kind,
    trailer,
    user_key,
)
from cachedaemon.lsm.iterator import InternalIterator
from cachedaemon.lsm.write_batch import OP_OVERHEAD

_MASK64 = (1 << 64) - 1
#: ``TERMINATOR ‖ BE64(x)``.
_pack_tail = struct.Struct(">2xQ").pack

# A version chain node: (seqno, kind, value, older node or None).
Chain = tuple[int, int, bytes, Any]

#: ``_recent`` may hold this many keys before it is merged into ``_sorted`` (or sqrt of the
#: total, if larger).
MIN_RECENT = 256


class MemTable:
    __slots__ = (
        "_bytes",
        "_new_keys",
        "_recent",
        "_sorted",
        "_table",
        "first_seqno",
        "last_seqno",
    )

    def __init__(self) -> None:
        self._table: dict[bytes, Chain] = {}
        self._sorted: list[bytes] = []
        self._recent: list[bytes] = []
        self._new_keys: list[bytes] = []
        self._bytes = 0
        self.first_seqno = 0
        self.last_seqno = 0

    def __len__(self) -> int:
        return len(self._table)

    @property
    def empty(self) -> bool:
        return not self._table

    @property
    def approximate_bytes(self) -> int:
        return self._bytes

    def add(self, seqno: int, kind: int, key: bytes, value: bytes) -> None:
        table = self._table
        older = table.get(key)
        if older is None:
            self._new_keys.append(key)
        table[key] = (seqno, kind, value, older)
        self._bytes += len(key) + len(value) + OP_OVERHEAD
        if not self.first_seqno:
            self.first_seqno = seqno
        self.last_seqno = seqno

    def apply(self, ops: list[tuple[int, bytes, bytes]], base_seqno: int, nbytes: int) -> int:
        """Insert a batch's operations with seqnos ``base_seqno..``; returns the last seqno.

        ``nbytes`` is the batch's precomputed charge. Synchronous: readers see all or none.
        """
        table = self._table
        get = table.get
        new_keys = self._new_keys
        seqno = base_seqno
        for kind, key, value in ops:
            older = get(key)
            if older is None:
                new_keys.append(key)
            table[key] = (seqno, kind, value, older)
            seqno += 1
        self._bytes += nbytes
        if not self.first_seqno:
            self.first_seqno = base_seqno
        self.last_seqno = seqno - 1
        return seqno - 1

    def get(self, key: bytes, snapshot: int = MAX_SEQNO) -> Chain | None:
        """The newest version of ``key`` with seqno <= ``snapshot`` (a tombstone counts), or
        ``None`` if this memtable holds no such version."""
        node = self._table.get(key)
        while node is not None and node[0] > snapshot:
            node = node[3]
        return node

    def _fold(self) -> None:
        """Sort the new keys into ``_recent`` (and that into ``_sorted`` once it is big)."""
        new = self._new_keys
        if not new:
            return
        self._new_keys = []
        new.sort()
        recent = self._recent
        if recent:
            recent = recent + new
            recent.sort()  # two sorted runs: a linear merge
        else:
            recent = new
        if len(recent) > max(MIN_RECENT, math.isqrt(len(self._sorted))):
            merged = self._sorted + recent
            merged.sort()
            self._sorted = merged
            self._recent = []
        else:
            self._recent = recent

    def sorted_keys(self) -> list[bytes]:
        """The user keys in order. The returned list is never mutated afterwards."""
        self._fold()
        if self._recent:
            merged = self._sorted + self._recent
            merged.sort()
            self._sorted = merged
            self._recent = []
        return self._sorted

    def entries(self) -> Iterator[tuple[bytes, bytes]]:
        """Every version as ``(internal key, value)`` in internal-key order (for the flush)."""
        table = self._table
        pack = _pack_tail
        for key in self.sorted_keys():
            escaped = key.replace(b"\x00", b"\x00\xff")
            seqno, kind, value, older = table[key]
            # TERMINATOR + trailer(seqno, kind) in one call: this loop runs once per flushed
            # entry.
            yield escaped + pack(_MASK64 ^ ((seqno << 8) | kind)), value
            while older is not None:
                seqno, kind, value, older = older
                yield escaped + pack(_MASK64 ^ ((seqno << 8) | kind)), value

    def iterator(self) -> MemTableIterator:
        self._fold()
        return MemTableIterator(self._table, self._sorted, self._recent)


def _versions(node: Chain | None) -> list[Chain]:
    out = []
    while node is not None:
        out.append(node)
        node = node[3]
    return out


class MemTableIterator(InternalIterator):
    """Walks (user key, version) pairs of one memtable in internal-key order.

    Holds the two sorted key lists of its creation (a key is in exactly one of them) and walks
    their union: ``(_ia, _ib)`` count the keys of each list before the current one, which is
    the smaller of ``a[_ia]`` and ``b[_ib]``. Keys added later are invisible to it (their seqnos
    are above any snapshot the iterator serves).
    """

    __slots__ = ("_a", "_b", "_ia", "_ib", "_in_b", "_j", "_key", "_prefix", "_table",
                 "_value", "_versions")

    def __init__(self, table: dict[bytes, Chain], a: list[bytes], b: list[bytes]) -> None:
        self._table = table
        self._a = a
        self._b = b
        self._ia = len(a)
        self._ib = len(b)
        self._in_b = False
        self._j = 0
        self._versions: list[Chain] = []
        self._prefix = b""
        self._key: bytes | None = None
        self._value = b""

    def valid(self) -> bool:
        return self._key is not None

    def key(self) -> bytes:
        assert self._key is not None
        return self._key

    def value(self) -> bytes:
        return self._value

    def _land(self, user: bytes, j: int | None) -> None:
        """Position on ``user``, version ``j`` (``None`` = oldest)."""
        self._versions = _versions(self._table[user])
        self._prefix = user.replace(b"\x00", b"\x00\xff") + TERMINATOR
        self._set(len(self._versions) - 1 if j is None else j)

    def _set(self, j: int) -> None:
        self._j = j
        node = self._versions[j]
        self._key = self._prefix + trailer(node[0], node[1])
        self._value = node[2]

    def _current(self) -> bytes | None:
        """Make the smaller of ``a[_ia]``, ``b[_ib]`` current; returns it (None: at the end)."""
        a, b, ia, ib = self._a, self._b, self._ia, self._ib
        if ib >= len(b):
            if ia >= len(a):
                self._key = None
                return None
            self._in_b = False
            return a[ia]
        if ia < len(a) and a[ia] < b[ib]:
            self._in_b = False
            return a[ia]
        self._in_b = True
        return b[ib]

    def _step_back(self) -> None:
        """Move to the previous user key (the larger of ``a[_ia-1]``, ``b[_ib-1]``), on its
        oldest version; invalid before the first."""
        a, b, ia, ib = self._a, self._b, self._ia, self._ib
        if ia and (not ib or a[ia - 1] > b[ib - 1]):
            self._ia = ia - 1
            self._in_b = False
            self._land(a[ia - 1], None)
        elif ib:
            self._ib = ib - 1
            self._in_b = True
            self._land(b[ib - 1], None)
        else:
            self._key = None

    async def seek_to_first(self) -> None:
        self._ia = self._ib = 0
        user = self._current()
        if user is not None:
            self._land(user, 0)

    async def seek_to_last(self) -> None:
        self._ia = len(self._a)
        self._ib = len(self._b)
        self._step_back()

    async def seek(self, target: bytes) -> None:
        user = user_key(target)
        self._ia = bisect.bisect_left(self._a, user)
        self._ib = bisect.bisect_left(self._b, user)
        found = self._current()
        if found is None:
            return
        self._land(found, 0)
        if found != user:
            return
        seqno, kind = seqno_kind(target)
        tgt = trailer(seqno, kind)
        for j, node in enumerate(self._versions):
            if trailer(node[0], node[1]) >= tgt:
                self._set(j)
                return
        await self._next_key()

    async def _next_key(self) -> None:
        if self._in_b:
            self._ib += 1
        else:
            self._ia += 1
        user = self._current()
        if user is not None:
            self._land(user, 0)

    async def next(self) -> None:
        if self._j + 1 < len(self._versions):
            self._set(self._j + 1)
        else:
            await self._next_key()

    async def prev(self) -> None:
        if self._j > 0:
            self._set(self._j - 1)
        else:
            self._step_back()


__all__ = ["KIND_DELETE", "KIND_VALUE", "MemTable", "MemTableIterator", "make_internal_key"]
