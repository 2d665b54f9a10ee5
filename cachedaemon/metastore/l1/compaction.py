"""Applying a compaction update to a partition's compaction state (Redpanda's
``merge_compaction_state`` and ``compaction_state`` in ``metastore/state.h``), with the rules
that need that state:

- new cleaned ranges are clipped to the partition's start offset (a range wholly below it is
  dropped) and must end before its next offset (else :class:`OutOfRange`);
- a new range with tombstones may not overlap a tracked tombstone range, nor another new one
  (``may_add``);
- after the merge, the cleaned ranges cover ``[start_offset, last]`` of every new range: cleaning
  is deduplication from the beginning of the log, so a new range must reach back to the start
  together with the ranges already cleaned;
- each removed tombstone range must be covered by tracked tombstone ranges with no gap
  (``has_contiguous_range_with_tombstones``); it is then cut out of them
  (``erase_contiguous_range_with_tombstones``: ranges it only partly covers are trimmed).

New ranges are added before removals are taken out, as Redpanda does. Pure functions; any
shard.
"""

from __future__ import annotations

from cachedaemon.metastore.l1 import intervals
from cachedaemon.metastore.l1.errors import InvalidRequest, OutOfRange
from cachedaemon.metastore.l1.keys import TopicIdPartition
from cachedaemon.metastore.l1.validate import CompactionChange
from cachedaemon.metastore.l1.values import CompactionState, PartitionMetadata, TombstoneRange


def merge(tidp: TopicIdPartition, m: PartitionMetadata, state: CompactionState,
          change: CompactionChange) -> CompactionState:
    """``state`` with ``change`` applied, or the rule it breaks as an exception."""
    start = m.start_offset
    tombs = list(state.cleaned_ranges_with_tombstones)
    added: list[tuple[int, int]] = []
    for base, last, has_tombstones in change.cleaned:
        if last >= m.next_offset:
            raise OutOfRange(f"partition {tidp}: cleaned range [{base}, {last}] runs past its "
                             f"next offset {m.next_offset}")
        if last < start:
            continue  # wholly below the start: nothing of it is left to be clean
        base = max(base, start)
        if has_tombstones:
            for t in tombs:
                if base <= t.last and t.base <= last:
                    raise InvalidRequest(
                        f"partition {tidp}: cleaned range [{base}, {last}] has tombstones and "
                        f"overlaps the tombstone range [{t.base}, {t.last}]")
            tombs.append(TombstoneRange(base, last, change.cleaned_at))
        added.append((base, last))
    cleaned = intervals.normalize([*state.cleaned_ranges, *added])
    if added:
        reach = max(last for _, last in added)
        gaps = intervals.complement(cleaned, start, reach)
        if gaps:
            raise InvalidRequest(
                f"partition {tidp}: the cleaned ranges do not reach back to its start offset "
                f"{start}: [{gaps[0][0]}, {gaps[0][1]}] is not cleaned")
    for base, last in change.removed_tombstones:
        if intervals.complement([(t.base, t.last) for t in tombs], base, last):
            raise InvalidRequest(f"partition {tidp}: removed tombstone range [{base}, {last}] "
                                 f"is not tracked as having tombstones")
        tombs = [TombstoneRange(b, e, t.cleaned_at) for t in tombs
                 for b, e in intervals.subtract([(t.base, t.last)], (base, last))]
    tombs.sort(key=lambda t: (t.base, t.last))
    return CompactionState(cleaned, tuple(tombs))


def clip_to_start(state: CompactionState, start: int) -> CompactionState:
    """Prefix truncation: offsets below ``start`` are gone (``truncate_with_new_start_offset``)."""
    return CompactionState(
        intervals.clip_below(state.cleaned_ranges, start),
        tuple(TombstoneRange(b, last, t.cleaned_at) for t in state.cleaned_ranges_with_tombstones
              for b, last in intervals.clip_below([(t.base, t.last)], start)))
