"""Request-only checks of the L1 writes: every rule of ``docs/l1-format.md`` ("Validation
rules", Redpanda's ``validate_inputs``) that can be decided from the request alone.

Each write first runs its check here, with no lock and no read: a request that breaks a rule is
refused (:class:`InvalidRequest`, the message naming the field, the partition and the offsets or
the object id) before it costs anything. What passes comes back normalised — extents grouped by
partition in offset order, runs of contiguous extents, terms per partition, compaction updates
as plain ranges — for the operation's second check against one consistent snapshot
(:mod:`cachedaemon.metastore.l1.metastore`).

Pure functions over immutable values; any shard.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from cachedaemon.metastore.l1.errors import InvalidRequest
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.types import (
    MAX_OBJECT_IDS,
    CompactionUpdate,
    ExtentSpec,
    NewObject,
    TermStart,
)


@dataclass(frozen=True, slots=True)
class Extent:
    """One extent of a request: its offsets, object, spec and where it sits in the request."""

    base: int
    last: int
    oid: uuid.UUID
    spec: ExtentSpec
    where: str

    @property
    def len(self) -> int:
        return self.spec.len


#: A run: extents of one partition, contiguous (each base is the previous last + 1).
Run = list[Extent]


def tidp_of(e: ExtentSpec | TermStart | CompactionUpdate) -> TopicIdPartition:
    return TopicIdPartition(e.topic_id, e.partition)


def check_objects(objects: Sequence[NewObject]) -> dict[TopicIdPartition, list[Extent]]:
    """The checks of every object of a request; its extents grouped by partition in offset
    order. Refuses an empty request, an id twice, an object without extents, a footer past the
    object's end, an inverted or zero-byte extent, one past the footer."""
    if not objects:
        raise InvalidRequest("objects: no objects in the request")
    seen: set[uuid.UUID] = set()
    parts: dict[TopicIdPartition, list[Extent]] = defaultdict(list)
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if obj.oid in seen:
            raise InvalidRequest(f"{where}.oid: object {obj.oid} appears twice in the request")
        seen.add(obj.oid)
        if not obj.extents:
            raise InvalidRequest(f"{where}.extents: object {obj.oid} holds no extent")
        if obj.footer_pos > obj.object_size:
            raise InvalidRequest(f"{where}.footer_pos: object {obj.oid}: footer_pos "
                                 f"{obj.footer_pos} is past object_size {obj.object_size}")
        for j, e in enumerate(obj.extents):
            w = f"{where}.extents[{j}]"
            tidp = tidp_of(e)
            if e.base_offset > e.last_offset:
                raise InvalidRequest(f"{w}.last_offset: partition {tidp}: last offset "
                                     f"{e.last_offset} is below base_offset {e.base_offset}")
            if e.len == 0:
                # An object whose data is all zero-length would look dead (removed == total)
                # while its extents still reference it, and the GC would delete it.
                raise InvalidRequest(f"{w}.len: partition {tidp}: extent [{e.base_offset}, "
                                     f"{e.last_offset}] holds no bytes (an extent holds at "
                                     f"least one)")
            if e.filepos + e.len > obj.footer_pos:
                raise InvalidRequest(f"{w}.len: object {obj.oid}: bytes [{e.filepos}, "
                                     f"{e.filepos + e.len}) run past footer_pos "
                                     f"{obj.footer_pos}")
            parts[tidp].append(Extent(e.base_offset, e.last_offset, obj.oid, e, w))
    for exts in parts.values():
        exts.sort(key=lambda x: x.base)
    return dict(parts)


def runs_of(parts: Mapping[TopicIdPartition, list[Extent]]) -> dict[TopicIdPartition, list[Run]]:
    """Split each partition's extents into disjoint runs of contiguous extents; overlapping
    extents are refused."""
    out: dict[TopicIdPartition, list[Run]] = {}
    for tidp, exts in parts.items():
        runs: list[Run] = [[exts[0]]]
        for prev, cur in pairwise(exts):
            if cur.base <= prev.last:
                raise InvalidRequest(
                    f"{cur.where}.base_offset: extents of partition {tidp} overlap ([{cur.base}, "
                    f"{cur.last}] starts at or before the last offset {prev.last} of "
                    f"[{prev.base}, {prev.last}])")
            if cur.base == prev.last + 1:
                runs[-1].append(cur)
            else:
                runs.append([cur])
        out[tidp] = runs
    return out


# --- add_objects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddRequest:
    objects: Sequence[NewObject]
    #: Per partition, its extents: one contiguous run in offset order.
    parts: dict[TopicIdPartition, list[Extent]]
    #: Per partition, ``(term, start offset)`` strictly increasing; the first starts at the
    #: partition's first added base offset.
    terms: dict[TopicIdPartition, list[tuple[int, int]]]


def add_request(objects: Sequence[NewObject], terms: Sequence[TermStart]) -> AddRequest:
    parts = check_objects(objects)
    for tidp, exts in parts.items():
        for prev, cur in pairwise(exts):
            if cur.base != prev.last + 1:
                raise InvalidRequest(
                    f"{cur.where}.base_offset: extents of partition {tidp} are not contiguous "
                    f"({cur.base} follows last offset {prev.last})")
    if not terms:
        raise InvalidRequest("terms: required: the term of each partition's first added "
                             "extent (and of any term that starts inside the added extents)")
    by_tidp: dict[TopicIdPartition, list[tuple[int, int]]] = defaultdict(list)
    for i, t in enumerate(terms):
        w = f"terms[{i}]"
        tidp = tidp_of(t)
        if tidp not in parts:
            raise InvalidRequest(f"{w}: partition {tidp} has no extents in the request")
        exts = parts[tidp]
        seen = by_tidp[tidp]
        if not seen and t.start_offset != exts[0].base:
            raise InvalidRequest(f"{w}.start_offset: partition {tidp}: term {t.term} starts at "
                                 f"{t.start_offset}, not at its first extent's base offset "
                                 f"{exts[0].base}")
        if seen and (t.term <= seen[-1][0] or t.start_offset <= seen[-1][1]):
            raise InvalidRequest(f"{w}: terms of partition {tidp} must strictly increase in "
                                 f"term and start offset: term {t.term} at {t.start_offset} "
                                 f"follows term {seen[-1][0]} at {seen[-1][1]}")
        if t.start_offset > exts[-1].last:
            raise InvalidRequest(f"{w}.start_offset: partition {tidp}: term {t.term} starts at "
                                 f"{t.start_offset}, after the added extents' last offset "
                                 f"{exts[-1].last}")
        seen.append((t.term, t.start_offset))
    for tidp in sorted(parts):
        if tidp not in by_tidp:
            raise InvalidRequest(f"terms: partition {tidp} has extents in the request but no "
                                 f"term")
    return AddRequest(objects, parts, dict(by_tidp))


# --- replace_objects / compact_objects / commit_compaction_metadata -----------------------------


@dataclass(frozen=True, slots=True)
class CompactionChange:
    """One partition's compaction update, as plain ranges."""

    #: ``(base, last, has_tombstones)`` in request order.
    cleaned: tuple[tuple[int, int, bool], ...]
    removed_tombstones: tuple[tuple[int, int], ...]
    cleaned_at: int


@dataclass(frozen=True, slots=True)
class Replacement:
    """A checked replace/compact/commit request."""

    objects: Sequence[NewObject]
    #: Per partition, the runs of new extents (empty for a metadata-only commit).
    runs: dict[TopicIdPartition, list[Run]]
    #: The expected compaction epoch of every partition the request changes.
    epochs: dict[TopicIdPartition, int]
    changes: dict[TopicIdPartition, CompactionChange]


def replace_request(objects: Sequence[NewObject],
                    expected_epochs: Mapping[TopicIdPartition, int]) -> Replacement:
    runs = runs_of(check_objects(objects))
    for tidp in sorted(expected_epochs):
        if tidp not in runs:
            raise InvalidRequest(f"expected_epochs: partition {tidp} has no extents in the "
                                 f"request")
    for tidp in sorted(runs):
        if tidp not in expected_epochs:
            raise InvalidRequest(f"expected_epochs: partition {tidp} has extents in the request "
                                 f"but no expected compaction epoch")
    return Replacement(objects, runs, dict(expected_epochs), {})


def _changes(updates: Sequence[CompactionUpdate]
             ) -> tuple[dict[TopicIdPartition, int], dict[TopicIdPartition, CompactionChange]]:
    epochs: dict[TopicIdPartition, int] = {}
    changes: dict[TopicIdPartition, CompactionChange] = {}
    for i, u in enumerate(updates):
        w = f"updates[{i}]"
        tidp = tidp_of(u)
        if tidp in changes:
            raise InvalidRequest(f"{w}: partition {tidp} appears twice")
        cleaned = [(r.base, r.last, r.has_tombstones, f"cleaned_ranges[{j}]")
                   for j, r in enumerate(u.cleaned_ranges)]
        if u.cleaned_range is not None:
            cleaned.append((u.cleaned_range.base, u.cleaned_range.last, u.has_tombstones,
                            "cleaned_range"))
        elif u.has_tombstones:
            raise InvalidRequest(f"{w}.has_tombstones: partition {tidp}: goes with "
                                 f"cleaned_range (or give cleaned_ranges[].has_tombstones)")
        removed = [(r.base, r.last, f"removed_tombstone_ranges[{j}]")
                   for j, r in enumerate(u.removed_tombstone_ranges)]
        named = [(b, e, name) for b, e, _, name in cleaned] + removed
        for base, last, name in named:
            if base > last:
                raise InvalidRequest(f"{w}.{name}: partition {tidp}: range [{base}, {last}] is "
                                     f"inverted")
        epochs[tidp] = u.expected_epoch
        changes[tidp] = CompactionChange(
            tuple((b, last, tomb) for b, last, tomb, _ in cleaned),
            tuple((b, last) for b, last, _ in removed), u.cleaned_at)
    return epochs, changes


def compact_request(objects: Sequence[NewObject],
                    updates: Sequence[CompactionUpdate]) -> Replacement:
    """Every partition with new extents has an update and every update has new extents; each
    new cleaned range lies within the span of its partition's new extents."""
    runs = runs_of(check_objects(objects))
    epochs, changes = _changes(updates)
    for i, u in enumerate(updates):
        tidp = tidp_of(u)
        if tidp not in runs:
            raise InvalidRequest(f"updates[{i}]: partition {tidp} has no extents in the request "
                                 f"(a compaction update needs extents; commit metadata alone "
                                 f"with commit_compaction_metadata)")
        lo, hi = runs[tidp][0][0].base, runs[tidp][-1][-1].last
        for j, (base, last, _) in enumerate(changes[tidp].cleaned):
            if base < lo or last > hi:
                raise InvalidRequest(f"updates[{i}]: partition {tidp}: cleaned range "
                                     f"[{base}, {last}] (#{j}) is not covered by the new "
                                     f"extents [{lo}, {hi}]")
    for tidp in sorted(runs):
        if tidp not in changes:
            raise InvalidRequest(f"updates: partition {tidp} has extents in the request but no "
                                 f"compaction update")
    return Replacement(objects, runs, epochs, changes)


def commit_request(updates: Sequence[CompactionUpdate]) -> Replacement:
    if not updates:
        raise InvalidRequest("updates: no compaction updates in the request")
    epochs, changes = _changes(updates)
    return Replacement((), {}, epochs, changes)


# --- preregister_objects -------------------------------------------------------------------------


def preregister_request(count: int | None, oids: Iterable[uuid.UUID] | None
                        ) -> list[uuid.UUID] | int:
    """The caller's ids (no id twice), or the number of fresh ids wanted."""
    if (count is None) == (oids is None):
        raise InvalidRequest("preregister: give exactly one of count and oids")
    if count is not None:
        if not 1 <= count <= MAX_OBJECT_IDS:
            raise InvalidRequest(f"count: {count} is not within 1..{MAX_OBJECT_IDS}")
        return count
    assert oids is not None
    wanted = list(oids)
    if not 1 <= len(wanted) <= MAX_OBJECT_IDS:
        raise InvalidRequest(f"oids: {len(wanted)} ids is not within 1..{MAX_OBJECT_IDS}")
    seen: set[uuid.UUID] = set()
    for i, oid in enumerate(wanted):
        if oid in seen:
            raise InvalidRequest(f"oids[{i}]: object {oid} appears twice in the request")
        seen.add(oid)
    return wanted
