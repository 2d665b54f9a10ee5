"""``L1Metastore``: the object catalogue of tiered partitions (Redpanda's cloud-topics L1
metastore), on the rows of one metastore domain.

It records which bucket objects hold which offset ranges ("extents") of which partitions, each
partition's offsets, size, term starts and compaction state, and per object how many of its data
bytes are still referenced — so the object GC (:mod:`cachedaemon.metastore.l1.gc`) knows when an
object is all dead and may be deleted.

Every write is one atomic batch built from a consistent snapshot (:class:`StagedRows`) under the
lock order domain → topic → partition → object (:mod:`locks`): the partition locks keep a
partition's rows still while the update is computed; object locks are taken last, in one sorted
call. An operation that discovers the objects it touches only by reading (truncation,
replacement, topic removal) computes twice: once to learn the objects, then again under their
locks from a fresh snapshot, and applies that. Queries read one snapshot and take no locks.

Errors: :class:`MissingPartition` (404), :class:`InvalidRequest` with the reason (400),
:class:`OutOfRange` (416); failures of the row store pass through (translated to
:class:`TransportError` at the store adapter).

One instance per domain, on the shard that owns the domain; not thread-safe.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TypeVar

from cachedaemon.clock import Clock, SystemClock
from cachedaemon.errors import Corruption
from cachedaemon.metastore.l1 import intervals, keys, values
from cachedaemon.metastore.l1.errors import InvalidRequest, MissingPartition, OutOfRange
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.locks import LockManager
from cachedaemon.metastore.l1.state import StagedRows
from cachedaemon.metastore.l1.store import RowStore, scan_all
from cachedaemon.metastore.l1.types import (
    CompactionInfo,
    CompactionUpdate,
    ExtentList,
    ExtentMetadata,
    ExtentSpec,
    NewObject,
    ObjectInfo,
    OffsetRange,
    Offsets,
    TermStart,
    TombstoneRangeInfo,
)
from cachedaemon.metastore.l1.values import (
    CompactionState,
    ExtentValue,
    ObjectEntry,
    PartitionMetadata,
    TombstoneRange,
)

T = TypeVar("T")

#: Most extents one listing returns.
MAX_LIST_LIMIT = 10000


@dataclass(frozen=True, slots=True)
class _Extent:
    base: int
    last: int
    oid: uuid.UUID
    spec: ExtentSpec
    where: str


def tidp_of(e: ExtentSpec | TermStart) -> TopicIdPartition:
    return TopicIdPartition(e.topic_id, e.partition)


def _validate_objects(objects: Sequence[NewObject]) -> dict[TopicIdPartition, list[_Extent]]:
    """Check what needs no state; group extents by partition in offset order."""
    seen: set[uuid.UUID] = set()
    parts: dict[TopicIdPartition, list[_Extent]] = defaultdict(list)
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if obj.oid in seen:
            raise InvalidRequest(f"{where}.oid: object {obj.oid} appears twice in the request")
        seen.add(obj.oid)
        if not obj.extents:
            raise InvalidRequest(f"{where}.extents: an object must hold at least one extent")
        if obj.footer_pos > obj.object_size:
            raise InvalidRequest(f"{where}.footer_pos: {obj.footer_pos} is past object_size "
                                 f"{obj.object_size}")
        for j, e in enumerate(obj.extents):
            w = f"{where}.extents[{j}]"
            if e.base_offset > e.last_offset:
                raise InvalidRequest(f"{w}.last_offset: {e.last_offset} is below base_offset "
                                     f"{e.base_offset}")
            if e.len == 0:
                # An object whose data is all zero-length would look dead (removed == total)
                # while its extents still reference it, and the GC would delete it.
                raise InvalidRequest(f"{w}.len: an extent holds at least one byte")
            if e.filepos + e.len > obj.footer_pos:
                raise InvalidRequest(f"{w}.len: bytes [{e.filepos}, {e.filepos + e.len}) run "
                                     f"past footer_pos {obj.footer_pos}")
            parts[tidp_of(e)].append(_Extent(e.base_offset, e.last_offset, obj.oid, e, w))
    for tidp, exts in parts.items():
        exts.sort(key=lambda x: x.base)
        for prev, cur in pairwise(exts):
            if cur.base != prev.last + 1:
                raise InvalidRequest(
                    f"{cur.where}.base_offset: extents of partition {tidp} are not contiguous "
                    f"({cur.base} follows last offset {prev.last})")
    return dict(parts)


def _validate_terms(terms: Sequence[TermStart], parts: Mapping[TopicIdPartition, list[_Extent]]
                    ) -> dict[TopicIdPartition, list[tuple[int, int]]]:
    out: dict[TopicIdPartition, list[tuple[int, int]]] = defaultdict(list)
    for i, t in enumerate(terms):
        w = f"terms[{i}]"
        tidp = tidp_of(t)
        exts = parts.get(tidp)
        if exts is None:
            raise InvalidRequest(f"{w}: partition {tidp} has no extents in the request")
        if not exts[0].base <= t.start_offset <= exts[-1].last:
            raise InvalidRequest(f"{w}.start_offset: {t.start_offset} is outside the added "
                                 f"offsets [{exts[0].base}, {exts[-1].last}]")
        prev = out[tidp][-1] if out[tidp] else None
        if prev is not None and (t.term <= prev[0] or t.start_offset <= prev[1]):
            raise InvalidRequest(f"{w}: terms of partition {tidp} must increase in term and "
                                 f"start_offset")
        out[tidp].append((t.term, t.start_offset))
    return dict(out)


def _new_object_entry(obj: NewObject, removed: int, now_ms: int) -> ObjectEntry:
    total = sum(e.len for e in obj.extents)
    return ObjectEntry(total, min(total, removed), obj.footer_pos, obj.object_size, now_ms, False)


def _extent_value(x: _Extent) -> ExtentValue:
    return ExtentValue(x.last, x.spec.max_timestamp, x.spec.filepos, x.spec.len, x.oid)


def _extent_metadata(base: int, e: ExtentValue) -> ExtentMetadata:
    return ExtentMetadata(base_offset=base, last_offset=e.last_offset,
                          max_timestamp=e.max_timestamp, filepos=e.filepos, len=e.len, oid=e.oid)


def _object_info(oid: uuid.UUID, o: ObjectEntry) -> ObjectInfo:
    return ObjectInfo(oid=oid, total_data_size=o.total_data_size,
                      removed_data_size=o.removed_data_size, footer_pos=o.footer_pos,
                      object_size=o.object_size, last_updated=o.last_updated,
                      is_preregistration=o.is_preregistration)


async def _check_new_objects(s: StagedRows, objects: Sequence[NewObject]) -> None:
    for i, obj in enumerate(objects):
        existing = await s.object(obj.oid)
        if existing is not None and not existing.is_preregistration:
            raise InvalidRequest(f"objects[{i}].oid: object {obj.oid} is already registered")


class L1Metastore:
    """The L1 operations over one domain's rows (see the module docstring)."""

    def __init__(self, store: RowStore, *, clock: Clock | None = None,
                 locks: LockManager | None = None) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.locks = locks or LockManager()

    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    async def _two_phase(self, compute: Callable[[StagedRows], Awaitable[tuple[T, set[uuid.UUID]]]]
                         ) -> T:
        """Compute once to learn the objects touched, then again under their locks; apply.
        REQUIRES: the caller holds the locks of every partition ``compute`` reads."""
        async with self.store.snapshot(for_write=True) as reader:
            _, oids = await compute(StagedRows(reader))
        async with self.locks.objects(oids), self.store.snapshot(for_write=True) as reader:
            staged = StagedRows(reader)
            result, again = await compute(staged)
            if not again <= oids:
                raise Corruption("L1: the objects of a locked partition changed under its lock")
            ops = staged.ops()
            if ops:
                await self.store.apply(ops)
        return result

    # --- writes ------------------------------------------------------------------------------

    async def add_objects(self, objects: Sequence[NewObject], terms: Sequence[TermStart] = ()
                          ) -> dict[TopicIdPartition, int]:
        """Register new objects and their extents, and term starts.

        Per partition the request's extents must be contiguous; a new partition starts at its
        first extent. A partition whose extents do not begin at its current next offset is left
        alone (its bytes count as removed in their objects) and is returned with its real next
        offset — the *corrected next offsets* — so the writer can resume from there.
        """
        parts = _validate_objects(objects)
        term_map = _validate_terms(terms, parts)
        async with (self.locks.partitions(parts), self.locks.objects(o.oid for o in objects),
                    self.store.snapshot(for_write=True) as reader):
            s = StagedRows(reader)
            await _check_new_objects(s, objects)
            now = self.now_ms()
            corrected: dict[TopicIdPartition, int] = {}
            removed: dict[uuid.UUID, int] = defaultdict(int)
            for tidp, exts in parts.items():
                m = await s.metadata(tidp)
                if m is not None and exts[0].base != m.next_offset:
                    corrected[tidp] = m.next_offset
                    for x in exts:
                        removed[x.oid] += x.spec.len
                    continue
                new_terms = term_map.get(tidp, [])
                last_term = (await s.last_term(tidp)
                             if m is not None and new_terms else None)
                for term, start in new_terms:
                    if last_term is not None and term < last_term[0]:
                        raise InvalidRequest(f"term {term} of partition {tidp} is below its "
                                             f"latest term {last_term[0]}")
                    if last_term is not None and term == last_term[0]:
                        continue  # the latest term goes on
                    s.put_term(tidp, term, start)
                for x in exts:
                    s.put_extent(tidp, x.base, _extent_value(x))
                added = sum(x.spec.len for x in exts)
                if m is None:
                    m = PartitionMetadata(exts[0].base, exts[0].base, 0, 0, 0)
                s.put_metadata(tidp, PartitionMetadata(
                    m.start_offset, exts[-1].last + 1, m.compaction_epoch, m.size + added,
                    m.num_extents + len(exts)))
            for obj in objects:
                s.put_object(obj.oid, _new_object_entry(obj, removed.get(obj.oid, 0), now))
            await self.store.apply(s.ops())
        return corrected

    async def replace_objects(self, objects: Sequence[NewObject],
                              expected_epochs: Mapping[TopicIdPartition, int]
                              ) -> dict[TopicIdPartition, int]:
        """Replace, per partition, the extents covering exactly the new extents' range with the
        new ones (e.g. after re-packing objects). Optimistic: each partition's compaction epoch
        must equal ``expected_epochs``; each success bumps it. Returns the new epochs."""
        parts = _validate_objects(objects)
        for tidp in expected_epochs:
            if tidp not in parts:
                raise InvalidRequest(f"expected_epochs: partition {tidp} has no extents in the "
                                     f"request")
        return await self._replace(objects, parts, dict(expected_epochs), {})

    async def compact_objects(self, objects: Sequence[NewObject],
                              updates: Sequence[CompactionUpdate]
                              ) -> dict[TopicIdPartition, int]:
        """Replace extents with compacted objects (as :meth:`replace_objects`) and record the
        compaction outcome per partition; an update without objects only commits compaction
        metadata. Every partition with extents in ``objects`` needs an update."""
        parts = _validate_objects(objects)
        by_tidp: dict[TopicIdPartition, CompactionUpdate] = {}
        for i, u in enumerate(updates):
            tidp = TopicIdPartition(u.topic_id, u.partition)
            if tidp in by_tidp:
                raise InvalidRequest(f"updates[{i}]: partition {tidp} appears twice")
            ranges = [] if u.cleaned_range is None else [("cleaned_range", u.cleaned_range)]
            ranges += [(f"removed_tombstone_ranges[{j}]", r)
                       for j, r in enumerate(u.removed_tombstone_ranges)]
            for name, r in ranges:
                if r.base > r.last:
                    raise InvalidRequest(f"updates[{i}].{name}: base {r.base} > last {r.last}")
            if u.has_tombstones and u.cleaned_range is None:
                raise InvalidRequest(f"updates[{i}].has_tombstones: needs a cleaned_range")
            by_tidp[tidp] = u
        epochs = {t: u.expected_epoch for t, u in by_tidp.items()}
        return await self._replace(objects, parts, epochs, by_tidp)

    async def _replace(self, objects: Sequence[NewObject],
                       parts: dict[TopicIdPartition, list[_Extent]],
                       epochs: dict[TopicIdPartition, int],
                       updates: dict[TopicIdPartition, CompactionUpdate],
                       ) -> dict[TopicIdPartition, int]:
        for tidp in parts:
            if tidp not in epochs:
                raise InvalidRequest(f"partition {tidp} has extents in the request but no "
                                     f"expected compaction epoch")
        new_oids = {o.oid for o in objects}

        async def compute(s: StagedRows) -> tuple[dict[TopicIdPartition, int], set[uuid.UUID]]:
            await _check_new_objects(s, objects)
            now = self.now_ms()
            touched = set(new_oids)
            removed: dict[uuid.UUID, int] = defaultdict(int)
            result: dict[TopicIdPartition, int] = {}
            for tidp in sorted(epochs):
                m = await s.metadata(tidp)
                if m is None:
                    raise MissingPartition(f"partition {tidp} is not in the L1 metastore")
                if m.compaction_epoch != epochs[tidp]:
                    raise InvalidRequest(
                        f"stale compaction epoch for partition {tidp}: expected "
                        f"{epochs[tidp]}, current {m.compaction_epoch}")
                size, count = m.size, m.num_extents
                exts = parts.get(tidp)
                if exts:
                    base, last = exts[0].base, exts[-1].last
                    if last >= m.next_offset:
                        raise OutOfRange(f"replacement [{base}, {last}] of partition {tidp} "
                                         f"runs past its next offset {m.next_offset}")
                    old = await s.extents(tidp, base, last + 1)
                    if not old or old[0][0] != base or old[-1][1].last_offset != last:
                        raise InvalidRequest(
                            f"replacement [{base}, {last}] of partition {tidp} does not match "
                            f"the boundaries of its extents")
                    for b, e in old:
                        removed[e.oid] += e.len
                        touched.add(e.oid)
                        s.delete_extent(tidp, b)
                        size -= e.len
                    for x in exts:
                        s.put_extent(tidp, x.base, _extent_value(x))
                        size += x.spec.len
                    count += len(exts) - len(old)
                u = updates.get(tidp)
                if u is not None:
                    s.put_compaction(tidp, await self._compaction_update(s, tidp, m, u))
                result[tidp] = m.compaction_epoch + 1
                s.put_metadata(tidp, PartitionMetadata(m.start_offset, m.next_offset,
                                                       m.compaction_epoch + 1, size, count))
            for obj in objects:
                s.put_object(obj.oid, _new_object_entry(obj, 0, now))
            await s.remove_bytes({o: n for o, n in removed.items() if o not in new_oids}, now)
            return result, touched

        async with self.locks.partitions(epochs):
            return await self._two_phase(compute)

    @staticmethod
    async def _compaction_update(s: StagedRows, tidp: TopicIdPartition, m: PartitionMetadata,
                                 u: CompactionUpdate) -> CompactionState:
        cs = await s.compaction(tidp)
        cleaned = cs.cleaned_ranges
        tombs = list(cs.cleaned_ranges_with_tombstones)
        if u.cleaned_range is not None:
            r = u.cleaned_range
            if r.last >= m.next_offset:
                raise OutOfRange(f"cleaned_range [{r.base}, {r.last}] of partition {tidp} runs "
                                 f"past its next offset {m.next_offset}")
            clipped = intervals.clip_below([(r.base, r.last)], m.start_offset)
            for b, last in clipped:
                cleaned = intervals.add(cleaned, (b, last))
                if u.has_tombstones:
                    tombs.append(TombstoneRange(b, last, u.cleaned_at))
        for r in u.removed_tombstone_ranges:
            kept: list[TombstoneRange] = []
            for t in tombs:
                for b, last in intervals.subtract([(t.base, t.last)], (r.base, r.last)):
                    kept.append(TombstoneRange(b, last, t.cleaned_at))
            tombs = kept
        tombs.sort(key=lambda t: (t.base, t.last))
        return CompactionState(cleaned, tuple(tombs))

    async def set_start_offset(self, tidp: TopicIdPartition, start_offset: int) -> Offsets:
        """Prefix truncation: extents wholly below ``start_offset`` go (their bytes become removed
        bytes of their objects), as do terms that ended before it and cleaned ranges below it.
        Moving the start backwards is a no-op. Past the next offset is :class:`OutOfRange`."""

        async def compute(s: StagedRows) -> tuple[Offsets, set[uuid.UUID]]:
            m = await self._metadata(s, tidp)
            if start_offset > m.next_offset:
                raise OutOfRange(f"start offset {start_offset} of partition {tidp} is past its "
                                 f"next offset {m.next_offset}")
            if start_offset <= m.start_offset:
                return Offsets(start_offset=m.start_offset, next_offset=m.next_offset), set()
            removed: dict[uuid.UUID, int] = defaultdict(int)
            size, count = m.size, m.num_extents
            for base, e in await s.extents(tidp, 0, start_offset):
                if e.last_offset < start_offset:
                    s.delete_extent(tidp, base)
                    removed[e.oid] += e.len
                    size -= e.len
                    count -= 1
            terms = await s.terms(tidp)
            below = [t for t, start in terms if start <= start_offset]
            for t in below[:-1]:
                s.delete_term(tidp, t)
            cs = await s.compaction(tidp)
            s.put_compaction(tidp, CompactionState(
                intervals.clip_below(cs.cleaned_ranges, start_offset),
                tuple(TombstoneRange(b, last, t.cleaned_at) for t in cs.cleaned_ranges_with_tombstones
                      for b, last in intervals.clip_below([(t.base, t.last)], start_offset))))
            s.put_metadata(tidp, PartitionMetadata(start_offset, m.next_offset,
                                                   m.compaction_epoch, size, count))
            await s.remove_bytes(removed, self.now_ms())
            return Offsets(start_offset=start_offset, next_offset=m.next_offset), set(removed)

        async with self.locks.partitions([tidp]):
            return await self._two_phase(compute)

    async def remove_topics(self, topic_ids: Iterable[uuid.UUID]) -> int:
        """Remove every row of the topics' partitions; their extents' bytes become removed bytes
        of their objects. Unknown topics are ignored. Returns the partitions removed."""
        topics = sorted(set(topic_ids))

        async def compute(s: StagedRows) -> tuple[int, set[uuid.UUID]]:
            removed: dict[uuid.UUID, int] = defaultdict(int)
            n = 0
            for topic in topics:
                start, end = keys.topic_metadata_range(topic)
                tidps = [keys.decode_tidp(k) async for k, _ in scan_all(s.reader, start, end)]
                for tidp in tidps:
                    n += 1
                    for base, e in await s.extents(tidp):
                        s.delete_extent(tidp, base)
                        removed[e.oid] += e.len
                    for term, _ in await s.terms(tidp):
                        s.delete_term(tidp, term)
                    s.delete_compaction(tidp)
                    s.delete_metadata(tidp)
            await s.remove_bytes(removed, self.now_ms())
            return n, set(removed)

        async with self.locks.partitions(exclusive_topics=topics):
            return await self._two_phase(compute)

    async def preregister_objects(self, count: int) -> list[uuid.UUID]:
        """Reserve ``count`` fresh object ids before uploading; an id not added within the TTL is
        expired by the GC (which also deletes any bucket object of that name)."""
        if not 1 <= count <= 10000:
            raise InvalidRequest(f"count: {count} is not within 1..10000")
        oids = [uuid.uuid4() for _ in range(count)]
        async with (self.locks.partitions(), self.locks.objects(oids),
                    self.store.snapshot(for_write=True) as reader):
            s = StagedRows(reader)
            now = self.now_ms()
            for oid in oids:
                s.put_object(oid, ObjectEntry(0, 0, 0, 0, now, True))
            await self.store.apply(s.ops())
        return oids

    async def remove_objects(self, oids: Iterable[uuid.UUID]) -> int:
        """Delete the rows of objects that hold no live data (or are preregistrations).
        Unknown ids are ignored; a referenced object is :class:`InvalidRequest`. Returns the
        rows deleted. The bucket objects are the caller's (the GC deletes them first)."""
        wanted = sorted(set(oids))
        async with (self.locks.partitions(), self.locks.objects(wanted),
                    self.store.snapshot(for_write=True) as reader):
            s = StagedRows(reader)
            n = 0
            for oid in wanted:
                obj = await s.object(oid)
                if obj is None:
                    continue
                if not (obj.is_dead or obj.is_preregistration):
                    raise InvalidRequest(
                        f"object {oid} is still referenced ({obj.removed_data_size} of "
                        f"{obj.total_data_size} data bytes removed)")
                s.delete_object(oid)
                n += 1
            if n:
                await self.store.apply(s.ops())
        return n

    # --- queries -----------------------------------------------------------------------------

    @staticmethod
    async def _metadata(s: StagedRows, tidp: TopicIdPartition) -> PartitionMetadata:
        m = await s.metadata(tidp)
        if m is None:
            raise MissingPartition(f"partition {tidp} is not in the L1 metastore")
        return m

    async def get_partition(self, tidp: TopicIdPartition) -> PartitionMetadata:
        async with self.store.snapshot() as reader:
            return await self._metadata(StagedRows(reader), tidp)

    async def get_offsets(self, tidp: TopicIdPartition) -> Offsets:
        m = await self.get_partition(tidp)
        return Offsets(start_offset=m.start_offset, next_offset=m.next_offset)

    async def get_size(self, tidp: TopicIdPartition) -> int:
        """Bytes of the partition's extents (including the part of a straddling first extent
        below the start offset)."""
        return (await self.get_partition(tidp)).size

    async def get_first_ge(self, tidp: TopicIdPartition, offset: int) -> ExtentMetadata:
        """The extent holding ``offset`` (or the first one, if ``offset`` is below the start)."""
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            if offset >= m.next_offset:
                raise OutOfRange(f"offset {offset} is at or past the next offset "
                                 f"{m.next_offset} of partition {tidp}")
            at = max(offset, m.start_offset)
            found = await s.extent_at_or_below(tidp, at)
            if found is not None and found[1].last_offset >= at:
                return _extent_metadata(*found)
            _, end = keys.extents_range(tidp)
            later = await reader.scan(keys.extent_key(tidp, at), end, limit=1)
            if later:
                return _extent_metadata(keys.decode_suffix(later[0][0]),
                                        values.decode_extent(later[0][1]))
            raise OutOfRange(f"no extent of partition {tidp} at or after offset {offset}")

    async def get_first_ge_timestamp(self, tidp: TopicIdPartition, timestamp: int,
                                     min_offset: int = 0) -> ExtentMetadata:
        """The first extent at or after ``min_offset`` whose max timestamp is ``>= timestamp``."""
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            at = max(min_offset, m.start_offset)
            first = await s.extent_at_or_below(tidp, at)
            lo = first[0] if first is not None else at
            _, end = keys.extents_range(tidp)
            async for k, v in scan_all(reader, keys.extent_key(tidp, lo), end, page=256):
                e = values.decode_extent(v)
                if e.last_offset >= at and e.max_timestamp >= timestamp:
                    return _extent_metadata(keys.decode_suffix(k), e)
            raise OutOfRange(f"no extent of partition {tidp} has a timestamp >= {timestamp}")

    async def get_first_offset_for_bytes(self, tidp: TopicIdPartition, nbytes: int) -> int:
        """The smallest offset ``o`` (the start offset or an extent base) such that the extents
        from ``o`` to the end hold at most ``nbytes`` bytes; the next offset if even the last
        extent is larger. For size-based retention: truncate to ``o``."""
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            start, end = keys.extents_range(tidp)
            total = 0
            answer = m.next_offset
            hi = end
            while True:
                rows = await reader.scan(start, hi, limit=256, reverse=True)
                for k, v in rows:
                    e = values.decode_extent(v)
                    total += e.len
                    if total > nbytes:
                        return answer
                    answer = max(keys.decode_suffix(k), m.start_offset)
                if len(rows) < 256:
                    return answer
                hi = rows[-1][0]

    async def get_term_for_offset(self, tidp: TopicIdPartition, offset: int) -> int:
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            if not m.start_offset <= offset < m.next_offset:
                raise OutOfRange(f"offset {offset} is outside [{m.start_offset}, "
                                 f"{m.next_offset}) of partition {tidp}")
            for term, start in reversed(await s.terms(tidp)):
                if start <= offset:
                    return term
            raise OutOfRange(f"no term of partition {tidp} starts at or before {offset}")

    async def get_end_offset_for_term(self, tidp: TopicIdPartition, term: int) -> int:
        """The offset after the last one of ``term`` (the next term's start, or the next
        offset for the latest term)."""
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            terms = await s.terms(tidp)
            if not terms or term < terms[0][0]:
                raise OutOfRange(f"term {term} is before the first known term of partition "
                                 f"{tidp}")
            for t, start in terms:
                if t > term:
                    return start
            return m.next_offset

    async def get_compaction_info(self, tidp: TopicIdPartition,
                                  tombstone_removal_upper_bound: int = -1) -> CompactionInfo:
        """Compaction state; tombstone ranges cleaned at or before the bound (ms) are listed as
        removable."""
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            cs = await s.compaction(tidp)
            return CompactionInfo(
                start_offset=m.start_offset, next_offset=m.next_offset,
                compaction_epoch=m.compaction_epoch,
                cleaned_ranges=[OffsetRange(base=b, last=e) for b, e in cs.cleaned_ranges],
                cleaned_ranges_with_tombstones=[
                    TombstoneRangeInfo(base=t.base, last=t.last, cleaned_at=t.cleaned_at)
                    for t in cs.cleaned_ranges_with_tombstones],
                dirty_ranges=[OffsetRange(base=b, last=e) for b, e in intervals.complement(
                    cs.cleaned_ranges, m.start_offset, m.next_offset - 1)],
                removable_tombstone_ranges=[
                    OffsetRange(base=t.base, last=t.last)
                    for t in cs.cleaned_ranges_with_tombstones
                    if t.cleaned_at <= tombstone_removal_upper_bound])

    async def get_compaction_infos(self, tidps: Iterable[TopicIdPartition],
                                   tombstone_removal_upper_bound: int = -1
                                   ) -> dict[TopicIdPartition, CompactionInfo]:
        return {t: await self.get_compaction_info(t, tombstone_removal_upper_bound)
                for t in tidps}

    async def get_extents(self, tidp: TopicIdPartition, min_offset: int = 0,
                          max_offset: int | None = None, *, limit: int = 1000,
                          reverse: bool = False) -> ExtentList:
        """Extents overlapping ``[min_offset, max_offset]``, forwards (or backwards from
        ``max_offset``), at most ``limit`` of them."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit: {limit} is not within 1..{MAX_LIST_LIMIT}")
        async with self.store.snapshot() as reader:
            s = StagedRows(reader)
            m = await self._metadata(s, tidp)
            lo = max(min_offset, m.start_offset)
            hi = m.next_offset - 1 if max_offset is None else min(max_offset, m.next_offset - 1)
            if hi < lo:
                return ExtentList(extents=[], more=False)
            first = await s.extent_at_or_below(tidp, lo)
            lo_key = keys.extent_key(tidp, first[0] if first is not None else lo)
            hi_key = keys.extent_key(tidp, hi + 1)
            rows = await reader.scan(lo_key, hi_key, limit=limit + 1, reverse=reverse)
            out = [_extent_metadata(keys.decode_suffix(k), values.decode_extent(v))
                   for k, v in rows]
            out = [e for e in out if e.last_offset >= lo]
            more = len(out) > limit
            return ExtentList(extents=out[:limit], more=more)

    async def get_object(self, oid: uuid.UUID) -> ObjectInfo | None:
        async with self.store.snapshot() as reader:
            obj = await StagedRows(reader).object(oid)
            return None if obj is None else _object_info(oid, obj)

    async def list_objects(self, start_after: uuid.UUID | None = None, limit: int = 1000
                           ) -> list[ObjectInfo]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit: {limit} is not within 1..{MAX_LIST_LIMIT}")
        start, end = keys.objects_range()
        if start_after is not None:
            start = keys.object_key(start_after) + b"\x00"
        async with self.store.snapshot() as reader:
            rows = await reader.scan(start, end, limit=limit)
        return [_object_info(keys.decode_object_key(k), values.decode_object(v))
                for k, v in rows]
