"""The internal iterator protocol and its simplest implementations (LevelDB's ``Iterator``).

An internal iterator walks ``(internal key, value)`` pairs in internal-key order (see
:mod:`~cachedaemon.lsm.dbformat`). Positioning and stepping are ``async`` because an SST
iterator may have to load its next block through the persistence layer; ``valid``, ``key`` and
``value`` are synchronous reads of the current position. Iterators over in-memory data never
suspend, so awaiting them costs one coroutine call.

REQUIRES: ``key``/``value``/``next``/``prev`` only while ``valid()``. ``close()`` releases
pinned resources (open tables) and is idempotent.

Iterators live on the shard of the database that made them and are not shared between tasks.
"""

from __future__ import annotations

import bisect


class InternalIterator:
    """Base class; subclasses override every method."""

    __slots__ = ()

    def valid(self) -> bool:
        raise NotImplementedError

    def key(self) -> bytes:
        raise NotImplementedError

    def value(self) -> bytes:
        raise NotImplementedError

    async def seek(self, target: bytes) -> None:
        """Position at the first entry with key >= ``target``."""
        raise NotImplementedError

    async def seek_to_first(self) -> None:
        raise NotImplementedError

    async def seek_to_last(self) -> None:
        raise NotImplementedError

    async def seek_before(self, target: bytes) -> None:
        """Position at the last entry with key < ``target`` (RocksDB's ``SeekForPrev`` with an
        exclusive bound). The default seeks and steps back."""
        await self.seek(target)
        if self.valid():
            await self.prev()
        else:
            await self.seek_to_last()

    async def next(self) -> None:
        raise NotImplementedError

    async def prev(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class EmptyIterator(InternalIterator):
    __slots__ = ()

    def valid(self) -> bool:
        return False

    def key(self) -> bytes:
        raise AssertionError("EmptyIterator has no key")

    def value(self) -> bytes:
        raise AssertionError("EmptyIterator has no value")

    async def seek(self, target: bytes) -> None:
        return None

    async def seek_to_first(self) -> None:
        return None

    async def seek_to_last(self) -> None:
        return None

    async def next(self) -> None:
        return None

    async def prev(self) -> None:
        return None


class ListIterator(InternalIterator):
    """Iterates parallel sorted ``keys``/``values`` lists (a decoded block, an index)."""

    __slots__ = ("_i", "_keys", "_n", "_values")

    def __init__(self, keys: list[bytes], values: list[bytes]) -> None:
        self._keys = keys
        self._values = values
        self._n = len(keys)
        self._i = self._n

    def valid(self) -> bool:
        return 0 <= self._i < self._n

    def key(self) -> bytes:
        return self._keys[self._i]

    def value(self) -> bytes:
        return self._values[self._i]

    async def seek(self, target: bytes) -> None:
        self._i = bisect.bisect_left(self._keys, target)

    async def seek_to_first(self) -> None:
        self._i = 0

    async def seek_to_last(self) -> None:
        self._i = self._n - 1

    async def next(self) -> None:
        self._i += 1

    async def prev(self) -> None:
        self._i = self._i - 1 if self._i > 0 else -1
