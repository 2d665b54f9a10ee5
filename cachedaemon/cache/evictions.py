"""EvictionLog: when and why recent cache entries left, for ``GET /v1/cache/explain/{key}``.

Every removal of a committed entry that shard 0's coordinator accounts is recorded here with
its reason (:class:`EvictionReason`): a trim (its phase), a drop asked for by an operator, a
replacement by a PUT, a DELETE, a file found missing by a walk, a write whose shard died. The
log keeps the **latest** record per entry path and at most ``capacity`` paths, the oldest
records going first, so a key's record says why it is not (or was not, before a later commit)
in the cache, as long as it is recent enough to be kept.

**Memory bound.** One ``dict`` slot (~100 bytes with its hash), a small tuple (~64 bytes) and
a float per record, plus the path string (~50 bytes + its length; shared with nothing once the
entry is gone): about 250 bytes + the path. The default capacity, 16384 records, is about
5 MiB with 60-byte paths, and at most ~20 MiB with 1 KiB paths.

Counts per reason are kept forever (``cachedaemon_cache_evictions_total{reason}``).

Owned by shard 0's coordinator and touched only on its loop. Plain data out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EvictionReason(enum.Enum):
    """Why an entry left the cache (the values are the API's and the metric's labels)."""

    lru_trim = "lru_trim"  # phase 1: the in-memory LRU order, to the low watermark
    walk_trim = "walk_trim"  # phase 2: LRU again after a directory walk re-synced the order
    exhaustive_trim = "exhaustive_trim"  # phase 3: from the walk's listing, oldest first
    manual_drop = "manual_drop"  # DELETE /v1/cache/objects/{key}
    replaced = "replaced"  # a PUT of the key replaced the entry, or removed it (overlap)
    deleted = "deleted"  # DELETE /v1/objects/{key}
    vanished = "vanished"  # a walk found the file gone (deleted behind the daemon's back)
    abandoned = "abandoned"  # a write of the key whose shard died (its outcome is unknown)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    EvictionReason.lru_trim: "trimmed: least recently used when the cache needed space",
    EvictionReason.walk_trim: "trimmed: least recently used, after a directory walk",
    EvictionReason.exhaustive_trim: "trimmed: oldest file on disk in an exhaustive trim",
    EvictionReason.manual_drop: "dropped by DELETE /v1/cache/objects/{key}",
    EvictionReason.replaced: "replaced or removed by a PUT of the key",
    EvictionReason.deleted: "deleted by DELETE /v1/objects/{key}",
    EvictionReason.vanished: "its file disappeared from the cache directory",
    EvictionReason.abandoned: "a write of the key was cut short by its shard's death",
}


@dataclass(frozen=True)
class Eviction:
    """One record: the entry path, when (unix seconds), why and the entry's size then."""

    path: str
    at: float
    reason: EvictionReason
    size: int


class EvictionLog:
    """See the module docstring."""

    __slots__ = ("_records", "capacity", "counts")

    def __init__(self, capacity: int = 16384) -> None:
        if capacity < 0:
            raise ValueError(f"an eviction log holds 0 or more records, not {capacity}")
        self.capacity = capacity
        self._records: dict[str, tuple[float, EvictionReason, int]] = {}
        self.counts: dict[EvictionReason, int] = dict.fromkeys(EvictionReason, 0)

    def __len__(self) -> int:
        return len(self._records)

    def record(self, path: str, reason: EvictionReason, size: int, at: float) -> None:
        """``path`` (``size`` bytes) left the cache at ``at`` because of ``reason``."""
        self.counts[reason] += 1
        if not self.capacity:
            return
        records = self._records
        records.pop(path, None)  # its latest record goes to the new end
        records[path] = (at, reason, size)
        if len(records) > self.capacity:
            del records[next(iter(records))]

    def record_many(self, paths: list[tuple[str, int]], reason: EvictionReason,
                    at: float) -> None:
        for path, size in paths:
            self.record(path, reason, size, at)

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` records from now on (the oldest go at once)."""
        if capacity < 0:
            raise ValueError(f"an eviction log holds 0 or more records, not {capacity}")
        self.capacity = capacity
        records = self._records
        while len(records) > capacity:
            del records[next(iter(records))]

    def lookup(self, path: str) -> Eviction | None:
        """The latest record of ``path`` still kept, or ``None``."""
        found = self._records.get(path)
        if found is None:
            return None
        return Eviction(path, *found)

    def oldest(self) -> float | None:
        """When the oldest record kept was made (how far back the log reaches)."""
        for at, _, _ in self._records.values():
            return at
        return None
