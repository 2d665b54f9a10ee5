"""The cache index in memory: entry path -> size, in least-recently-used order.

Owned by the cache coordinator on shard 0 and touched only from its loop. It is the
coordinator's record of what is committed: every commit adds (or replaces) an entry at the
most-recent end, every hit moves one there, invalidation and trim remove them; ``total_bytes``
and ``len()`` are kept as it changes and are the cache's ``bytes_used``/``objects``.

It is also what the index files persist (:mod:`cachedaemon.cache.journal`): each change that
happens one entry at a time is handed to the attached :class:`Journal` sink as it happens
(commits and removals at once; touches gathered and handed over as one batch by
:meth:`take_touches`), while changes in bulk (a walk's corrections) only mark the index
:attr:`bulk_dirty`, and the coordinator writes a new snapshot instead of journaling them.

**Memory.** One ``dict`` entry per path, with the path (``str``) as key and its size (``int``)
as value; insertion order is the LRU order (a touch deletes and re-inserts). No access time is
kept: nothing needs it once the order is known. On CPython 3.11, 64-bit, that is about 120
bytes per entry for a 20-character path (the dict's slot and index ~40-50, the key ~70, the
size ~28 unless it is a small cached int) against ~220 for the access-time tracker it replaces
(which added a 2-tuple and a float per entry). ``tests/cache/test_index.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol


class Journal(Protocol):
    """Where the index hands its single-entry changes (see :mod:`cachedaemon.cache.journal`)."""

    def commit(self, path: str, size: int) -> None: ...

    def remove(self, path: str) -> None: ...


class CacheIndex:
    """Committed entries: path -> size in LRU order (least recent first), with totals."""

    __slots__ = ("_entries", "_touched", "bulk_dirty", "journal", "total_bytes")

    def __init__(self, entries: dict[str, int] | None = None) -> None:
        self._entries: dict[str, int] = {}
        self._touched: dict[str, None] = {}
        self.total_bytes = 0
        self.bulk_dirty = False
        self.journal: Journal | None = None
        if entries:
            self.install(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def get(self, path: str) -> int | None:
        """The size of ``path``'s entry, or ``None``."""
        return self._entries.get(path)

    def add(self, path: str, size: int) -> int | None:
        """Insert or replace ``path`` as most recently used; return the replaced size."""
        entries = self._entries
        old = entries.pop(path, None)
        if old is not None:
            self.total_bytes -= old
        entries[path] = size
        self.total_bytes += size
        if self.journal is not None:
            self.journal.commit(path, size)
        return old

    def remove(self, path: str) -> int | None:
        """Forget ``path``'s entry; return its size, or ``None`` if it was not there."""
        size = self._entries.pop(path, None)
        if size is not None:
            self.total_bytes -= size
            if self.journal is not None:
                self.journal.remove(path)
        return size

    def touch(self, path: str) -> bool:
        """Mark ``path`` used now (most recent). False if it is not in the index."""
        return self.touch_size(path) is not None

    def touch_size(self, path: str) -> int | None:
        """:meth:`touch`, returning the entry's size (``None``: not in the index)."""
        entries = self._entries
        size = entries.pop(path, None)
        if size is None:
            return None
        entries[path] = size
        touched = self._touched
        if path in touched:
            del touched[path]
        touched[path] = None
        return size

    def take_touches(self) -> list[str]:
        """The paths touched since the last call, in the order of their last touch."""
        if not self._touched:
            return []
        out = list(self._touched)
        self._touched = {}
        return out

    # --- bulk changes (a walk's corrections): not journaled, they ask for a snapshot --------

    def set_size(self, path: str, size: int) -> None:
        """Correct the size of ``path`` in place (its LRU position stays)."""
        old = self._entries.get(path)
        if old is not None and old != size:
            self._entries[path] = size
            self.total_bytes += size - old
            self.bulk_dirty = True

    def forget(self, paths: Iterable[str]) -> int:
        """Drop ``paths`` (those present); return how many went."""
        entries = self._entries
        n = 0
        for path in paths:
            size = entries.pop(path, None)
            if size is not None:
                self.total_bytes -= size
                n += 1
        if n:
            self.bulk_dirty = True
        return n

    def adopt(self, items: list[tuple[str, float, int]]) -> int:
        """Add files found on disk that the index did not know, ``(path, atime, size)``, at the
        least-recently-used end (oldest access time first): what the index never saw used goes
        first. Paths already present are skipped. Returns how many were added."""
        fresh = sorted((t for t in items if t[0] not in self._entries), key=lambda t: t[1])
        if not fresh:
            return 0
        rebuilt: dict[str, int] = {p: s for p, _, s in fresh}
        rebuilt.update(self._entries)
        self._entries = rebuilt
        self.total_bytes += sum(s for _, _, s in fresh)
        self.bulk_dirty = True
        return len(fresh)

    def install(self, entries: dict[str, int], total_bytes: int | None = None) -> None:
        """Take over ``entries`` (LRU order) built elsewhere (a load, a walk)."""
        self._entries = entries
        self.total_bytes = sum(entries.values()) if total_bytes is None else total_bytes
        self._touched = {}

    # --- reading ----------------------------------------------------------------------------

    def lru(self) -> Iterator[tuple[str, int]]:
        """Entries, least recently used first. Do not change the index while iterating."""
        return iter(self._entries.items())

    def copy(self) -> dict[str, int]:
        """A copy in LRU order (C speed) for a thread job (a snapshot, a walk's comparison)."""
        return self._entries.copy()
