"""A staged view of the L1 rows: reads through a snapshot, writes into an overlay.

An operation builds its update with one :class:`StagedRows`: it reads rows (its own staged
writes first — read-your-writes, as Redpanda's state updates do through a write batch), stages
puts and deletes, and finally hands :meth:`StagedRows.ops` to ``RowStore.apply`` as one atomic
batch. Typed accessors decode values (:mod:`values`) and raise :class:`Corruption` on damage;
:meth:`StagedRows.remove_bytes` checks the object accounting and reports a violation through
:func:`~cachedaemon.metastore.l1.accounting.corruption` instead of clamping it.

Lives for one operation on the shard that owns the domain; not shared.
"""

from __future__ import annotations

import uuid

from cachedaemon.metastore.l1 import keys, values
from cachedaemon.metastore.l1.accounting import corruption
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.store import RowOp, RowReader, scan_all
from cachedaemon.metastore.l1.values import (
    CompactionState,
    ExtentValue,
    ObjectEntry,
    PartitionMetadata,
)


class StagedRows:
    def __init__(self, reader: RowReader, domain: str = "") -> None:
        self.reader = reader
        #: The domain's name, for corruption reports.
        self.domain = domain
        self._ops: dict[bytes, bytes | None] = {}

    def ops(self) -> list[RowOp]:
        return list(self._ops.items())

    async def _get(self, key: bytes) -> bytes | None:
        if key in self._ops:
            return self._ops[key]
        return await self.reader.get(key)

    def _put(self, key: bytes, value: bytes) -> None:
        self._ops[key] = value

    def _delete(self, key: bytes) -> None:
        self._ops[key] = None

    # --- partition metadata ------------------------------------------------------------------

    async def metadata(self, tidp: TopicIdPartition) -> PartitionMetadata | None:
        raw = await self._get(keys.metadata_key(tidp))
        return None if raw is None else values.decode_metadata(raw)

    def put_metadata(self, tidp: TopicIdPartition, m: PartitionMetadata) -> None:
        self._put(keys.metadata_key(tidp), values.encode_metadata(m))

    def delete_metadata(self, tidp: TopicIdPartition) -> None:
        self._delete(keys.metadata_key(tidp))

    # --- extents (read from the snapshot: an operation reads a partition's extents before it
    # --- stages any change to them) -----------------------------------------------------------

    async def extents(self, tidp: TopicIdPartition, min_base: int = 0,
                      end_base: int | None = None) -> list[tuple[int, ExtentValue]]:
        """Extents with ``min_base <= base < end_base`` in offset order."""
        start, end = keys.extents_range(tidp)
        lo = keys.extent_key(tidp, min_base)
        hi = end if end_base is None else keys.extent_key(tidp, end_base)
        return [(keys.decode_suffix(k), values.decode_extent(v))
                async for k, v in scan_all(self.reader, max(start, lo), hi)]

    async def first_extent(self, tidp: TopicIdPartition) -> tuple[int, ExtentValue] | None:
        """The partition's extent with the lowest base."""
        start, end = keys.extents_range(tidp)
        rows = await self.reader.scan(start, end, limit=1)
        if not rows:
            return None
        return keys.decode_suffix(rows[0][0]), values.decode_extent(rows[0][1])

    async def extent_at_or_below(self, tidp: TopicIdPartition, offset: int
                                 ) -> tuple[int, ExtentValue] | None:
        """The extent with the greatest base ``<= offset``."""
        start, _ = keys.extents_range(tidp)
        rows = await self.reader.scan(start, keys.extent_key(tidp, offset + 1), limit=1,
                                      reverse=True)
        if not rows:
            return None
        return keys.decode_suffix(rows[0][0]), values.decode_extent(rows[0][1])

    def put_extent(self, tidp: TopicIdPartition, base: int, e: ExtentValue) -> None:
        self._put(keys.extent_key(tidp, base), values.encode_extent(e))

    def delete_extent(self, tidp: TopicIdPartition, base: int) -> None:
        self._delete(keys.extent_key(tidp, base))

    # --- terms -------------------------------------------------------------------------------

    async def terms(self, tidp: TopicIdPartition) -> list[tuple[int, int]]:
        """``(term, start offset)`` in term order."""
        start, end = keys.terms_range(tidp)
        return [(keys.decode_suffix(k), values.decode_term(v))
                async for k, v in scan_all(self.reader, start, end)]

    async def last_term(self, tidp: TopicIdPartition) -> tuple[int, int] | None:
        start, end = keys.terms_range(tidp)
        rows = await self.reader.scan(start, end, limit=1, reverse=True)
        if not rows:
            return None
        return keys.decode_suffix(rows[0][0]), values.decode_term(rows[0][1])

    def put_term(self, tidp: TopicIdPartition, term: int, start_offset: int) -> None:
        self._put(keys.term_key(tidp, term), values.encode_term(start_offset))

    def delete_term(self, tidp: TopicIdPartition, term: int) -> None:
        self._delete(keys.term_key(tidp, term))

    # --- compaction --------------------------------------------------------------------------

    async def compaction(self, tidp: TopicIdPartition) -> CompactionState:
        raw = await self._get(keys.compaction_key(tidp))
        return CompactionState() if raw is None else values.decode_compaction(raw)

    def put_compaction(self, tidp: TopicIdPartition, c: CompactionState) -> None:
        if not c.cleaned_ranges and not c.cleaned_ranges_with_tombstones:
            self._delete(keys.compaction_key(tidp))
        else:
            self._put(keys.compaction_key(tidp), values.encode_compaction(c))

    def delete_compaction(self, tidp: TopicIdPartition) -> None:
        self._delete(keys.compaction_key(tidp))

    # --- objects -----------------------------------------------------------------------------

    async def object(self, oid: uuid.UUID) -> ObjectEntry | None:
        raw = await self._get(keys.object_key(oid))
        return None if raw is None else values.decode_object(raw)

    def put_object(self, oid: uuid.UUID, o: ObjectEntry) -> None:
        self._put(keys.object_key(oid), values.encode_object(o))

    def delete_object(self, oid: uuid.UUID) -> None:
        self._delete(keys.object_key(oid))

    async def remove_bytes(self, removed: dict[uuid.UUID, int], now_ms: int) -> None:
        """Add ``removed[oid]`` bytes to each object's removed size (its extents went away) and
        stamp it ``now_ms``. An object without a row, still preregistered, or whose removed size
        would pass its total is corruption (reported, nothing staged for it)."""
        for oid, nbytes in sorted(removed.items()):
            obj = await self.object(oid)
            if obj is None:
                raise corruption(self.domain, f"extents of object {oid} ({nbytes} bytes) were "
                                              f"removed, but the object has no row")
            if obj.is_preregistration:
                raise corruption(self.domain, f"object {oid} is still a preregistration, yet "
                                              f"{nbytes} bytes of its extents were removed")
            if obj.removed_data_size + nbytes > obj.total_data_size:
                raise corruption(self.domain, f"object {oid}: removing {nbytes} more bytes "
                                              f"would count {obj.removed_data_size + nbytes} "
                                              f"bytes removed of its {obj.total_data_size}")
            self.put_object(oid, ObjectEntry(
                obj.total_data_size, obj.removed_data_size + nbytes, obj.footer_pos,
                obj.object_size, now_ms, False, obj.legacy_key))
