"""``L1Metastore``: the object catalogue of tiered partitions (Redpanda's cloud-topics L1
metastore), on the rows of one metastore domain.

It records which bucket objects hold which offset ranges ("extents") of which partitions, each
partition's offsets, size, term starts and compaction state, and per object how many of its data
bytes are still referenced — so the object GC (:mod:`cachedaemon.metastore.l1.gc`) knows when an
object is all dead and may be deleted.

Every write is checked twice, as Redpanda's ``state_update.cc`` does: first against the request
alone (:mod:`~cachedaemon.metastore.l1.validate`, no lock, no read), then against one consistent
snapshot, from which it builds its rows (:class:`StagedRows`); a rejected request changes
nothing. The rules are listed in ``docs/l1-format.md``. The lock order is domain → topic →
partition → object (:mod:`locks`): the partition locks keep a partition's rows still while the
update is computed; object locks are taken last, in one sorted call. An operation that discovers
the objects it touches only by reading (truncation, replacement, topic removal) computes twice:
once to learn the objects, then again under their locks from a fresh snapshot, and applies that.
Queries take no locks. The point queries (``get_first_ge``, ``get_offsets``, ``get_partition``,
``get_size``) are answered from the :class:`~cachedaemon.metastore.l1.cache.RowCache` when it
holds the rows they need — no snapshot, no wait, the database's current state — and otherwise
read one snapshot, as every other query does, and offer what they read to the cache.

Errors: :class:`MissingPartition` (404), :class:`InvalidRequest` with the reason (400),
:class:`OutOfRange` (416); an inconsistency of the stored catalogue (removed bytes above an
object's total, an extent of a preregistered or missing object) is
:class:`~cachedaemon.errors.Corruption` (500), counted and logged by :mod:`accounting`, never
repaired. Failures of the row store pass through (translated to :class:`TransportError` at the
store adapter).

One instance per domain, on the shard that owns the domain; not thread-safe.
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from cachedaemon.clock import Clock, SystemClock
from cachedaemon.errors import Corruption
from cachedaemon.metastore.l1 import compaction, intervals, keys, validate, values
from cachedaemon.metastore.l1.accounting import corruption
from cachedaemon.metastore.l1.cache import RowCache
from cachedaemon.metastore.l1.errors import InvalidRequest, MissingPartition, OutOfRange
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.locks import LockManager
from cachedaemon.metastore.l1.state import StagedRows
from cachedaemon.metastore.l1.store import RowOp, RowReader, RowStore, scan_all
from cachedaemon.metastore.l1.types import (
    CompactionInfo,
    CompactionUpdate,
    ExtentList,
    ExtentLocation,
    ExtentMetadata,
    NewObject,
    ObjectInfo,
    OffsetRange,
    Offsets,
    TermStart,
    TombstoneRangeInfo,
)
from cachedaemon.metastore.l1.validate import Extent, Replacement
from cachedaemon.metastore.l1.values import (
    CompactionState,
    ExtentValue,
    ObjectEntry,
    PartitionMetadata,
)

T = TypeVar("T")

#: Most extents one listing returns.
MAX_LIST_LIMIT = 10000
#: The domain name an L1Metastore gets when none is given (tests, benchmarks).
DEFAULT_DOMAIN = "l1"
#: Memory for the row cache of point queries, per domain (``[metastore] l1_cache_bytes``).
DEFAULT_CACHE_BYTES = 128 * 1024 * 1024


def _extent_value(x: Extent) -> ExtentValue:
    return ExtentValue(x.last, x.spec.max_timestamp, x.spec.filepos, x.spec.len, x.oid)


def _extent_metadata(base: int, e: ExtentValue) -> ExtentMetadata:
    return ExtentMetadata(base_offset=base, last_offset=e.last_offset,
                          max_timestamp=e.max_timestamp, filepos=e.filepos, len=e.len, oid=e.oid)


class L1Metastore:
    """The L1 operations over one domain's rows (see the module docstring)."""

    def __init__(self, store: RowStore, *, clock: Clock | None = None,
                 locks: LockManager | None = None, domain: str = DEFAULT_DOMAIN,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.locks = locks or LockManager()
        #: The domain's name: it names the objects' bucket keys and labels corruption reports.
        self.domain = domain
        self.cache = RowCache(cache_bytes)
        self._object_prefix = f"l1/{domain}/objects/"

    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def staged(self, reader: RowReader) -> StagedRows:
        return StagedRows(reader, self.domain, self.cache if self.cache.capacity_bytes else None)

    def bucket_key(self, oid: uuid.UUID, entry: ObjectEntry | None = None) -> str:
        """Where object ``oid`` lives in the bucket (the shared legacy key for a row written
        before per-domain keys)."""
        if entry is not None and entry.legacy_key:
            return keys.legacy_object_bucket_key(oid)
        return keys.object_bucket_key(self.domain, oid)

    def _cache_now(self) -> RowCache | None:
        """The row cache, following the database the rows are in now; ``None`` when that
        database cannot be read without waiting or the cache is off."""
        db = self.store.database()
        if db is None or not self.cache.bind(db):
            return None
        return self.cache

    async def _apply(self, ops: list[RowOp]) -> None:
        # The cache mirrors every batch from the moment it follows the database: make it
        # follow before the first write, so rows written before any query are cached too.
        self._cache_now()
        await self.store.apply(ops)

    def _object_info(self, oid: uuid.UUID, o: ObjectEntry) -> ObjectInfo:
        return ObjectInfo(oid=oid, total_data_size=o.total_data_size,
                          removed_data_size=o.removed_data_size, footer_pos=o.footer_pos,
                          object_size=o.object_size, last_updated=o.last_updated,
                          is_preregistration=o.is_preregistration,
                          object_key=self.bucket_key(oid, o))

    async def _two_phase(self, compute: Callable[[StagedRows], Awaitable[tuple[T, set[uuid.UUID]]]]
                         ) -> T:
        """Compute once to learn the objects touched, then again under their locks; apply.
        REQUIRES: the caller holds the locks of every partition ``compute`` reads."""
        async with self.store.snapshot(for_write=True) as reader:
            _, oids = await compute(self.staged(reader))
        async with self.locks.objects(oids), self.store.snapshot(for_write=True) as reader:
            staged = self.staged(reader)
            result, again = await compute(staged)
            if not again <= oids:
                raise Corruption("L1: the objects of a locked partition changed under its lock")
            ops = staged.ops()
            if ops:
                await self._apply(ops)
        return result

    @staticmethod
    async def _preregistered(s: StagedRows, objects: Sequence[NewObject]
                             ) -> dict[uuid.UUID, ObjectEntry]:
        """The preregistration row of every new object; anything else is refused: an id never
        preregistered, one already added, one whose preregistration expired."""
        rows = {}
        for i, obj in enumerate(objects):
            row = await s.object(obj.oid)
            if row is None or not row.is_preregistration:
                why = ("preregister its id before uploading it" if row is None else
                       "its preregistration expired" if row.total_data_size == 0 else
                       "it was already added")
                raise InvalidRequest(f"objects[{i}].oid: object {obj.oid} is not pre-registered "
                                     f"({why})")
            rows[obj.oid] = row
        return rows

    # --- writes ------------------------------------------------------------------------------

    async def add_objects(self, objects: Sequence[NewObject], terms: Sequence[TermStart]
                          ) -> dict[TopicIdPartition, int]:
        """Register preregistered objects, their extents and term starts.

        Per partition the request's extents are contiguous and start at the partition's next
        offset (0 for a new partition); a partition whose extents do not is left alone (its
        bytes count as removed in their objects) and is returned with its real next offset —
        the *corrected next offsets* — so the writer can resume from there.
        """
        req = validate.add_request(objects, terms)
        async with (self.locks.partitions(req.parts),
                    self.locks.objects(o.oid for o in objects),
                    self.store.snapshot(for_write=True) as reader):
            s = self.staged(reader)
            prereg = await self._preregistered(s, objects)
            now = self.now_ms()
            corrected: dict[TopicIdPartition, int] = {}
            removed: dict[uuid.UUID, int] = defaultdict(int)
            for tidp in sorted(req.parts):
                exts = req.parts[tidp]
                m = await s.metadata(tidp)
                expected = 0 if m is None else m.next_offset
                if exts[0].base != expected:
                    corrected[tidp] = expected
                    for x in exts:
                        removed[x.oid] += x.len
                    continue
                await self._add_terms(s, tidp, req.terms[tidp])
                for x in exts:
                    s.put_extent(tidp, x.base, _extent_value(x))
                if m is None:
                    m = PartitionMetadata(0, 0, 0, 0, 0)
                s.put_metadata(tidp, PartitionMetadata(
                    m.start_offset, exts[-1].last + 1, m.compaction_epoch,
                    m.size + sum(x.len for x in exts), m.num_extents + len(exts)))
            for obj in objects:
                s.put_object(obj.oid, ObjectEntry(
                    sum(e.len for e in obj.extents), removed.get(obj.oid, 0), obj.footer_pos,
                    obj.object_size, now, False, prereg[obj.oid].legacy_key))
            await self._apply(s.ops())
        return corrected

    @staticmethod
    async def _add_terms(s: StagedRows, tidp: TopicIdPartition,
                         new_terms: list[tuple[int, int]]) -> None:
        """Stage the request's terms of an accepted partition: the first is at least its highest
        stored term and starts after that term's start; if it is that term, it goes on."""
        last = await s.last_term(tidp)
        if last is not None:
            term, start = new_terms[0]
            if term < last[0]:
                raise InvalidRequest(f"terms: partition {tidp}: term {term} is below its "
                                     f"highest term {last[0]} (which starts at {last[1]})")
            if start <= last[1]:
                raise InvalidRequest(f"terms: partition {tidp}: term {term} starts at {start}, "
                                     f"not after its highest term {last[0]}, which starts at "
                                     f"{last[1]}")
            if term == last[0]:
                new_terms = new_terms[1:]
        for term, start in new_terms:
            s.put_term(tidp, term, start)

    async def replace_objects(self, objects: Sequence[NewObject],
                              expected_epochs: Mapping[TopicIdPartition, int]
                              ) -> dict[TopicIdPartition, int]:
        """Replace runs of existing extents with new (preregistered) objects' extents, e.g.
        after re-packing. Per partition the new extents may form several disjoint runs; each
        covers exactly a run of existing extents (runs below the start offset are dropped, one
        straddling it is trimmed). Optimistic: each partition's compaction epoch must equal
        ``expected_epochs``; each success bumps it. Returns the new epochs."""
        return await self._replace(validate.replace_request(objects, expected_epochs))

    async def compact_objects(self, objects: Sequence[NewObject],
                              updates: Sequence[CompactionUpdate]
                              ) -> dict[TopicIdPartition, int]:
        """Replace extents with compacted objects (as :meth:`replace_objects`) and record each
        partition's compaction outcome; every partition with new extents needs an update and
        every update new extents."""
        return await self._replace(validate.compact_request(objects, updates))

    async def commit_compaction_metadata(self, updates: Sequence[CompactionUpdate]
                                         ) -> dict[TopicIdPartition, int]:
        """Record compaction outcomes without replacing extents (a job that installed its
        objects in earlier compact_objects calls); one epoch bump per partition."""
        return await self._replace(validate.commit_request(updates))

    async def _replace(self, req: Replacement) -> dict[TopicIdPartition, int]:
        new_oids = {o.oid for o in req.objects}

        async def compute(s: StagedRows) -> tuple[dict[TopicIdPartition, int], set[uuid.UUID]]:
            prereg = await self._preregistered(s, req.objects)
            now = self.now_ms()
            touched = set(new_oids)
            removed_old: dict[uuid.UUID, int] = defaultdict(int)
            removed_new: dict[uuid.UUID, int] = defaultdict(int)
            added = 0
            result: dict[TopicIdPartition, int] = {}
            for tidp in sorted(req.epochs):
                m = await s.metadata(tidp)
                if m is None:
                    raise MissingPartition(f"partition {tidp} is not in the L1 metastore")
                if m.compaction_epoch != req.epochs[tidp]:
                    raise InvalidRequest(
                        f"stale compaction epoch for partition {tidp}: expected "
                        f"{req.epochs[tidp]}, current {m.compaction_epoch}")
                size, count = m.size, m.num_extents
                for run in req.runs.get(tidp, []):
                    base, last = run[0].base, run[-1].last
                    if last < m.start_offset:  # wholly below the start: dropped
                        for x in run:
                            removed_new[x.oid] += x.len
                        continue
                    if last >= m.next_offset:
                        raise OutOfRange(f"partition {tidp}: replacement [{base}, {last}] runs "
                                         f"past its next offset {m.next_offset}")
                    lo = base
                    if base < m.start_offset:  # straddles the start: trimmed to what is left
                        first = await s.first_extent(tidp)
                        lo = first[0] if first is not None else m.start_offset
                    old = await s.extents(tidp, lo, last + 1)
                    if not old or old[0][0] != lo or old[-1][1].last_offset != last:
                        raise InvalidRequest(f"partition {tidp} has no extents spanning exactly "
                                             f"[{lo}, {last}] (the replacement must start and "
                                             f"end on extent boundaries)")
                    for b, e in old:
                        s.delete_extent(tidp, b)
                        removed_old[e.oid] += e.len
                        touched.add(e.oid)
                        size -= e.len
                        count -= 1
                    for x in run:
                        if x.last < m.start_offset:
                            removed_new[x.oid] += x.len
                            continue
                        s.put_extent(tidp, x.base, _extent_value(x))
                        size += x.len
                        count += 1
                        added += 1
                change = req.changes.get(tidp)
                if change is not None:
                    s.put_compaction(tidp, compaction.merge(tidp, m, await s.compaction(tidp),
                                                            change))
                result[tidp] = m.compaction_epoch + 1
                s.put_metadata(tidp, PartitionMetadata(m.start_offset, m.next_offset,
                                                       m.compaction_epoch + 1, size, count))
            if req.runs and not added:
                raise InvalidRequest("replacement extents all filtered out: every interval is "
                                     "below its partition's start offset")
            for obj in req.objects:
                s.put_object(obj.oid, ObjectEntry(
                    sum(e.len for e in obj.extents), removed_new.get(obj.oid, 0), obj.footer_pos,
                    obj.object_size, now, False, prereg[obj.oid].legacy_key))
            await s.remove_bytes(dict(removed_old), now)
            return result, touched

        async with self.locks.partitions(req.epochs):
            return await self._two_phase(compute)

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
            s.put_compaction(tidp, compaction.clip_to_start(await s.compaction(tidp),
                                                            start_offset))
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

    async def preregister_objects(self, count: int | None = None, *,
                                  oids: Iterable[uuid.UUID] | None = None) -> list[uuid.UUID]:
        """Reserve object ids before uploading: ``count`` fresh ones, or the caller's ``oids``
        (Redpanda's ``preregister_objects``). An id that exists in any form — preregistered,
        added, dead or expired — is refused. An id not added within the TTL is expired by the
        GC: rewritten as a zero-size object that can never be added, deleted after the
        deletion delay (with whatever was uploaded under its key)."""
        wanted = validate.preregister_request(count, oids)
        ids = [uuid.uuid4() for _ in range(wanted)] if isinstance(wanted, int) else wanted
        async with (self.locks.partitions(), self.locks.objects(ids),
                    self.store.snapshot(for_write=True) as reader):
            s = self.staged(reader)
            for i, oid in enumerate(ids):
                if await s.object(oid) is not None:
                    # (For fresh ids this is a uuid4 collision: never seen in practice.)
                    raise InvalidRequest(f"oids[{i}]: object {oid} already exists")
            now = self.now_ms()
            for oid in ids:
                s.put_object(oid, ObjectEntry(0, 0, 0, 0, now, True))
            await self._apply(s.ops())
        return ids

    async def expire_preregistrations(self, oids: Iterable[uuid.UUID], cutoff_ms: int
                                      ) -> list[uuid.UUID]:
        """Expire the preregistrations among ``oids`` still last updated at or before
        ``cutoff_ms``: each becomes an ordinary zero-size object stamped now, which the GC
        deletes (bucket object first) only after the deletion delay, and which can never be
        added. Returns the ids expired. (Redpanda's ``expire_preregistered_objects``.)"""
        wanted = sorted(set(oids))
        expired: list[uuid.UUID] = []
        async with (self.locks.partitions(), self.locks.objects(wanted),
                    self.store.snapshot(for_write=True) as reader):
            s = self.staged(reader)
            now = self.now_ms()
            for oid in wanted:
                o = await s.object(oid)
                if o is None or not o.is_preregistration or o.last_updated > cutoff_ms:
                    continue
                s.put_object(oid, ObjectEntry(0, 0, o.footer_pos, o.object_size, now, False,
                                              o.legacy_key))
                expired.append(oid)
            if expired:
                await self._apply(s.ops())
        return expired

    async def remove_objects(self, oids: Iterable[uuid.UUID]) -> int:
        """Delete the rows of objects that hold no live data (or are preregistrations).
        Unknown ids are ignored; a referenced object is :class:`InvalidRequest`. Returns the
        rows deleted. The bucket objects are the caller's (the GC deletes them first)."""
        wanted = sorted(set(oids))
        async with (self.locks.partitions(), self.locks.objects(wanted),
                    self.store.snapshot(for_write=True) as reader):
            s = self.staged(reader)
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
                await self._apply(s.ops())
        return n

    # --- queries -----------------------------------------------------------------------------

    @staticmethod
    async def _metadata(s: StagedRows, tidp: TopicIdPartition) -> PartitionMetadata:
        m = await s.metadata(tidp)
        if m is None:
            raise MissingPartition(f"partition {tidp} is not in the L1 metastore")
        return m

    async def get_partition(self, tidp: TopicIdPartition) -> PartitionMetadata:
        cache = self._cache_now()
        if cache is not None:
            p = cache.partition(tidp)
            if p is not None and p.meta is not None:
                cache.hits += 1
                return p.meta
            cache.misses += 1
        async with self.store.snapshot() as reader:
            m = await self._metadata(self.staged(reader), tidp)
            if cache is not None:
                cache.fill(reader, tidp, m)
            return m

    async def get_offsets(self, tidp: TopicIdPartition) -> Offsets:
        m = await self.get_partition(tidp)
        return Offsets(start_offset=m.start_offset, next_offset=m.next_offset)

    async def get_size(self, tidp: TopicIdPartition) -> int:
        """Bytes of the partition's extents (including the part of a straddling first extent
        below the start offset)."""
        return (await self.get_partition(tidp)).size

    def _location(self, tidp: TopicIdPartition, base: int, e: ExtentValue,
                  o: ObjectEntry | None) -> ExtentLocation:
        """The extent with its object's footer position, size and key (``o``: its object's row,
        read with it). An extent whose object is missing or still a preregistration is
        corruption."""
        if o is None or o.is_preregistration:
            what = "has no row" if o is None else "is still a preregistration"
            raise corruption(self.domain, f"extent [{base}, {e.last_offset}] of partition "
                                          f"{tidp} points at object {e.oid}, which {what}")
        return ExtentLocation(base_offset=base, last_offset=e.last_offset,
                              max_timestamp=e.max_timestamp, filepos=e.filepos, len=e.len,
                              oid=e.oid, footer_pos=o.footer_pos, object_size=o.object_size,
                              object_key=(keys.legacy_object_bucket_key(e.oid) if o.legacy_key
                                          else f"{self._object_prefix}{e.oid}"))

    async def _located(self, s: StagedRows, tidp: TopicIdPartition, base: int, e: ExtentValue
                       ) -> ExtentLocation:
        """:meth:`_location`, the object's row read from the same snapshot."""
        return self._location(tidp, base, e, await s.object(e.oid))

    @staticmethod
    def _past_end(tidp: TopicIdPartition, offset: int, m: PartitionMetadata) -> OutOfRange:
        return OutOfRange(f"offset {offset} is at or past the next offset {m.next_offset} of "
                          f"partition {tidp}")

    def _cached_first_ge(self, cache: RowCache, tidp: TopicIdPartition, offset: int
                         ) -> ExtentLocation | None:
        """:meth:`get_first_ge` from the cache alone (no waiting), or ``None`` if it does not
        hold every row the answer needs (or the answer is an error it does not report)."""
        p = cache.partition(tidp)
        if p is None or (m := p.meta) is None:
            return None
        if offset >= m.next_offset:
            raise self._past_end(tidp, offset, m)
        found = p.holding(offset if offset > m.start_offset else m.start_offset)
        if found is None:
            return None
        base, last, ts, filepos, length, oid_bytes = found
        o = cache.object(oid_bytes)
        if o is None or o[2]:
            return None  # no row, or a preregistration: the LSM path reports the corruption
        oid, key = _oid_and_key(oid_bytes, self._object_prefix, o[3])
        return ExtentLocation(base_offset=base, last_offset=last, max_timestamp=ts,
                              filepos=filepos, len=length, oid=oid, footer_pos=o[0],
                              object_size=o[1], object_key=key)

    async def get_first_ge(self, tidp: TopicIdPartition, offset: int) -> ExtentLocation:
        """The extent holding ``offset`` (or the first one, if ``offset`` is below the start),
        with its object's footer position and size."""
        cache = self._cache_now()
        if cache is not None:
            try:
                hit = self._cached_first_ge(cache, tidp, offset)
            except OutOfRange:
                cache.hits += 1
                raise
            if hit is not None:
                cache.hits += 1
                return hit
            cache.misses += 1
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
            m = await self._metadata(s, tidp)
            if offset >= m.next_offset:
                if cache is not None:
                    cache.fill(reader, tidp, m)
                raise self._past_end(tidp, offset, m)
            at = max(offset, m.start_offset)
            found = await s.extent_at_or_below(tidp, at)
            if found is None or found[1].last_offset < at:
                _, end = keys.extents_range(tidp)
                later = await reader.scan(keys.extent_key(tidp, at), end, limit=1)
                if not later:
                    raise OutOfRange(f"no extent of partition {tidp} at or after offset "
                                     f"{offset}")
                found = keys.decode_suffix(later[0][0]), values.decode_extent(later[0][1])
            base, e = found
            o = await s.object(e.oid)
            location = self._location(tidp, base, e, o)
            if cache is not None and o is not None:
                cache.fill(reader, tidp, m, found, (e.oid, o))
            return location

    async def get_first_ge_timestamp(self, tidp: TopicIdPartition, timestamp: int,
                                     min_offset: int = 0) -> ExtentLocation:
        """The first extent at or after ``min_offset`` whose max timestamp is ``>= timestamp``,
        with its object's footer position and size."""
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
            m = await self._metadata(s, tidp)
            at = max(min_offset, m.start_offset)
            first = await s.extent_at_or_below(tidp, at)
            lo = first[0] if first is not None else at
            _, end = keys.extents_range(tidp)
            async for k, v in scan_all(reader, keys.extent_key(tidp, lo), end, page=256):
                e = values.decode_extent(v)
                if e.last_offset >= at and e.max_timestamp >= timestamp:
                    return await self._located(s, tidp, keys.decode_suffix(k), e)
            raise OutOfRange(f"no extent of partition {tidp} has a timestamp >= {timestamp}")

    async def get_first_offset_for_bytes(self, tidp: TopicIdPartition, nbytes: int) -> int:
        """The smallest offset ``o`` (the start offset or an extent base) such that the extents
        from ``o`` to the end hold at most ``nbytes`` bytes; the next offset if even the last
        extent is larger. For size-based retention: truncate to ``o``."""
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
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
            s = self.staged(reader)
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
            s = self.staged(reader)
            m = await self._metadata(s, tidp)
            terms = await s.terms(tidp)
            if not terms or term < terms[0][0]:
                raise OutOfRange(f"term {term} is before the first known term of partition "
                                 f"{tidp}")
            for t, start in terms:
                if t > term:
                    return start
            return m.next_offset


    @staticmethod
    def _compaction_info(m: PartitionMetadata, cs: CompactionState,
                         tombstone_removal_upper_bound: int) -> CompactionInfo:
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

    async def get_compaction_info(self, tidp: TopicIdPartition,
                                  tombstone_removal_upper_bound: int = -1) -> CompactionInfo:
        """Compaction state; tombstone ranges cleaned at or before the bound (ms) are listed as
        removable."""
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
            m = await self._metadata(s, tidp)
            return self._compaction_info(m, await s.compaction(tidp),
                                         tombstone_removal_upper_bound)

    async def get_compaction_infos(self, tidps: Iterable[TopicIdPartition],
                                   tombstone_removal_upper_bound: int = -1
                                   ) -> dict[TopicIdPartition, CompactionInfo | None]:
        """:meth:`get_compaction_info` of many partitions from one snapshot; a partition not in
        the metastore maps to None."""
        out: dict[TopicIdPartition, CompactionInfo | None] = {}
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
            for tidp in tidps:
                m = await s.metadata(tidp)
                out[tidp] = None if m is None else self._compaction_info(
                    m, await s.compaction(tidp), tombstone_removal_upper_bound)
        return out

    async def get_extents(self, tidp: TopicIdPartition, min_offset: int = 0,
                          max_offset: int | None = None, *, limit: int = 1000,
                          reverse: bool = False) -> ExtentList:
        """Extents overlapping ``[min_offset, max_offset]``, forwards (or backwards from
        ``max_offset``), at most ``limit`` of them."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit: {limit} is not within 1..{MAX_LIST_LIMIT}")
        async with self.store.snapshot() as reader:
            s = self.staged(reader)
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
            obj = await self.staged(reader).object(oid)
            return None if obj is None else self._object_info(oid, obj)

    async def list_objects(self, start_after: uuid.UUID | None = None, limit: int = 1000
                           ) -> list[ObjectInfo]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit: {limit} is not within 1..{MAX_LIST_LIMIT}")
        start, end = keys.objects_range()
        if start_after is not None:
            start = keys.object_key(start_after) + b"\x00"
        async with self.store.snapshot() as reader:
            rows = await reader.scan(start, end, limit=limit)
        return [self._object_info(keys.decode_object_key(k), values.decode_object(v))
                for k, v in rows]


@functools.lru_cache(maxsize=8192)
def _oid_and_key(oid_bytes: bytes, object_prefix: str, legacy: bool) -> tuple[uuid.UUID, str]:
    """An object id's UUID and bucket key (memoized: a cached lookup's answer names one of the
    objects queried recently, and making the UUID and its text was a tenth of its cost)."""
    oid = uuid.UUID(bytes=oid_bytes)
    return oid, (keys.legacy_object_bucket_key(oid) if legacy else f"{object_prefix}{oid}")
