"""An in-memory model of the L1 metastore, written from the rules (``reference/
redpanda-behaviour.md`` §4/§4a and ``docs/l1-format.md``), not from the row code: partitions
hold plain lists of extents, compaction state is a *set of offsets* plus a list of tombstone
ranges, objects are small records with their last-updated time, and the bucket is a set of keys.
The stateful test drives the real metastore (and its object GC) and this model with the same
requests and compares every answer and, after every step, the whole state.

Operations return a result or raise the L1 error class the real code must raise. When one
request breaks several rules, the first one met in this order decides the class: the request
alone (any order: all are ``InvalidRequest``), then the objects' preregistrations, then the
partitions in partition order (each: missing, epoch, its runs in offset order, its compaction
update), then "all filtered out".
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field

from cachedaemon.metastore.l1 import (
    InvalidRequest,
    MissingPartition,
    OutOfRange,
    TopicIdPartition,
)
from cachedaemon.metastore.l1.types import CompactionUpdate, NewObject, TermStart


@dataclass
class MExtent:
    base: int
    last: int
    length: int
    oid: uuid.UUID
    ts: int


@dataclass
class MTomb:
    base: int
    last: int
    at: int


@dataclass
class MPartition:
    start: int = 0
    next: int = 0
    epoch: int = 0
    extents: list[MExtent] = field(default_factory=list)  # in offset order
    terms: dict[int, int] = field(default_factory=dict)  # term -> start offset
    cleaned: set[int] = field(default_factory=set)  # offsets cleaned by compaction
    tombs: list[MTomb] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(e.length for e in self.extents)


@dataclass
class MObject:
    total: int
    removed: int
    footer: int
    size: int
    updated: int  # ms
    prereg: bool = False

    @property
    def dead(self) -> bool:
        return not self.prereg and self.removed == self.total


def ranges_of(offsets: set[int]) -> list[tuple[int, int]]:
    """A set of offsets as sorted, merged inclusive ranges."""
    out: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if out and o == out[-1][1] + 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


@dataclass
class Change:
    """A compaction update as the model reads it."""

    cleaned: list[tuple[int, int, bool]]
    removed: list[tuple[int, int]]
    at: int


def _change(u: CompactionUpdate) -> Change:
    cleaned = [(r.base, r.last, r.has_tombstones) for r in u.cleaned_ranges]
    if u.cleaned_range is not None:
        cleaned.append((u.cleaned_range.base, u.cleaned_range.last, u.has_tombstones))
    return Change(cleaned, [(r.base, r.last) for r in u.removed_tombstone_ranges], u.cleaned_at)


class Model:
    def __init__(self) -> None:
        self.parts: dict[TopicIdPartition, MPartition] = {}
        self.objects: dict[uuid.UUID, MObject] = {}

    # --- request checks ------------------------------------------------------------------------

    @staticmethod
    def _extents(objects: list[NewObject]) -> dict[TopicIdPartition, list[MExtent]]:
        """The object rules; extents by partition, sorted by base."""
        if not objects:
            raise InvalidRequest("no objects")
        oids = [o.oid for o in objects]
        if len(set(oids)) != len(oids):
            raise InvalidRequest("dup oid")
        out: dict[TopicIdPartition, list[MExtent]] = {}
        for o in objects:
            if not o.extents or o.footer_pos > o.object_size:
                raise InvalidRequest("bad object")
            for e in o.extents:
                if (e.base_offset > e.last_offset or e.len == 0
                        or e.filepos + e.len > o.footer_pos):
                    raise InvalidRequest("bad extent")
                out.setdefault(TopicIdPartition(e.topic_id, e.partition), []).append(
                    MExtent(e.base_offset, e.last_offset, e.len, o.oid, e.max_timestamp))
        for exts in out.values():
            exts.sort(key=lambda x: x.base)
        return out

    @staticmethod
    def _runs(exts: list[MExtent]) -> list[list[MExtent]]:
        runs: list[list[MExtent]] = []
        for e in exts:
            if runs and e.base <= runs[-1][-1].last:
                raise InvalidRequest("overlapping extents")
            if runs and e.base == runs[-1][-1].last + 1:
                runs[-1].append(e)
            else:
                runs.append([e])
        return runs

    def _prereg(self, objects: list[NewObject]) -> None:
        for o in objects:
            row = self.objects.get(o.oid)
            if row is None or not row.prereg:
                raise InvalidRequest("not pre-registered")

    def _part(self, tidp: TopicIdPartition) -> MPartition:
        p = self.parts.get(tidp)
        if p is None:
            raise MissingPartition(str(tidp))
        return p

    def _remove(self, gone: list[MExtent], now: int) -> None:
        for e in gone:
            o = self.objects[e.oid]
            assert not o.prereg and o.removed + e.length <= o.total, "the model broke accounting"
            o.removed += e.length
            o.updated = now

    # --- writes --------------------------------------------------------------------------------

    def preregister(self, oids: list[uuid.UUID], now: int) -> list[uuid.UUID]:
        if not oids or len(set(oids)) != len(oids) or any(o in self.objects for o in oids):
            raise InvalidRequest("ids must be new")
        for oid in oids:
            self.objects[oid] = MObject(0, 0, 0, 0, now, prereg=True)
        return oids

    def add_objects(self, objects: list[NewObject], terms: list[TermStart], now: int
                    ) -> dict[TopicIdPartition, int]:
        grouped = self._extents(objects)
        for exts in grouped.values():
            for a, b in itertools.pairwise(exts):
                if b.base != a.last + 1:
                    raise InvalidRequest("not contiguous")
        if not terms:
            raise InvalidRequest("terms required")
        asked: dict[TopicIdPartition, list[tuple[int, int]]] = {}
        for t in terms:
            tidp = TopicIdPartition(t.topic_id, t.partition)
            exts = grouped.get(tidp)
            if exts is None:
                raise InvalidRequest("term for a partition without extents")
            lst = asked.setdefault(tidp, [])
            if not lst and t.start_offset != exts[0].base:
                raise InvalidRequest("first term not at the first base")
            if lst and (t.term <= lst[-1][0] or t.start_offset <= lst[-1][1]):
                raise InvalidRequest("terms not increasing")
            if t.start_offset > exts[-1].last:
                raise InvalidRequest("term after the added extents")
            lst.append((t.term, t.start_offset))
        if set(grouped) - set(asked):
            raise InvalidRequest("a partition without terms")
        self._prereg(objects)
        corrected: dict[TopicIdPartition, int] = {}
        removed: dict[uuid.UUID, int] = {}
        accepted: list[tuple[TopicIdPartition, list[MExtent], list[tuple[int, int]]]] = []
        for tidp in sorted(grouped):
            exts = grouped[tidp]
            p = self.parts.get(tidp)
            expected = p.next if p is not None else 0
            if exts[0].base != expected:
                corrected[tidp] = expected
                for e in exts:
                    removed[e.oid] = removed.get(e.oid, 0) + e.length
                continue
            new_terms = asked[tidp]
            if p is not None and p.terms:
                top = max(p.terms)
                if new_terms[0][0] < top or new_terms[0][1] <= p.terms[top]:
                    raise InvalidRequest("term does not continue the stored ones")
                if new_terms[0][0] == top:
                    new_terms = new_terms[1:]
            accepted.append((tidp, exts, new_terms))
        for tidp, exts, new_terms in accepted:
            p = self.parts.setdefault(tidp, MPartition())
            p.extents.extend(exts)
            p.next = exts[-1].last + 1
            p.terms.update(new_terms)
        for o in objects:
            self.objects[o.oid] = MObject(sum(e.len for e in o.extents), removed.get(o.oid, 0),
                                          o.footer_pos, o.object_size, now)
        return corrected

    def replace_objects(self, objects: list[NewObject], epochs: dict[TopicIdPartition, int],
                        now: int) -> dict[TopicIdPartition, int]:
        runs = {t: self._runs(e) for t, e in self._extents(objects).items()}
        if set(epochs) != set(runs):
            raise InvalidRequest("epochs do not match the partitions")
        return self._replace(objects, runs, epochs, {}, now)

    def compact_objects(self, objects: list[NewObject], updates: list[CompactionUpdate],
                        now: int) -> dict[TopicIdPartition, int]:
        runs = {t: self._runs(e) for t, e in self._extents(objects).items()}
        epochs, changes = self._changes(updates)
        for tidp, ch in changes.items():
            if tidp not in runs:
                raise InvalidRequest("an update without extents")
            lo, hi = runs[tidp][0][0].base, runs[tidp][-1][-1].last
            if any(b < lo or last > hi for b, last, _ in ch.cleaned):
                raise InvalidRequest("cleaned range not covered by the new extents")
        if set(runs) - set(changes):
            raise InvalidRequest("extents without an update")
        return self._replace(objects, runs, epochs, changes, now)

    def commit_compaction_metadata(self, updates: list[CompactionUpdate], now: int
                                   ) -> dict[TopicIdPartition, int]:
        if not updates:
            raise InvalidRequest("no updates")
        epochs, changes = self._changes(updates)
        return self._replace([], {}, epochs, changes, now)

    @staticmethod
    def _changes(updates: list[CompactionUpdate]
                 ) -> tuple[dict[TopicIdPartition, int], dict[TopicIdPartition, Change]]:
        epochs, changes = {}, {}
        for u in updates:
            tidp = TopicIdPartition(u.topic_id, u.partition)
            if tidp in changes:
                raise InvalidRequest("partition twice")
            if u.has_tombstones and u.cleaned_range is None:
                raise InvalidRequest("has_tombstones without cleaned_range")
            ch = _change(u)
            if any(b > last for b, last, _ in ch.cleaned) or any(b > last for b, last in ch.removed):
                raise InvalidRequest("inverted range")
            epochs[tidp], changes[tidp] = u.expected_epoch, ch
        return epochs, changes

    def _replace(self, objects: list[NewObject], runs: dict[TopicIdPartition, list[list[MExtent]]],
                 epochs: dict[TopicIdPartition, int], changes: dict[TopicIdPartition, Change],
                 now: int) -> dict[TopicIdPartition, int]:
        self._prereg(objects)
        gone: list[MExtent] = []
        new_state: list[tuple[TopicIdPartition, list[MExtent], tuple[set[int], list[MTomb]] | None]] = []
        new_removed: dict[uuid.UUID, int] = {}
        added = 0
        for tidp in sorted(epochs):
            p = self._part(tidp)
            if p.epoch != epochs[tidp]:
                raise InvalidRequest("stale compaction epoch")
            keep = list(p.extents)
            for run in runs.get(tidp, []):
                base, last = run[0].base, run[-1].last
                if last < p.start:
                    for e in run:
                        new_removed[e.oid] = new_removed.get(e.oid, 0) + e.length
                    continue
                if last >= p.next:
                    raise OutOfRange("past the next offset")
                if base < p.start:  # trimmed to the extents still there
                    base = p.extents[0].base if p.extents else p.start
                old = [e for e in p.extents if base <= e.base <= last]
                if not old or old[0].base != base or old[-1].last != last:
                    raise InvalidRequest("not on extent boundaries")
                gone += old
                keep = [e for e in keep if e not in old]
                for e in run:
                    if e.last < p.start:
                        new_removed[e.oid] = new_removed.get(e.oid, 0) + e.length
                    else:
                        keep.append(e)
                        added += 1
            merged = self._merge(p, changes[tidp]) if tidp in changes else None
            new_state.append((tidp, sorted(keep, key=lambda x: x.base), merged))
        if runs and not added:
            raise InvalidRequest("all filtered out")
        for o in objects:
            self.objects[o.oid] = MObject(sum(e.len for e in o.extents),
                                          new_removed.get(o.oid, 0), o.footer_pos,
                                          o.object_size, now)
        self._remove(gone, now)
        result = {}
        for tidp, keep, merged in new_state:
            p = self.parts[tidp]
            p.extents = keep
            if merged is not None:
                p.cleaned, p.tombs = merged
            p.epoch += 1
            result[tidp] = p.epoch
        return result

    @staticmethod
    def _merge(p: MPartition, ch: Change) -> tuple[set[int], list[MTomb]]:
        """The compaction rules on a copy of the partition's state."""
        cleaned, tombs = set(p.cleaned), [MTomb(t.base, t.last, t.at) for t in p.tombs]
        reach = None
        for base, last, has_tombstones in ch.cleaned:
            if last >= p.next:
                raise OutOfRange("cleaned range past the next offset")
            if last < p.start:
                continue
            base = max(base, p.start)
            if has_tombstones:
                if any(base <= t.last and t.base <= last for t in tombs):
                    raise InvalidRequest("tombstone ranges overlap")
                tombs.append(MTomb(base, last, ch.at))
            cleaned |= set(range(base, last + 1))
            reach = last if reach is None else max(reach, last)
        if reach is not None and not set(range(p.start, reach + 1)) <= cleaned:
            raise InvalidRequest("cleaned ranges do not reach back to the start")
        for base, last in ch.removed:
            tracked = {o for t in tombs for o in range(t.base, t.last + 1)}
            if not set(range(base, last + 1)) <= tracked:
                raise InvalidRequest("tombstone range not tracked")
            cut = []
            for t in tombs:
                if t.last < base or t.base > last:
                    cut.append(t)
                    continue
                if t.base < base:
                    cut.append(MTomb(t.base, base - 1, t.at))
                if t.last > last:
                    cut.append(MTomb(last + 1, t.last, t.at))
            tombs = cut
        return cleaned, sorted(tombs, key=lambda t: (t.base, t.last))

    def set_start_offset(self, tidp: TopicIdPartition, offset: int, now: int
                         ) -> tuple[int, int]:
        p = self._part(tidp)
        if offset > p.next:
            raise OutOfRange("past next")
        if offset <= p.start:
            return p.start, p.next
        gone = [e for e in p.extents if e.last < offset]
        p.extents = [e for e in p.extents if e.last >= offset]
        self._remove(gone, now)
        below = sorted(t for t, s in p.terms.items() if s <= offset)
        for t in below[:-1]:
            del p.terms[t]
        p.cleaned = {o for o in p.cleaned if o >= offset}
        p.tombs = [MTomb(max(t.base, offset), t.last, t.at) for t in p.tombs if t.last >= offset]
        p.start = offset
        return p.start, p.next

    def remove_topics(self, topics: list[uuid.UUID], now: int) -> int:
        n = 0
        for tidp in [t for t in self.parts if t.topic_id in topics]:
            self._remove(self.parts.pop(tidp).extents, now)
            n += 1
        return n

    def remove_objects(self, oids: list[uuid.UUID]) -> int:
        wanted = [oid for oid in set(oids) if oid in self.objects]
        if any(not (self.objects[o].prereg or self.objects[o].dead) for o in wanted):
            raise InvalidRequest("still referenced")
        for oid in wanted:
            del self.objects[oid]
        return len(wanted)

    def collect_garbage(self, now: int, delay_ms: int, ttl_ms: int
                        ) -> tuple[list[uuid.UUID], dict[uuid.UUID, int]]:
        """One GC round over fully persisted state: the preregistrations expired (now ordinary
        zero-size objects stamped ``now``) and the dead objects deleted (with their sizes), both
        decided from the state at the start of the round."""
        expire = [oid for oid, o in self.objects.items()
                  if o.prereg and o.updated <= now - ttl_ms]
        delete = {oid: o.size for oid, o in self.objects.items()
                  if o.dead and o.updated <= now - delay_ms}
        for oid in expire:
            o = self.objects[oid]
            o.prereg, o.total, o.removed, o.updated = False, 0, 0, now
        for oid in delete:
            del self.objects[oid]
        return expire, delete

    # --- queries ---------------------------------------------------------------------------------

    def first_ge(self, tidp: TopicIdPartition, offset: int) -> tuple[MExtent, MObject]:
        p = self._part(tidp)
        if offset >= p.next:
            raise OutOfRange("past next")
        at = max(offset, p.start)
        for e in p.extents:
            if e.last >= at:
                return e, self.objects[e.oid]
        raise OutOfRange("none")

    def first_ge_timestamp(self, tidp: TopicIdPartition, ts: int, min_offset: int
                           ) -> tuple[MExtent, MObject]:
        p = self._part(tidp)
        at = max(min_offset, p.start)
        for e in p.extents:
            if e.last >= at and e.ts >= ts:
                return e, self.objects[e.oid]
        raise OutOfRange("none")

    def first_offset_for_bytes(self, tidp: TopicIdPartition, nbytes: int) -> int:
        p = self._part(tidp)
        total, answer = 0, p.next
        for e in reversed(p.extents):
            total += e.length
            if total > nbytes:
                return answer
            answer = max(e.base, p.start)
        return answer

    def term_for_offset(self, tidp: TopicIdPartition, offset: int) -> int:
        p = self._part(tidp)
        if not p.start <= offset < p.next:
            raise OutOfRange("outside")
        found = [t for t, s in p.terms.items() if s <= offset]
        if not found:
            raise OutOfRange("no term")
        return max(found)

    def end_offset_for_term(self, tidp: TopicIdPartition, term: int) -> int:
        p = self._part(tidp)
        if not p.terms or term < min(p.terms):
            raise OutOfRange("before the first term")
        later = [s for t, s in p.terms.items() if t > term]
        return min(later) if later else p.next

    def compaction_info(self, tidp: TopicIdPartition, bound: int
                        ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]],
                                   list[tuple[int, int]], list[tuple[int, int]]]:
        """(cleaned, tombstone ranges, dirty, removable tombstone ranges)."""
        p = self._part(tidp)
        dirty = set(range(p.start, p.next)) - p.cleaned
        return (ranges_of(p.cleaned), [(t.base, t.last, t.at) for t in p.tombs],
                ranges_of(dirty), [(t.base, t.last) for t in p.tombs if t.at <= bound])
