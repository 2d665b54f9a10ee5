"""Random programs of preregister / add / replace / compact / commit / truncate / remove /
clock ticks / object GC rounds / queries, run on the real L1 metastore and its ``ObjectGC`` over
a real ``lsm.Database`` (memory persistence, a tiny memtable so rows move to SSTs and through
compaction) and a memory bucket, and on the rule model (:mod:`tests.metastore.l1.model`); every
answer and, after every step, every partition (extents, terms, compaction state), every object
(sizes, flags, last-updated time) and the bucket must agree. Invalid requests are drawn on
purpose (unregistered or expired ids, bad terms, misaligned or stale replacements, compaction
updates that break the rules) and must fail alike, changing nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cachedaemon.clock import ManualClock
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm import Database, Options
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.metastore.l1 import (
    DatabaseRowStore,
    L1Metastore,
    MissingPartition,
    ObjectGC,
    TopicIdPartition,
)
from cachedaemon.metastore.l1.types import (
    CleanedRange,
    CompactionUpdate,
    ExtentSpec,
    NewObject,
    OffsetRange,
    TermStart,
)
from cachedaemon.remote.memory import MemoryObjectStore
from tests.metastore.l1.model import Model

T = TypeVar("T")
TOPICS = [uuid.UUID(int=i) for i in (1, 2)]
PARTITIONS = [TopicIdPartition(t, p) for t in TOPICS for p in (0, 1)]
DELAY_S = 60
TTL_S = 40


class L1Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = self.run(Database.open(Options(memtable_bytes=4096), memory_persistence()))
        self.clock = ManualClock()
        self.l1 = L1Metastore(DatabaseRowStore(self.db), clock=self.clock, domain="sm")
        self.bucket = MemoryObjectStore()
        self.gc = ObjectGC(self.l1, self.bucket, deletion_delay_s=DELAY_S,
                           preregistration_ttl_s=TTL_S, batch_size=4)
        self.model = Model()
        # Object ids in creation order: draws index into it, so runs replay deterministically
        # although ids handed out by the count form are random.
        self.oids: list[uuid.UUID] = []
        self.uploaded: set[uuid.UUID] = set()
        self.next_oid = 1 << 64

    def now(self) -> int:
        return int(self.clock.time() * 1000)

    def fresh_oid(self) -> uuid.UUID:
        self.next_oid += 1
        self.oids.append(uuid.UUID(int=self.next_oid))
        return self.oids[-1]

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.db.close())
        self.loop.close()

    def both(self, real: Coroutine[Any, Any, Any], model: Any, *args: Any) -> Any:
        """Run the real operation and the model's; both must succeed alike or fail alike (with
        the same error class)."""
        try:
            expected = model(*args)
        except BaseException as exc:
            if not isinstance(exc, CacheDaemonError):
                real.close()
                raise
            event(f"{model.__name__}: {type(exc).__name__} ({exc})")
            try:
                got = self.run(real)
            except CacheDaemonError as real_exc:
                assert type(real_exc) is type(exc), (real_exc, exc)
                return None
            raise AssertionError(f"expected {type(exc).__name__} ({exc}), got {got!r}") from None
        event(f"{model.__name__}: ok")
        return expected, self.run(real)

    # --- request builders --------------------------------------------------------------------

    def new_object(self, parts: list[tuple[TopicIdPartition, list[tuple[int, int, int]]]],
                   oid: uuid.UUID | None = None) -> NewObject:
        specs, pos = [], 0
        for tidp, exts in parts:
            for base, last, length in exts:
                specs.append(ExtentSpec(topic_id=tidp.topic_id, partition=tidp.partition,
                                        base_offset=base, last_offset=last, filepos=pos,
                                        len=length, max_timestamp=base))
                pos += length
        o = NewObject(oid=oid or self.fresh_oid(), footer_pos=pos, object_size=pos + 10,
                      extents=specs)
        self.run(self.bucket.put(self.l1.bucket_key(o.oid), b"o" * o.object_size))
        self.uploaded.add(o.oid)
        return o

    def preregistered(self, oid: uuid.UUID) -> uuid.UUID:
        """Preregister ``oid`` in both (it is new, so both accept)."""
        self.both(self.l1.preregister_objects(oids=[oid]), self.model.preregister, [oid],
                  self.now())
        return oid

    def pick_oid(self, mode: str) -> uuid.UUID:
        pending = [o for o in self.oids if o in self.model.objects
                   and self.model.objects[o].prereg]
        if mode == "pending" and pending:
            return pending[-1]
        if mode == "fresh":
            return self.fresh_oid()  # never preregistered
        if mode == "known" and self.oids:
            return self.oids[-1]  # registered, expired, deleted, or pending
        return self.preregistered(self.fresh_oid())

    @staticmethod
    def split(base: int, counts: list[int], lengths: list[int]) -> list[tuple[int, int, int]]:
        out, at = [], base
        for n, length in zip(counts, lengths, strict=False):
            out.append((at, at + n - 1, length))
            at += n
        return out

    # --- rules ---------------------------------------------------------------------------------

    @initialize(sizes=st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=5),
                               min_size=len(PARTITIONS), max_size=len(PARTITIONS)))
    def seed(self, sizes: list[list[int]]) -> None:
        """Start with a few extents in most partitions, so that programs work on data."""
        for tidp, counts in zip(PARTITIONS, sizes, strict=True):
            for n in counts:
                self.add([tidp], 0, [n], [20, 20, 20], "same", "prereg")

    @rule(n=st.integers(1, 2), mode=st.sampled_from(["count", "oids", "oids", "reuse"]))
    def preregister(self, n: int, mode: str) -> None:
        if mode == "count":
            oids = self.run(self.l1.preregister_objects(n))
            self.oids += oids
            self.model.preregister(oids, self.now())
            return
        oids = [self.fresh_oid() for _ in range(n)]
        if mode == "reuse" and len(self.oids) > n:
            oids[0] = self.oids[-n - 1]  # an id seen before: refused while it has a row
        self.both(self.l1.preregister_objects(oids=oids), self.model.preregister, oids,
                  self.now())

    @rule(tidps=st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=2, unique=True),
          skew=st.sampled_from([0, 0, 0, 0, 0, 3, -2]),
          counts=st.lists(st.integers(1, 8), min_size=1, max_size=3),
          lengths=st.lists(st.integers(0, 60), min_size=3, max_size=3),
          term_mode=st.sampled_from(["same", "same", "next", "split", "none", "inside",
                                     "lower", "missing"]),
          oid_mode=st.sampled_from(["prereg", "prereg", "prereg", "pending", "fresh", "known"]))
    def add(self, tidps: list[TopicIdPartition], skew: int, counts: list[int],
            lengths: list[int], term_mode: str, oid_mode: str) -> None:
        parts, terms = [], []
        for i, tidp in enumerate(tidps):
            p = self.model.parts.get(tidp)
            base = max(0, (p.next if p else 0) + skew)
            exts = self.split(base, counts, lengths)
            parts.append((tidp, exts))
            top = max(p.terms) if p and p.terms else 0
            if term_mode == "none" or (term_mode == "missing" and i == len(tidps) - 1):
                continue
            term = {"lower": top - 1, "next": top + 1, "split": top}.get(term_mode, top)
            start = base + 1 if term_mode == "inside" else base
            terms.append(TermStart(topic_id=tidp.topic_id, partition=tidp.partition,
                                   term=max(0, term), start_offset=start))
            if term_mode == "split":  # a new term inside the added range
                terms.append(TermStart(topic_id=tidp.topic_id, partition=tidp.partition,
                                       term=top + 1, start_offset=exts[-1][1]))
        obj = self.new_object(parts, self.pick_oid(oid_mode))
        self.both(self.l1.add_objects([obj], terms), self.model.add_objects, [obj], terms,
                  self.now())

    @rule(tidp=st.sampled_from(PARTITIONS), count=st.integers(1, 4),
          length=st.integers(1, 50))
    def append(self, tidp: TopicIdPartition, count: int, length: int) -> None:
        """The common case: the next extent of one partition (kept frequent on purpose)."""
        self.add([tidp], 0, [count], [length] * 3, "same", "prereg")

    def draw_runs(self, tidp: TopicIdPartition, data: st.DataObject
                  ) -> list[tuple[int, int, int]] | None:
        """New extents for one or two disjoint runs of the partition's extents, sometimes
        misaligned, past the end, or reaching below the start offset."""
        p = self.model.parts.get(tidp)
        if p is None or not p.extents:
            return None
        n = len(p.extents)
        i = data.draw(st.integers(0, n - 1), label="first extent")
        j = data.draw(st.integers(i, min(n - 1, i + 3)), label="last extent")
        runs = [(p.extents[i].base, p.extents[j].last)]
        if j + 2 < n and data.draw(st.booleans(), label="second run"):
            k = data.draw(st.integers(j + 2, n - 1), label="second run extent")
            runs.append((p.extents[k].base, p.extents[k].last))
        shape = data.draw(st.sampled_from(["exact"] * 4 + ["misaligned", "below", "only_below",
                                                            "plus_below"]), label="shape")
        base, last = runs[-1]
        if shape == "misaligned":
            runs[-1] = (base, max(base, last + data.draw(st.sampled_from([-1, 1]))))
        elif shape == "below" and i == 0 and p.extents[0].base > 0:
            runs[0] = (max(0, p.extents[0].base - 3), runs[0][1])
        elif shape == "only_below" and p.start >= 2:
            runs = [(0, data.draw(st.integers(0, p.start - 2)))]
        elif shape == "plus_below" and min(p.start, runs[0][0]) >= 2:
            # a stale run wholly below the start, beside a live one: dropped, not refused
            runs.insert(0, (0, data.draw(st.integers(0, min(p.start, runs[0][0]) - 2))))
            event("replacement with a run below the start")
        exts = []
        for base, last in runs:
            cut = data.draw(st.integers(0, last - base), label="cut")
            lengths = data.draw(st.lists(st.integers(1, 40), min_size=2, max_size=2))
            if cut:
                exts.append((base, base + cut - 1, lengths[0]))
            exts.append((base + cut, last, lengths[1]))
        return exts

    def epoch_of(self, tidp: TopicIdPartition, stale: bool) -> int:
        p = self.model.parts.get(tidp)
        epoch = p.epoch if p is not None else 0
        return (epoch + 1 if epoch == 0 else epoch - 1) if stale else epoch

    @rule(tidp=st.sampled_from(PARTITIONS), data=st.data(), stale=st.booleans(),
          oid_mode=st.sampled_from(["prereg"] * 6 + ["fresh", "known"]))
    def replace(self, tidp: TopicIdPartition, data: st.DataObject, stale: bool,
                oid_mode: str) -> None:
        exts = self.draw_runs(tidp, data)
        if exts is None:
            return
        obj = self.new_object([(tidp, exts)], self.pick_oid(oid_mode))
        epochs = {tidp: self.epoch_of(tidp, stale and data.draw(st.booleans()))}
        self.both(self.l1.replace_objects([obj], epochs), self.model.replace_objects, [obj],
                  epochs, self.now())

    def draw_update(self, tidp: TopicIdPartition, data: st.DataObject, lo: int, hi: int,
                    stale: bool) -> CompactionUpdate:
        """A compaction update whose ranges mostly follow the rules (cleaned ranges from the
        start or the first dirty offset, within ``[lo, hi]``; removals of tracked tombstone
        ranges) and sometimes do not."""
        p = self.model.parts[tidp]
        first_dirty = min((o for o in range(p.start, p.next) if o not in p.cleaned),
                          default=p.start)
        cleaned = []
        for _ in range(data.draw(st.integers(0, 2), label="cleaned ranges")):
            base = data.draw(st.sampled_from(sorted({max(lo, p.start), max(lo, first_dirty),
                                                     lo, min(hi, lo + 3)})), label="base")
            last = data.draw(st.integers(base, max(base, hi + 1)), label="last")
            cleaned.append(CleanedRange(base=base, last=last, has_tombstones=data.draw(
                st.sampled_from([True, True, False]), label="tombstones")))
        removed = []
        if p.tombs and data.draw(st.booleans(), label="remove tombstones"):
            removed.append(self.draw_removal(tidp, data))
        return CompactionUpdate(topic_id=tidp.topic_id, partition=tidp.partition,
                                expected_epoch=self.epoch_of(tidp, stale),
                                cleaned_ranges=cleaned, cleaned_at=self.now() // 1000,
                                removed_tombstone_ranges=removed)

    def draw_removal(self, tidp: TopicIdPartition, data: st.DataObject) -> OffsetRange:
        """A range of tracked tombstones; sometimes reaching one offset before it or past
        its end (not tracked unless a neighbour covers it)."""
        t = data.draw(st.sampled_from(self.model.parts[tidp].tombs), label="tombstone range")
        b = data.draw(st.integers(t.base, t.last))
        e = data.draw(st.integers(b, t.last))
        b -= data.draw(st.sampled_from([0, 0, 0, 1]), label="earlier")
        e += data.draw(st.sampled_from([0, 0, 0, 1, 3]), label="later")
        return OffsetRange(base=max(0, b), last=e)

    @rule(tidp=st.sampled_from(PARTITIONS), data=st.data())
    def clean(self, tidp: TopicIdPartition, data: st.DataObject) -> None:
        """A metadata-only commit of the next cleaned range, from the first dirty offset (so
        it follows the rules unless the partition is empty), mostly with tombstones."""
        p = self.model.parts.get(tidp)
        if p is None:
            return
        dirty = [o for o in range(p.start, p.next) if o not in p.cleaned]
        base = dirty[0] if dirty else p.start
        last = data.draw(st.integers(base, max(base, p.next - 1)), label="clean to")
        update = CompactionUpdate(
            topic_id=tidp.topic_id, partition=tidp.partition, expected_epoch=p.epoch,
            cleaned_at=self.now() // 1000,
            cleaned_ranges=[CleanedRange(base=base, last=last, has_tombstones=data.draw(
                st.sampled_from([True, True, False]), label="tombstones"))])
        self.both(self.l1.commit_compaction_metadata([update]),
                  self.model.commit_compaction_metadata, [update], self.now())

    @precondition(lambda self: any(p.tombs for p in self.model.parts.values()))
    @rule(data=st.data())
    def remove_tombstones(self, data: st.DataObject) -> None:
        """A metadata-only commit of tombstones removed (as a compaction job ends)."""
        tidp = data.draw(st.sampled_from([t for t in PARTITIONS if t in self.model.parts
                                          and self.model.parts[t].tombs]))
        update = CompactionUpdate(topic_id=tidp.topic_id, partition=tidp.partition,
                                  expected_epoch=self.model.parts[tidp].epoch,
                                  removed_tombstone_ranges=[self.draw_removal(tidp, data)])
        self.both(self.l1.commit_compaction_metadata([update]),
                  self.model.commit_compaction_metadata, [update], self.now())

    @rule(tidp=st.sampled_from(PARTITIONS), data=st.data(), stale=st.booleans(),
          update_elsewhere=st.booleans())
    def compact(self, tidp: TopicIdPartition, data: st.DataObject, stale: bool,
                update_elsewhere: bool) -> None:
        exts = self.draw_runs(tidp, data)
        if exts is None:
            return
        obj = self.new_object([(tidp, exts)], self.pick_oid("prereg"))
        update = self.draw_update(tidp, data, exts[0][0], exts[-1][1],
                                  stale and data.draw(st.booleans()))
        updates = [update]
        if update_elsewhere and data.draw(st.booleans()):  # an update without extents
            other = next(t for t in PARTITIONS if t != tidp)
            if other in self.model.parts:
                updates.append(self.draw_update(other, data, 0, 0, False))
        self.both(self.l1.compact_objects([obj], updates), self.model.compact_objects, [obj],
                  updates, self.now())

    @rule(tidp=st.sampled_from(PARTITIONS), data=st.data(), stale=st.booleans())
    def commit_compaction(self, tidp: TopicIdPartition, data: st.DataObject,
                          stale: bool) -> None:
        p = self.model.parts.get(tidp)
        if p is None:
            return
        update = self.draw_update(tidp, data, 0, max(0, p.next - 1),
                                  stale and data.draw(st.booleans()))
        self.both(self.l1.commit_compaction_metadata([update]),
                  self.model.commit_compaction_metadata, [update], self.now())

    @rule(tidp=st.sampled_from(PARTITIONS), at=st.floats(-0.2, 1.2))
    def truncate(self, tidp: TopicIdPartition, at: float) -> None:
        """Prefix truncation, mostly to an offset inside the partition."""
        p = self.model.parts.get(tidp)
        start, nxt = (p.start, p.next) if p else (0, 0)
        offset = max(0, start + round(at * (nxt - start)) + (1 if at > 1 else 0))
        result = self.both(self.l1.set_start_offset(tidp, offset),
                           self.model.set_start_offset, tidp, offset, self.now())
        if result is not None:
            expected, got = result
            assert (got.start_offset, got.next_offset) == expected

    @rule(topic=st.sampled_from(TOPICS), go=st.integers(0, 3))
    def remove_topic(self, topic: uuid.UUID, go: int) -> None:
        if go:
            return  # removing a topic is rare; keep partitions around long enough to matter
        result = self.both(self.l1.remove_topics([topic]), self.model.remove_topics, [topic],
                           self.now())
        assert result is not None and result[0] == result[1]

    @precondition(lambda self: bool(self.model.objects))
    @rule(data=st.data())
    def remove_objects(self, data: st.DataObject) -> None:
        known = [o for o in self.oids if o in self.model.objects]
        oids = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=2))
        result = self.both(self.l1.remove_objects(oids), self.model.remove_objects, oids)
        if result is not None:
            assert result[0] == result[1]

    @rule(seconds=st.sampled_from([1, 10, 39, 41, 59, 61, 200]))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def flush(self) -> None:
        self.run(self.db.flush())

    @rule()
    def collect_garbage(self) -> None:
        """Flush (so every row is persisted) and run a GC round: exactly the preregistrations
        past the TTL expire and exactly the dead objects past the delay go, from the bucket
        first; everything else stays in both."""
        self.run(self.db.flush())
        expired, deleted = self.model.collect_garbage(self.now(), DELAY_S * 1000, TTL_S * 1000)
        got = self.run(self.gc.collect())
        assert (got.preregistrations_expired, got.objects_deleted, got.bytes_deleted,
                got.errors) == (len(expired), len(deleted), sum(deleted.values()), 0)
        event(f"gc: {min(len(expired), 2)} expired, {min(len(deleted), 2)} deleted")
        for oid in deleted:
            assert self.run(self.bucket.head(self.l1.bucket_key(oid))) is None
            self.uploaded.discard(oid)
        for oid in self.uploaded:
            if oid in self.model.objects:
                assert self.run(self.bucket.head(self.l1.bucket_key(oid))) is not None

    @rule(tidp=st.sampled_from(PARTITIONS), delta=st.integers(-3, 40),
          nbytes=st.integers(0, 300), ts_delta=st.integers(-2, 30))
    def query(self, tidp: TopicIdPartition, delta: int, nbytes: int, ts_delta: int) -> None:
        p = self.model.parts.get(tidp)
        offset = max(0, (p.start if p else 0) + delta)
        for real, model, args in [
            (self.l1.get_first_ge(tidp, offset), self.model.first_ge, (tidp, offset)),
            (self.l1.get_first_ge_timestamp(tidp, offset + ts_delta, offset),
             self.model.first_ge_timestamp, (tidp, offset + ts_delta, offset)),
        ]:
            r = self.both(real, model, *args)
            if r is not None:
                (e, o), got = r
                assert (got.base_offset, got.last_offset, got.oid, got.len, got.footer_pos,
                        got.object_size) == (e.base, e.last, e.oid, e.length, o.footer, o.size)
        r = self.both(self.l1.get_first_offset_for_bytes(tidp, nbytes),
                      self.model.first_offset_for_bytes, tidp, nbytes)
        if r is not None:
            assert r[0] == r[1]
        r = self.both(self.l1.get_term_for_offset(tidp, offset), self.model.term_for_offset,
                      tidp, offset)
        if r is not None:
            assert r[0] == r[1]

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def partitions_agree(self) -> None:
        bound = self.now() // 1000 - 30
        infos = self.run(self.l1.get_compaction_infos(PARTITIONS, bound))
        for tidp in PARTITIONS:
            p = self.model.parts.get(tidp)
            if p is None:
                assert infos[tidp] is None
                try:
                    self.run(self.l1.get_partition(tidp))
                except MissingPartition:
                    continue
                raise AssertionError(f"{tidp} should not exist")
            m = self.run(self.l1.get_partition(tidp))
            assert (m.start_offset, m.next_offset, m.compaction_epoch, m.size,
                    m.num_extents) == (p.start, p.next, p.epoch, p.size, len(p.extents))
            listed = self.run(self.l1.get_extents(tidp, 0, limit=10000))
            live = [e for e in p.extents if e.last >= p.start]
            assert [(e.base_offset, e.last_offset, e.oid, e.len) for e in listed.extents] == [
                (e.base, e.last, e.oid, e.length) for e in live]
            back = self.run(self.l1.get_extents(tidp, 0, limit=10000, reverse=True))
            assert back.extents == listed.extents[::-1]
            for term in sorted(p.terms):
                assert self.run(self.l1.get_end_offset_for_term(tidp, term)) == (
                    self.model.end_offset_for_term(tidp, term))
            info = infos[tidp]
            assert info is not None
            cleaned, tombs, dirty, removable = self.model.compaction_info(tidp, bound)
            assert [(r.base, r.last) for r in info.cleaned_ranges] == cleaned
            assert [(t.base, t.last, t.cleaned_at)
                    for t in info.cleaned_ranges_with_tombstones] == tombs
            assert [(r.base, r.last) for r in info.dirty_ranges] == dirty
            assert [(r.base, r.last) for r in info.removable_tombstone_ranges] == removable

    @invariant()
    def objects_agree(self) -> None:
        got = self.run(self.l1.list_objects(limit=10000))
        assert {o.oid: (o.total_data_size, o.removed_data_size, o.is_preregistration,
                        o.last_updated, o.footer_pos, o.object_size) for o in got} == {
            oid: (o.total, o.removed, o.prereg, o.updated, o.footer, o.size)
            for oid, o in self.model.objects.items()}


L1Machine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_l1_matches_model = L1Machine.TestCase
