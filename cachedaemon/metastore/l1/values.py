"""Row values of the L1 metastore: five small records, each ``struct``-packed after a version byte.

Layouts (little-endian; ``docs/l1-format.md`` has the table)::

    metadata    u8 v=1 ‖ u64 start_offset ‖ u64 next_offset ‖ u64 compaction_epoch ‖ u64 size
                ‖ u64 num_extents
    extent      u8 v=1 ‖ u64 last_offset ‖ i64 max_timestamp ‖ u64 filepos ‖ u64 len ‖ 16B oid
    term start  u8 v=1 ‖ u64 start_offset
    compaction  u8 v=1 ‖ u32 n ‖ n × (u64 base ‖ u64 last)
                ‖ u32 m ‖ m × (u64 base ‖ u64 last ‖ i64 cleaned_at_ms)
    object      u8 v=2 ‖ u64 total_data_size ‖ u64 removed_data_size ‖ u64 footer_pos
                ‖ u64 object_size ‖ i64 last_updated_ms ‖ u8 is_preregistration

An object row's version also says where its object lives: version 2 at the domain's own key
(``l1/<domain>/objects/<oid>``), version 1 (rows written before per-domain keys) at the shared
legacy key ``l1/objects/<oid>`` (:attr:`ObjectEntry.legacy_key`; kept through every rewrite).

Any decoding problem (length, version, a flag out of range) raises :class:`Corruption`: rows are
never half-read. Records are frozen dataclasses; code builds new ones with ``replace``.
Pure; usable from any shard.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

from cachedaemon.errors import Corruption

VERSION = 1
#: Object rows: 2 = the object lives at its domain's key; 1 = at the shared legacy key.
OBJECT_VERSION = 2
LEGACY_OBJECT_VERSION = 1

_METADATA = struct.Struct("<BQQQQQ")
_EXTENT = struct.Struct("<BQqQQ16s")
_TERM = struct.Struct("<BQ")
_COUNT = struct.Struct("<I")
_RANGE = struct.Struct("<QQ")
_TOMBSTONE_RANGE = struct.Struct("<QQq")
_OBJECT = struct.Struct("<BQQQQqB")


@dataclass(frozen=True, slots=True)
class PartitionMetadata:
    start_offset: int
    next_offset: int
    compaction_epoch: int
    size: int
    num_extents: int


@dataclass(frozen=True, slots=True)
class ExtentValue:
    last_offset: int
    max_timestamp: int
    filepos: int
    len: int
    oid: uuid.UUID


@dataclass(frozen=True, slots=True)
class TombstoneRange:
    base: int
    last: int
    cleaned_at: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class CompactionState:
    cleaned_ranges: tuple[tuple[int, int], ...] = ()
    cleaned_ranges_with_tombstones: tuple[TombstoneRange, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    total_data_size: int
    removed_data_size: int
    footer_pos: int
    object_size: int
    last_updated: int  # ms since the epoch
    is_preregistration: bool
    #: The object lives at the shared legacy key (a row written before per-domain keys).
    legacy_key: bool = False

    @property
    def is_dead(self) -> bool:
        """Every byte of data it held has been removed (so the object may be deleted).
        A row whose removed size is above its total is corrupt, not dead."""
        return not self.is_preregistration and self.removed_data_size == self.total_data_size

    @property
    def over_removed(self) -> bool:
        """More bytes removed than it ever held: an accounting bug (reported, never clamped)."""
        return self.removed_data_size > self.total_data_size


def _check_version(data: bytes, what: str, versions: tuple[int, ...] = (VERSION,)) -> None:
    if not data:
        raise Corruption(f"L1 {what} value is empty")
    if data[0] not in versions:
        raise Corruption(f"L1 {what} value has unknown version {data[0]}")


def _unpack(s: struct.Struct, data: bytes, what: str,
            versions: tuple[int, ...] = (VERSION,)) -> tuple[object, ...]:
    _check_version(data, what, versions)
    if len(data) != s.size:
        raise Corruption(f"L1 {what} value is {len(data)} bytes, expected {s.size}")
    return s.unpack(data)


def encode_metadata(m: PartitionMetadata) -> bytes:
    return _METADATA.pack(VERSION, m.start_offset, m.next_offset, m.compaction_epoch, m.size,
                          m.num_extents)


def decode_metadata(data: bytes) -> PartitionMetadata:
    _, start, nxt, epoch, size, count = _unpack(_METADATA, data, "metadata")
    return PartitionMetadata(start, nxt, epoch, size, count)  # type: ignore[arg-type]


def encode_extent(e: ExtentValue) -> bytes:
    return _EXTENT.pack(VERSION, e.last_offset, e.max_timestamp, e.filepos, e.len, e.oid.bytes)


def decode_extent(data: bytes) -> ExtentValue:
    _, last, ts, pos, length, oid = _unpack(_EXTENT, data, "extent")
    return ExtentValue(last, ts, pos, length, uuid.UUID(bytes=oid))  # type: ignore[arg-type]


def encode_term(start_offset: int) -> bytes:
    return _TERM.pack(VERSION, start_offset)


def decode_term(data: bytes) -> int:
    _, start = _unpack(_TERM, data, "term start")
    return start  # type: ignore[return-value]


def encode_compaction(c: CompactionState) -> bytes:
    parts = [bytes([VERSION]), _COUNT.pack(len(c.cleaned_ranges))]
    parts += [_RANGE.pack(b, e) for b, e in c.cleaned_ranges]
    parts.append(_COUNT.pack(len(c.cleaned_ranges_with_tombstones)))
    parts += [_TOMBSTONE_RANGE.pack(t.base, t.last, t.cleaned_at)
              for t in c.cleaned_ranges_with_tombstones]
    return b"".join(parts)


def decode_compaction(data: bytes) -> CompactionState:
    _check_version(data, "compaction")
    try:
        pos = 1
        (n,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        ranges = []
        for _ in range(n):
            ranges.append(_RANGE.unpack_from(data, pos))
            pos += _RANGE.size
        (m,) = _COUNT.unpack_from(data, pos)
        pos += _COUNT.size
        tombs = []
        for _ in range(m):
            tombs.append(TombstoneRange(*_TOMBSTONE_RANGE.unpack_from(data, pos)))
            pos += _TOMBSTONE_RANGE.size
    except struct.error as exc:
        raise Corruption("L1 compaction value truncated") from exc
    if pos != len(data):
        raise Corruption("L1 compaction value has trailing bytes")
    return CompactionState(tuple((int(b), int(e)) for b, e in ranges), tuple(tombs))


def encode_object(o: ObjectEntry) -> bytes:
    version = LEGACY_OBJECT_VERSION if o.legacy_key else OBJECT_VERSION
    return _OBJECT.pack(version, o.total_data_size, o.removed_data_size, o.footer_pos,
                        o.object_size, o.last_updated, 1 if o.is_preregistration else 0)


def decode_object(data: bytes) -> ObjectEntry:
    version, total, removed, footer, size, updated, prereg = _unpack(
        _OBJECT, data, "object", (OBJECT_VERSION, LEGACY_OBJECT_VERSION))
    if prereg not in (0, 1):
        raise Corruption(f"L1 object value has preregistration flag {prereg}")
    return ObjectEntry(total, removed, footer, size, updated, bool(prereg),  # type: ignore[arg-type]
                       version == LEGACY_OBJECT_VERSION)
