"""An in-memory model of the L1 metastore's partitions and objects, written independently of
the row code: plain dicts and lists, the semantics of ``docs/l1-api.md``. The stateful test
drives the real metastore and this model with the same requests and compares every answer.

Operations return a result or raise the L1 error class the real code must raise.
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
from cachedaemon.metastore.l1.types import NewObject, TermStart


@dataclass
class MExtent:
    base: int
    last: int
    length: int
    oid: uuid.UUID
    ts: int


@dataclass
class MPartition:
    start: int
    next: int
    epoch: int = 0
    extents: list[MExtent] = field(default_factory=list)  # in offset order
    terms: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(e.length for e in self.extents)


@dataclass
class MObject:
    total: int
    removed: int
    prereg: bool = False


class Model:
    def __init__(self) -> None:
        self.parts: dict[TopicIdPartition, MPartition] = {}
        self.objects: dict[uuid.UUID, MObject] = {}

    # --- helpers -------------------------------------------------------------------------------

    def _part(self, tidp: TopicIdPartition) -> MPartition:
        p = self.parts.get(tidp)
        if p is None:
            raise MissingPartition(str(tidp))
        return p

    @staticmethod
    def _grouped(objects: list[NewObject]) -> dict[TopicIdPartition, list[MExtent]]:
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
            for a, b in itertools.pairwise(exts):
                if b.base != a.last + 1:
                    raise InvalidRequest("not contiguous")
        return out

    def _check_new(self, objects: list[NewObject]) -> None:
        for o in objects:
            existing = self.objects.get(o.oid)
            if existing is not None and not existing.prereg:
                raise InvalidRequest("already registered")

    def _remove(self, removed: list[MExtent]) -> None:
        for e in removed:
            obj = self.objects[e.oid]
            obj.removed = min(obj.total, obj.removed + e.length)

    # --- writes --------------------------------------------------------------------------------

    def add_objects(self, objects: list[NewObject], terms: list[TermStart]
                    ) -> dict[TopicIdPartition, int]:
        grouped = self._grouped(objects)
        new_terms: dict[TopicIdPartition, list[tuple[int, int]]] = {}
        for t in terms:
            tidp = TopicIdPartition(t.topic_id, t.partition)
            exts = grouped.get(tidp)
            if exts is None or not exts[0].base <= t.start_offset <= exts[-1].last:
                raise InvalidRequest("bad term")
            lst = new_terms.setdefault(tidp, [])
            if lst and (t.term <= lst[-1][0] or t.start_offset <= lst[-1][1]):
                raise InvalidRequest("terms not increasing")
            lst.append((t.term, t.start_offset))
        self._check_new(objects)
        corrected: dict[TopicIdPartition, int] = {}
        removed: dict[uuid.UUID, int] = {}
        staged: list[tuple[TopicIdPartition, list[MExtent], list[tuple[int, int]]]] = []
        for tidp, exts in grouped.items():
            p = self.parts.get(tidp)
            if p is not None and exts[0].base != p.next:
                corrected[tidp] = p.next
                for e in exts:
                    removed[e.oid] = removed.get(e.oid, 0) + e.length
                continue
            last_term = max(p.terms) if p is not None and p.terms else None
            add_terms = []
            for term, start in new_terms.get(tidp, []):
                if last_term is not None and term < last_term:
                    raise InvalidRequest("term regression")
                if last_term is not None and term == last_term:
                    continue
                add_terms.append((term, start))
            staged.append((tidp, exts, add_terms))
        for tidp, exts, add_terms in staged:
            p = self.parts.setdefault(tidp, MPartition(exts[0].base, exts[0].base))
            p.extents.extend(exts)
            p.next = exts[-1].last + 1
            p.terms.update(add_terms)
        for o in objects:
            total = sum(e.len for e in o.extents)
            self.objects[o.oid] = MObject(total, min(total, removed.get(o.oid, 0)))
        return corrected

    def replace_objects(self, objects: list[NewObject], epochs: dict[TopicIdPartition, int]
                        ) -> dict[TopicIdPartition, int]:
        grouped = self._grouped(objects)
        if set(epochs) - set(grouped) or set(grouped) - set(epochs):
            raise InvalidRequest("epochs do not match partitions")
        self._check_new(objects)
        plan = []
        for tidp in sorted(epochs):
            p = self._part(tidp)
            if p.epoch != epochs[tidp]:
                raise InvalidRequest("stale compaction epoch")
            exts = grouped[tidp]
            base, last = exts[0].base, exts[-1].last
            if last >= p.next:
                raise OutOfRange("past next")
            old = [e for e in p.extents if base <= e.base <= last]
            if not old or old[0].base != base or old[-1].last != last:
                raise InvalidRequest("boundaries")
            plan.append((tidp, p, exts, old))
        for o in objects:
            self.objects[o.oid] = MObject(sum(e.len for e in o.extents), 0)
        result = {}
        for tidp, p, exts, old in plan:
            p.extents = sorted([e for e in p.extents if e not in old] + exts,
                               key=lambda x: x.base)
            self._remove(old)
            p.epoch += 1
            result[tidp] = p.epoch
        return result

    def set_start_offset(self, tidp: TopicIdPartition, offset: int) -> tuple[int, int]:
        p = self._part(tidp)
        if offset > p.next:
            raise OutOfRange("past next")
        if offset <= p.start:
            return p.start, p.next
        gone = [e for e in p.extents if e.last < offset]
        p.extents = [e for e in p.extents if e.last >= offset]
        self._remove(gone)
        below = sorted(t for t, s in p.terms.items() if s <= offset)
        for t in below[:-1]:
            del p.terms[t]
        p.start = offset
        return p.start, p.next

    def remove_topics(self, topics: list[uuid.UUID]) -> int:
        n = 0
        for tidp in [t for t in self.parts if t.topic_id in topics]:
            self._remove(self.parts.pop(tidp).extents)
            n += 1
        return n

    def preregister(self, oids: list[uuid.UUID]) -> None:
        for oid in oids:
            self.objects[oid] = MObject(0, 0, prereg=True)

    def remove_objects(self, oids: list[uuid.UUID]) -> int:
        n = 0
        for oid in sorted(set(oids)):
            o = self.objects.get(oid)
            if o is None:
                continue
            if not (o.prereg or o.removed >= o.total):
                raise InvalidRequest("still referenced")
        for oid in sorted(set(oids)):
            if self.objects.pop(oid, None) is not None:
                n += 1
        return n

    # --- queries ---------------------------------------------------------------------------------

    def first_ge(self, tidp: TopicIdPartition, offset: int) -> MExtent:
        p = self._part(tidp)
        if offset >= p.next:
            raise OutOfRange("past next")
        at = max(offset, p.start)
        for e in p.extents:
            if e.last >= at:
                return e
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
