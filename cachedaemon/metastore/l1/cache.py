"""RowCache: the L1 rows that point queries read, in memory, always equal to the database's.

``get_first_ge``, ``get_offsets``, ``get_partition`` and ``get_size`` are the reader's hot path
(one call per fetch of a tiered partition). Answered from the LSM each costs a snapshot, a point
get, a reverse seek through every level and another point get; answered from here it is a dict
lookup, a ``bisect`` and a second dict lookup, with no snapshot, no lock and no wait.

**What is held** (for one L1 domain, on the shard that owns it):

- per partition: its metadata row, decoded, any subset of its extent rows — the bases in a
  sorted ``array('Q')``, the 49-byte values side by side in a ``bytearray`` — and, once a read
  found it, its highest term row (or that it has none);
- per object: its object row as stored (42 bytes), keyed by the 16 bytes of its id.

**The rule: every row held is the database's current row for that key.** It is kept by:

1. *write-through*: the cache is a write listener of its database
   (:meth:`~cachedaemon.lsm.db.Database.add_write_listener`), told every applied batch in the
   synchronous step that makes it visible. A put replaces or inserts the row, a delete removes
   it; a row whose value would not decode drops what the cache holds of that partition or
   object (the LSM path then reports the corruption). A read-only refresh that changed
   anything empties the cache (it does not say which rows changed).
2. *fills*: a query that missed reads its rows from a snapshot at seqno ``S`` and offers them
   (:meth:`RowCache.fill`); they are taken only if the database is still the one the cache
   follows and nothing was applied since (``max_applied_seqno == S``), checked in the same
   synchronous step that inserts them.
3. *binding*: the cache follows one database object, weakly; when the domain's database is
   another one (reopened after a failure, a fenced writer stepped down to a replica) the cache
   is emptied and follows the new one.

**Why an answer from the cache is consistent**: a query served here runs without awaiting, so
no batch is applied while it reads; every row it reads is the current row; so its answer is
exactly the one a read at the database's current seqno gives — one consistent state, the
newest. A query that misses anything falls back to the LSM path as a whole (one snapshot).

**Reads at a snapshot** (:meth:`RowCache.current_at`): while nothing has been applied since a
snapshot was taken (``max_applied_seqno`` still its seqno), the cached rows are exactly that
snapshot's rows, so an operation reading its snapshot (a write computing its update, a query
that missed) may take a row from the cache instead, checked at the moment of each read; once
a batch lands it reads the snapshot itself. Either way every row it reads is the snapshot's.

**The highest term** of a partition (what ``add_objects`` checks its terms against) is cached
once a read found it: a term put at or above it replaces it, a put below leaves it, a delete of
it forgets it (the next one is unknown).

**The extent lookup** takes the cached extent ``[b, last]`` with the greatest cached base
``b <= offset`` and answers only if ``last >= offset``: a partition's extents never overlap
(``docs/l1-format.md``, Invariants), so ``b`` is then the greatest base ``<= offset`` in the
database as well — the extent the LSM's reverse seek finds. Otherwise the extent holding
``offset`` is not cached: a miss.

**Memory**: at most ``capacity_bytes`` (approximately: :data:`PARTITION_CHARGE` per
partition, :data:`EXTENT_CHARGE` per extent, :data:`OBJECT_CHARGE` per object); partitions and
objects share one least-recently-used order. ``capacity_bytes = 0`` turns the cache off (every
query reads the LSM, as before).

One instance per :class:`~cachedaemon.metastore.l1.metastore.L1Metastore`, on the domain's
owner shard; not thread-safe.
"""

from __future__ import annotations

import bisect
import uuid
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from cachedaemon.errors import Corruption
from cachedaemon.lsm.dbformat import KIND_VALUE
from cachedaemon.metastore.l1 import keys, values
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.values import ExtentValue, ObjectEntry, PartitionMetadata

if TYPE_CHECKING:
    from cachedaemon.lsm.db import Database
    from cachedaemon.metastore.l1.store import RowReader

#: Approximate bytes of memory per cached partition, extent and object.
PARTITION_CHARGE = 512
EXTENT_CHARGE = 64
OBJECT_CHARGE = 256

_EXTENT_LEN = values._EXTENT.size
_unpack_extent = values._EXTENT.unpack_from
_unpack_object = values._OBJECT.unpack

#: A cached extent: ``(base, last_offset, max_timestamp, filepos, len, oid bytes)``.
ExtentFields = tuple[int, int, int, int, int, bytes]
#: A cached object: ``(footer_pos, object_size, is_preregistration, legacy_key)``.
ObjectFields = tuple[int, int, bool, bool]
_METADATA = keys.METADATA
_EXTENT = keys.EXTENT
_OBJECT = keys.OBJECT
_TERM = keys.TERM_START
_TIDP_END = 2 + 40  # type ‖ topic ‖ partition


class CachedPartition:
    """A partition's metadata row (``None``: not cached), a subset of its extent rows and, if
    ``terms_known``, its highest term row ``(term, start offset)`` (``None``: it has none)."""

    __slots__ = ("bases", "last_term", "meta", "terms_known", "values")

    def __init__(self) -> None:
        self.meta: PartitionMetadata | None = None
        self.bases: array[int] = array("Q")
        self.values = bytearray()
        self.terms_known = False
        self.last_term: tuple[int, int] | None = None

    def holding(self, offset: int) -> ExtentFields | None:
        """The cached extent ``[b, last]`` with ``b <= offset <= last``, if there is one (then
        it is the partition's extent holding ``offset``: see the module docstring), as
        ``(b, last, max_timestamp, filepos, len, oid bytes)``."""
        bases = self.bases
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0:
            return None
        # Checked when it was cached: version 1, 49 bytes.
        _, last, ts, pos, length, oid = _unpack_extent(self.values, i * _EXTENT_LEN)
        if last < offset:
            return None
        return bases[i], last, ts, pos, length, oid

    def put_extent(self, base: int, raw: bytes) -> int:
        """Insert or replace the row at ``base``; returns the change in the extent count."""
        bases = self.bases
        if not bases or base > bases[-1]:
            bases.append(base)
            self.values += raw
            return 1
        i = bisect.bisect_left(bases, base)
        at = i * _EXTENT_LEN
        if bases[i] == base:
            self.values[at : at + _EXTENT_LEN] = raw
            return 0
        bases.insert(i, base)
        self.values[at:at] = raw
        return 1

    def delete_extent(self, base: int) -> int:
        bases = self.bases
        i = bisect.bisect_left(bases, base)
        if i == len(bases) or bases[i] != base:
            return 0
        del bases[i]
        at = i * _EXTENT_LEN
        del self.values[at : at + _EXTENT_LEN]
        return -1


class RowCache:
    """See the module docstring."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, capacity_bytes)
        # Partitions (keyed by the 40 hex bytes of topic ‖ partition) and objects (keyed by the
        # 16 bytes of the id) in one least-recently-used order.
        self._lru: OrderedDict[bytes, CachedPartition | bytes] = OrderedDict()
        self._usage = 0
        self._db: weakref.ref[Database] | None = None
        self._listener: Callable[[list[tuple[int, bytes, bytes]] | None], None] | None = None
        self.hits = 0
        self.misses = 0
        self.fills = 0
        self.evictions = 0

    # --- binding ---------------------------------------------------------------------------

    def bind(self, db: Database) -> bool:
        """Follow ``db`` (emptying the cache if it followed another one). ``False`` when the
        cache is off."""
        if not self.capacity_bytes:
            return False
        current = self._db
        if current is not None and current() is db:
            return True
        if current is not None:
            old = current()
            if old is not None and self._listener is not None:
                old.remove_write_listener(self._listener)
        self.clear()
        self._db = weakref.ref(db)
        self._listener = _listener_of(self)
        db.add_write_listener(self._listener)
        return True

    def follows(self, db: Database) -> bool:
        current = self._db
        return current is not None and current() is db

    def clear(self) -> None:
        self._lru.clear()
        self._usage = 0

    def resize(self, capacity_bytes: int) -> None:
        """A new capacity (0: off), evicting down to it at once."""
        self.capacity_bytes = max(0, capacity_bytes)
        self._shrink()

    def statistics(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "fills": self.fills,
                "evictions": self.evictions, "entries": len(self._lru),
                "usage_bytes": self._usage, "capacity_bytes": self.capacity_bytes}

    # --- lookups (no waiting) --------------------------------------------------------------

    def partition(self, tidp: TopicIdPartition) -> CachedPartition | None:
        key = keys.tidp_hex(tidp)
        p = self._lru.get(key)
        if p is None:
            return None
        self._lru.move_to_end(key)
        return p  # type: ignore[return-value]

    def object(self, oid_bytes: bytes) -> ObjectFields | None:
        """The object row of the id whose 16 bytes are ``oid_bytes``, if cached, as
        ``(footer_pos, object_size, is_preregistration, legacy_key)``."""
        raw = self._lru.get(oid_bytes)
        if raw is None:
            return None
        self._lru.move_to_end(oid_bytes)
        # Checked when it was cached (it decoded).
        version, _, _, footer, size, _, prereg = _unpack_object(raw)  # type: ignore[arg-type]
        return footer, size, prereg == 1, version == values.LEGACY_OBJECT_VERSION

    # --- reads at a snapshot ----------------------------------------------------------------

    def current_at(self, reader: RowReader) -> bool:
        """The cached rows are ``reader``'s snapshot's rows right now (nothing was applied
        since it was taken): a read through ``reader`` may take a cached row instead."""
        db = reader.database
        return reader.seqno == db.max_applied_seqno and self.follows(db)

    def metadata_row(self, tidp: TopicIdPartition) -> PartitionMetadata | None:
        """The cached metadata row (``None``: not cached; the caller reads the database)."""
        p = self._lru.get(keys.tidp_hex(tidp))
        return None if p is None else p.meta  # type: ignore[union-attr]

    def object_row(self, oid: uuid.UUID) -> ObjectEntry | None:
        raw = self._lru.get(oid.bytes)
        return None if raw is None else values.decode_object(raw)  # type: ignore[arg-type]

    def last_term(self, tidp: TopicIdPartition) -> tuple[bool, tuple[int, int] | None]:
        """``(known, (term, start) or None)`` for the partition's highest term row."""
        p = self._lru.get(keys.tidp_hex(tidp))
        if p is None or not p.terms_known:  # type: ignore[union-attr]
            return False, None
        return True, p.last_term  # type: ignore[union-attr]

    def fill_last_term(self, reader: RowReader, tidp: TopicIdPartition,
                       last: tuple[int, int] | None) -> bool:
        """Offer the highest term row a read found (``None``: there is none)."""
        if not self.current_at(reader):
            return False
        p = self._partition_for(keys.tidp_hex(tidp))
        p.terms_known = True
        p.last_term = last
        self.fills += 1
        self._shrink()
        return True

    # --- fills -------------------------------------------------------------------------------

    def fill(self, reader: RowReader, tidp: TopicIdPartition,
             meta: PartitionMetadata | None = None,
             extent: tuple[int, ExtentValue] | None = None,
             obj: tuple[uuid.UUID, ObjectEntry] | None = None) -> bool:
        """Offer rows a query read through ``reader``; taken only if they are still current
        (see the module docstring). Returns whether they were taken."""
        db = reader.database
        if not self.follows(db) or reader.seqno != db.max_applied_seqno:
            return False
        pkey = keys.tidp_hex(tidp)
        if meta is not None or extent is not None:
            p = self._partition_for(pkey)
            if meta is not None:
                p.meta = meta
            if extent is not None:
                added = p.put_extent(extent[0], values.encode_extent(extent[1]))
                self._usage += EXTENT_CHARGE * added
        if obj is not None:
            self._put_object(obj[0].bytes, values.encode_object(obj[1]))
        self.fills += 1
        self._shrink()
        return True

    # --- write-through -----------------------------------------------------------------------

    def _partition_for(self, pkey: bytes) -> CachedPartition:
        p = self._lru.get(pkey)
        if p is None:
            p = self._lru[pkey] = CachedPartition()
            self._usage += PARTITION_CHARGE
        else:
            self._lru.move_to_end(pkey)
        return p  # type: ignore[return-value]

    def _drop(self, key: bytes) -> None:
        entry = self._lru.pop(key, None)
        if entry is not None:
            self._usage -= _charge(entry)

    def _put_object(self, okey: bytes, raw: bytes) -> None:
        if self._lru.get(okey) is None:
            self._usage += OBJECT_CHARGE
        self._lru[okey] = raw
        self._lru.move_to_end(okey)

    def on_apply(self, ops: list[tuple[int, bytes, bytes]] | None) -> None:
        """The write listener: mirror one applied batch (``None``: empty the cache)."""
        if ops is None:
            self.clear()
            return
        for kind, key, value in ops:
            kind_of = key[:2]
            if kind_of == _EXTENT:
                self._on_extent(kind, key, value)
            elif kind_of == _METADATA:
                self._on_metadata(kind, key, value)
            elif kind_of == _OBJECT:
                self._on_object(kind, key, value)
            elif kind_of == _TERM:
                self._on_term(kind, key, value)
        self._shrink()

    def _on_term(self, kind: int, key: bytes, value: bytes) -> None:
        p = self._lru.get(key[2:_TIDP_END])
        if p is None or not p.terms_known:  # type: ignore[union-attr]
            return
        assert isinstance(p, CachedPartition)
        try:
            if len(key) != _TIDP_END + 16:
                raise ValueError(key)
            term = int(key[_TIDP_END:], 16)
            last = p.last_term
            if kind == KIND_VALUE:
                if last is None or term >= last[0]:
                    p.last_term = (term, values.decode_term(value))
            elif last is not None and term == last[0]:
                p.terms_known = False  # the highest went: the next one is not known here
        except (ValueError, Corruption):
            p.terms_known = False

    def _on_extent(self, kind: int, key: bytes, value: bytes) -> None:
        pkey = key[2:_TIDP_END]
        try:
            base = int(key[_TIDP_END:], 16)
            if len(key) != _TIDP_END + 16 or base < 0:
                raise ValueError(key)
            if kind == KIND_VALUE:
                if len(value) != _EXTENT_LEN or value[0] != values.VERSION:
                    raise ValueError(value)
                added = self._partition_for(pkey).put_extent(base, value)
                self._usage += EXTENT_CHARGE * added
            else:
                p = self._lru.get(pkey)
                if p is not None:
                    self._usage += EXTENT_CHARGE * p.delete_extent(base)  # type: ignore[union-attr]
        except (ValueError, OverflowError):
            self._drop(pkey)  # not a row the cache can mirror: leave it to the LSM path

    def _on_metadata(self, kind: int, key: bytes, value: bytes) -> None:
        pkey = key[2:]
        if kind != KIND_VALUE or len(pkey) != 40:
            self._drop(pkey)
            return
        try:
            meta = values.decode_metadata(value)
        except Corruption:
            self._drop(pkey)
            return
        self._partition_for(pkey).meta = meta

    def _on_object(self, kind: int, key: bytes, value: bytes) -> None:
        try:
            okey = bytes.fromhex(key[2:].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return  # no object id: no cached row can be this key
        if kind != KIND_VALUE or len(okey) != 16 or not _object_decodes(value):
            self._drop(okey)
            return
        self._put_object(okey, value)

    def _shrink(self) -> None:
        lru = self._lru
        while self._usage > self.capacity_bytes and lru:
            _, entry = lru.popitem(last=False)
            self._usage -= _charge(entry)
            self.evictions += 1


def _object_decodes(value: bytes) -> bool:
    """``values.decode_object`` would accept ``value`` (without building the entry)."""
    if len(value) != values._OBJECT.size:
        return False
    version, *_, prereg = _unpack_object(value)
    return version in _OBJECT_VERSIONS and prereg in (0, 1)


_OBJECT_VERSIONS = (values.OBJECT_VERSION, values.LEGACY_OBJECT_VERSION)


def _charge(entry: CachedPartition | bytes) -> int:
    if isinstance(entry, CachedPartition):
        return PARTITION_CHARGE + EXTENT_CHARGE * len(entry.bases)
    return OBJECT_CHARGE


def _listener_of(cache: RowCache) -> Callable[[list[tuple[int, bytes, bytes]] | None], None]:
    """A listener that holds the cache weakly (the database must not keep a dropped cache)."""
    ref = weakref.ref(cache)

    def on_apply(ops: list[tuple[int, bytes, bytes]] | None) -> None:
        cache = ref()
        if cache is not None:
            cache.on_apply(ops)

    return on_apply


__all__ = ["CachedPartition", "ExtentFields", "ObjectFields", "RowCache"]
