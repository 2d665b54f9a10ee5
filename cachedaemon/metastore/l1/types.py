"""Requests and answers of the L1 metastore, as msgspec Structs.

The same Structs are the Python API (:class:`~cachedaemon.metastore.l1.metastore.L1Metastore`),
the HTTP JSON bodies (``docs/l1-api.md``; decoded with ``forbid_unknown_fields`` so a typo is a
400 naming the field) and the client's return values. Field constraints that need no context
(non-negative numbers, partition range) are declared here; rules that need the partition's state
(contiguity, epochs, offsets) are checked by the operations.

Immutable values; usable from any shard.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec

NonNegative = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
PartitionId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Timestamp = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ExtentSpec(_Struct):
    """One partition's contiguous offset range inside an object."""

    topic_id: uuid.UUID
    partition: PartitionId
    base_offset: NonNegative
    last_offset: NonNegative
    filepos: NonNegative
    len: NonNegative
    max_timestamp: Timestamp = -1


class NewObject(_Struct):
    """An object uploaded to the bucket and the extents it holds."""

    oid: uuid.UUID
    footer_pos: NonNegative
    object_size: NonNegative
    extents: list[ExtentSpec]


class TermStart(_Struct):
    topic_id: uuid.UUID
    partition: PartitionId
    term: NonNegative
    start_offset: NonNegative


class OffsetRange(_Struct):
    base: NonNegative
    last: NonNegative


class PartitionEpoch(_Struct):
    topic_id: uuid.UUID
    partition: PartitionId
    compaction_epoch: NonNegative


class PartitionOffset(_Struct):
    topic_id: uuid.UUID
    partition: PartitionId
    next_offset: NonNegative


class CleanedRange(_Struct):
    """An offset range whose keys are now deduplicated from the start of the log; with
    ``has_tombstones`` it still holds tombstones (removable once ``cleaned_at`` is old enough)."""

    base: NonNegative
    last: NonNegative
    has_tombstones: bool = False


class CompactionUpdate(_Struct):
    """The outcome of compacting one partition: the ranges now clean (``cleaned_ranges``; the
    older one-range form ``cleaned_range`` + ``has_tombstones`` is still accepted and joins
    them), when they were cleaned (``cleaned_at``, ms), and tombstone ranges whose tombstones
    have now been removed. Optimistic on ``expected_epoch``."""

    topic_id: uuid.UUID
    partition: PartitionId
    expected_epoch: NonNegative
    cleaned_ranges: list[CleanedRange] = []
    cleaned_range: OffsetRange | None = None
    has_tombstones: bool = False
    cleaned_at: Timestamp = 0
    removed_tombstone_ranges: list[OffsetRange] = []


# --- request bodies (HTTP) -------------------------------------------------------------------


class AddObjectsRequest(_Struct):
    objects: list[NewObject]
    #: Required: the term of every partition's first added extent (and any later term starts).
    terms: list[TermStart]


class AddObjectsResponse(_Struct):
    corrected_next_offsets: list[PartitionOffset]


class ReplaceObjectsRequest(_Struct):
    objects: list[NewObject]
    expected_epochs: list[PartitionEpoch]


class CompactObjectsRequest(_Struct):
    updates: list[CompactionUpdate]
    objects: list[NewObject] = []


class CommitCompactionRequest(_Struct):
    updates: list[CompactionUpdate]


class EpochsResponse(_Struct):
    compaction_epochs: list[PartitionEpoch]


class SetStartOffsetRequest(_Struct):
    topic_id: uuid.UUID
    partition: PartitionId
    start_offset: NonNegative


class RemoveTopicsRequest(_Struct):
    topic_ids: list[uuid.UUID]


#: Most object ids one preregistration (or removal) names.
MAX_OBJECT_IDS = 10000


ObjectIdList = Annotated[list[uuid.UUID], msgspec.Meta(min_length=1, max_length=MAX_OBJECT_IDS)]


class PreregisterRequest(_Struct):
    """Exactly one of: ``count`` fresh ids chosen by the daemon, or the caller's ``oids``."""

    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_OBJECT_IDS)] | None = None
    oids: ObjectIdList | None = None


class ObjectIds(_Struct):
    oids: list[uuid.UUID]


# --- answers ---------------------------------------------------------------------------------


class Offsets(_Struct):
    start_offset: int
    next_offset: int


class ExtentMetadata(_Struct):
    base_offset: int
    last_offset: int
    max_timestamp: int
    filepos: int
    len: int
    oid: uuid.UUID


class ExtentLocation(ExtentMetadata):
    """An extent and where to read it: its object's footer position and size, and the object's
    key in the bucket (``get_first_ge``)."""

    footer_pos: int
    object_size: int
    object_key: str


class ExtentList(_Struct):
    extents: list[ExtentMetadata]
    #: True when ``limit`` cut the listing short.
    more: bool = False


class TombstoneRangeInfo(_Struct):
    base: int
    last: int
    cleaned_at: int


class CompactionInfo(_Struct):
    start_offset: int
    next_offset: int
    compaction_epoch: int
    cleaned_ranges: list[OffsetRange]
    cleaned_ranges_with_tombstones: list[TombstoneRangeInfo]
    #: The complement of ``cleaned_ranges`` within ``[start_offset, next_offset)``.
    dirty_ranges: list[OffsetRange]
    #: Tombstone ranges cleaned at or before the asked-for bound (their tombstones may go).
    removable_tombstone_ranges: list[OffsetRange]


class ObjectInfo(_Struct):
    oid: uuid.UUID
    total_data_size: int
    removed_data_size: int
    footer_pos: int
    object_size: int
    last_updated: int
    is_preregistration: bool
    #: Where the object lives in the bucket (``l1/<domain>/objects/<oid>``).
    object_key: str


class GcResult(_Struct):
    objects_deleted: int = 0
    bytes_deleted: int = 0
    preregistrations_expired: int = 0
    errors: int = 0


class PartitionInfo(_Struct):
    start_offset: int
    next_offset: int
    compaction_epoch: int
    size: int
    num_extents: int


class SizeAnswer(_Struct):
    size: int


class OffsetAnswer(_Struct):
    offset: int


class TermAnswer(_Struct):
    term: int


class EndOffsetAnswer(_Struct):
    end_offset: int


class CountAnswer(_Struct):
    count: int


class ObjectList(_Struct):
    objects: list[ObjectInfo]
    next: uuid.UUID | None


class PartitionRef(_Struct):
    topic_id: uuid.UUID
    partition: PartitionId


class CompactionInfosRequest(_Struct):
    partitions: Annotated[list[PartitionRef], msgspec.Meta(max_length=10000)]
    tombstone_removal_upper_bound: Timestamp = -1


class PartitionCompactionInfo(_Struct):
    topic_id: uuid.UUID
    partition: int
    #: None when the partition is not in the metastore.
    info: CompactionInfo | None


class CompactionInfos(_Struct):
    infos: list[PartitionCompactionInfo]


class StartOffsetBody(_Struct):
    start_offset: NonNegative
