"""Random sequences of add / replace / truncate / remove / preregister / query, run on the real
L1 metastore over a real ``lsm.Database`` (memory persistence, a tiny memtable so rows move to
SSTs and through compaction) and on the in-memory model; every answer and, after every step,
every partition and object must agree."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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
    default_object_name,
)
from cachedaemon.metastore.l1.types import ExtentSpec, NewObject, TermStart
from cachedaemon.remote.memory import MemoryObjectStore
from tests.metastore.l1.model import Model

T = TypeVar("T")
TOPICS = [uuid.UUID(int=i) for i in (1, 2)]
PARTITIONS = [TopicIdPartition(t, p) for t in TOPICS for p in (0, 1)]


class L1Machine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = self.run(Database.open(Options(memtable_bytes=4096), memory_persistence()))
        self.l1 = L1Metastore(DatabaseRowStore(self.db), clock=ManualClock())
        self.bucket = MemoryObjectStore()
        self.gc = ObjectGC(self.l1, self.bucket, deletion_delay_s=0,
                           preregistration_ttl_s=1e9, batch_size=4)
        self.model = Model()
        # Object ids in creation order: draws index into it, so runs replay deterministically
        # although preregistered ids are random.
        self.oids: list[uuid.UUID] = []
        self.next_oid = 1 << 64

    def known_oids(self) -> list[uuid.UUID]:
        return [o for o in self.oids if o in self.model.objects]

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
        """Run the real operation and the model's; both must succeed alike or fail alike."""
        try:
            expected = model(*args)
        except BaseException as exc:
            if not isinstance(exc, CacheDaemonError):
                real.close()
                raise
            event(f"{model.__name__}: {type(exc).__name__}")
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
        self.run(self.bucket.put(default_object_name(o.oid), b"o" * o.object_size))
        return o

    @staticmethod
    def split(base: int, counts: list[int], lengths: list[int]) -> list[tuple[int, int, int]]:
        out, at = [], base
        for n, length in zip(counts, lengths, strict=False):
            out.append((at, at + n - 1, length))
            at += n
        return out

    # --- rules ---------------------------------------------------------------------------------

    @rule(tidps=st.lists(st.sampled_from(PARTITIONS), min_size=1, max_size=2, unique=True),
          skew=st.sampled_from([0, 0, 0, 0, 3, -2]),
          counts=st.lists(st.integers(1, 8), min_size=1, max_size=3),
          lengths=st.lists(st.integers(0, 60), min_size=3, max_size=3),
          term_delta=st.sampled_from([None, 0, 1, 2, -1]),
          reuse_oid=st.booleans())
    def add(self, tidps: list[TopicIdPartition], skew: int, counts: list[int],
            lengths: list[int], term_delta: int | None, reuse_oid: bool) -> None:
        parts = []
        terms = []
        for tidp in tidps:
            p = self.model.parts.get(tidp)
            base = max(0, (p.next if p else 0) + skew)
            exts = self.split(base, counts, lengths)
            parts.append((tidp, exts))
            if term_delta is not None:
                last = max(p.terms) if p and p.terms else 0
                terms.append(TermStart(topic_id=tidp.topic_id, partition=tidp.partition,
                                       term=max(0, last + term_delta), start_offset=base))
        oid = None
        if reuse_oid and self.known_oids():
            oid = self.known_oids()[-1]
        obj = self.new_object(parts, oid)
        self.both(self.l1.add_objects([obj], terms), self.model.add_objects, [obj], terms)

    @rule(tidp=st.sampled_from(PARTITIONS), data=st.data(), stale=st.booleans(),
          lengths=st.lists(st.integers(1, 40), min_size=2, max_size=2))
    def replace(self, tidp: TopicIdPartition, data: st.DataObject, stale: bool,
                lengths: list[int]) -> None:
        p = self.model.parts.get(tidp)
        if p is None or not p.extents:
            return
        i = data.draw(st.integers(0, len(p.extents) - 1))
        j = data.draw(st.integers(i, min(len(p.extents) - 1, i + 3)))
        base, last = p.extents[i].base, p.extents[j].last
        if data.draw(st.booleans()):
            last += data.draw(st.sampled_from([-1, 1]))  # misaligned or past the end
            if last < base:
                last = base
        n = last - base + 1
        cut = data.draw(st.integers(0, n - 1))
        exts = ([(base, base + cut - 1, lengths[0])] if cut else []) + [
            (base + cut, last, lengths[1])]
        obj = self.new_object([(tidp, exts)])
        epochs = {tidp: p.epoch - 1 if stale and p.epoch else p.epoch}
        if stale and not p.epoch:
            epochs = {tidp: 5}
        self.both(self.l1.replace_objects([obj], epochs), self.model.replace_objects, [obj],
                  epochs)

    @rule(tidp=st.sampled_from(PARTITIONS), delta=st.integers(-5, 30))
    def truncate(self, tidp: TopicIdPartition, delta: int) -> None:
        p = self.model.parts.get(tidp)
        offset = max(0, (p.start if p else 0) + delta)
        result = self.both(self.l1.set_start_offset(tidp, offset),
                           self.model.set_start_offset, tidp, offset)
        if result is not None:
            expected, got = result
            assert (got.start_offset, got.next_offset) == expected

    @rule(tidp=st.sampled_from(PARTITIONS), count=st.integers(1, 4),
          length=st.integers(1, 50))
    def append(self, tidp: TopicIdPartition, count: int, length: int) -> None:
        """The common case: the next extent of one partition (kept frequent on purpose)."""
        self.add([tidp], 0, [count], [length] * 3, None, False)

    @rule(topic=st.sampled_from(TOPICS), go=st.integers(0, 3))
    def remove_topic(self, topic: uuid.UUID, go: int) -> None:
        if go:
            return  # removing a topic is rare; keep partitions around long enough to matter
        result = self.both(self.l1.remove_topics([topic]), self.model.remove_topics, [topic])
        assert result is not None and result[0] == result[1]

    @rule(n=st.integers(1, 2))
    def preregister(self, n: int) -> None:
        oids = self.run(self.l1.preregister_objects(n))
        self.oids += oids
        self.model.preregister(oids)

    @precondition(lambda self: bool(self.model.objects))
    @rule(data=st.data())
    def remove_objects(self, data: st.DataObject) -> None:
        oids = data.draw(st.lists(st.sampled_from(self.known_oids()), min_size=1, max_size=2))
        result = self.both(self.l1.remove_objects(oids), self.model.remove_objects, oids)
        if result is not None:
            assert result[0] == result[1]

    @rule()
    def flush(self) -> None:
        self.run(self.db.flush())

    @rule()
    def collect_garbage(self) -> None:
        """Flush (so every row is persisted) and run a GC round with no delay: exactly the
        dead objects go, from the bucket and the catalogue; live ones stay in both."""
        self.run(self.db.flush())
        dead = {oid for oid, o in self.model.objects.items()
                if not o.prereg and o.removed >= o.total}
        got = self.run(self.gc.collect())
        assert got.objects_deleted == len(dead) and got.errors == 0
        event(f"gc deleted: {min(len(dead), 3)}")
        for oid in dead:
            del self.model.objects[oid]
            assert self.run(self.bucket.head(default_object_name(oid))) is None
        for oid, o in self.model.objects.items():
            if not o.prereg:
                assert self.run(self.bucket.head(default_object_name(oid))) is not None

    @rule(tidp=st.sampled_from(PARTITIONS), delta=st.integers(-3, 40),
          nbytes=st.integers(0, 300))
    def query(self, tidp: TopicIdPartition, delta: int, nbytes: int) -> None:
        p = self.model.parts.get(tidp)
        offset = max(0, (p.start if p else 0) + delta)
        r = self.both(self.l1.get_first_ge(tidp, offset), self.model.first_ge, tidp, offset)
        if r is not None:
            e, got = r
            assert (got.base_offset, got.last_offset, got.oid, got.len) == (
                e.base, e.last, e.oid, e.length)
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
        for tidp in PARTITIONS:
            p = self.model.parts.get(tidp)
            if p is None:
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

    @invariant()
    def objects_agree(self) -> None:
        got = self.run(self.l1.list_objects(limit=10000))
        assert {o.oid: (o.total_data_size, o.removed_data_size, o.is_preregistration)
                for o in got} == {oid: (o.total, o.removed, o.prereg)
                                  for oid, o in self.model.objects.items()}


L1Machine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_l1_matches_model = L1Machine.TestCase
