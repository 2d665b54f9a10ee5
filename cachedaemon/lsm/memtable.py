"""MemTable: the in-memory, newest part of the database (LevelDB's ``MemTable``).

Owned by one :class:`~cachedaemon.lsm.db.Database` on one shard; mutated only by
``Database.apply`` (synchronously, so a batch is all-or-nothing to readers) and read by
gets, iterators and the flush.

Layout, chosen for Python speed rather than copied from LevelDB's skiplist:

* ``_table`` maps a user key to the head of an immutable chain of versions, newest first:
  ``(seqno, kind, value, older)``. A put is one dict store and one tuple; a point lookup is one
  dict probe plus a walk down the chain to the first version visible at the snapshot.
* Ordered access sorts the user keys lazily. New keys are collected in ``_new_keys`` and merged
  into a fresh sorted list the next time an iterator (or the flush) needs order; the merge of a
  sorted run with a sorted batch is linear (timsort). Iterators keep the list they were given,
  so later inserts never disturb them, and the chains they walk are immutable.

``approximate_bytes`` charges key + value + a fixed per-entry overhead.
"""

from __future__ import annotations

import bisect
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


class MemTable:
    __slots__ = (
        "_bytes",
        "_new_keys",
        "_sorted",
        "_table",
        "first_seqno",
        "last_seqno",
    )

    def __init__(self) -> None:
        self._table: dict[bytes, Chain] = {}
        self._sorted: list[bytes] = []
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

    def sorted_keys(self) -> list[bytes]:
        """The user keys in order. The returned list is never mutated afterwards."""
        if self._new_keys:
            merged = self._sorted + sorted(self._new_keys)
            merged.sort()
            self._sorted = merged
            self._new_keys = []
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
        return MemTableIterator(self._table, self.sorted_keys())


def _versions(node: Chain | None) -> list[Chain]:
    out = []
    while node is not None:
        out.append(node)
        node = node[3]
    return out


class MemTableIterator(InternalIterator):
    """Walks (user key, version) pairs of one memtable in internal-key order.

    Holds the sorted key list of its creation; keys added later are invisible to it (their
    seqnos are above any snapshot the iterator serves).
    """

    __slots__ = ("_i", "_j", "_key", "_keys", "_prefix", "_table", "_value", "_versions")

    def __init__(self, table: dict[bytes, Chain], keys: list[bytes]) -> None:
        self._table = table
        self._keys = keys
        self._i = -1
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

    def _land(self, i: int, j: int | None) -> None:
        """Position on key index ``i``, version ``j`` (``None`` = oldest)."""
        keys = self._keys
        if i < 0 or i >= len(keys):
            self._i = -1 if i < 0 else len(keys)
            self._key = None
            return
        self._i = i
        user = keys[i]
        self._versions = _versions(self._table[user])
        self._prefix = user.replace(b"\x00", b"\x00\xff") + TERMINATOR
        self._set(len(self._versions) - 1 if j is None else j)

    def _set(self, j: int) -> None:
        self._j = j
        node = self._versions[j]
        self._key = self._prefix + trailer(node[0], node[1])
        self._value = node[2]

    async def seek_to_first(self) -> None:
        self._land(0, 0)

    async def seek_to_last(self) -> None:
        self._land(len(self._keys) - 1, None)

    async def seek(self, target: bytes) -> None:
        user = user_key(target)
        seqno, kind = seqno_kind(target)
        i = bisect.bisect_left(self._keys, user)
        if i >= len(self._keys):
            self._land(i, 0)
            return
        if self._keys[i] != user:
            self._land(i, 0)
            return
        self._land(i, 0)
        tgt = trailer(seqno, kind)
        for j, node in enumerate(self._versions):
            if trailer(node[0], node[1]) >= tgt:
                self._set(j)
                return
        self._land(i + 1, 0)

    async def next(self) -> None:
        if self._j + 1 < len(self._versions):
            self._set(self._j + 1)
        else:
            self._land(self._i + 1, 0)

    async def prev(self) -> None:
        if self._j > 0:
            self._set(self._j - 1)
        else:
            self._land(self._i - 1, None)


__all__ = ["KIND_DELETE", "KIND_VALUE", "MemTable", "MemTableIterator", "make_internal_key"]
