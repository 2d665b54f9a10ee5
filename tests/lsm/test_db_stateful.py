"""A hypothesis state machine comparing the database with a sorted-dict model through puts,
deletes, batches, snapshots, gets, scans (forward, reverse, prefix, range), iterator walks,
flushes, compactions and close/reopen, with tiny memtable and file sizes so that flushes,
compactions and trivial moves all happen."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cachedaemon.lsm import Database, Snapshot, WriteBatch
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import Persistence
from tests.lsm.lsm_helpers import History, tiny_options

KEYS = [b"", b"\x00", b"a", b"a\x00", b"a\x00\x00", b"a\x01", b"ab", b"abc", b"b", b"b\xff"]
KEYS += [b"k%03d" % i for i in range(40)] + [b"\xff", b"\xff\xff"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=64)
bounds = st.one_of(st.none(), keys)


class DatabaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.p: Persistence = memory_persistence()
        self.db: Database | None = None
        self.hist = History()
        self.snapshots: list[tuple[Snapshot, dict[bytes, bytes]]] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(memtable=st.sampled_from([512, 2048]), l0=st.sampled_from([2, 4]))
    def open_db(self, memtable: int, l0: int) -> None:
        self.options = tiny_options(memtable_bytes=memtable, l0_compaction_trigger=l0)
        self.db = self.run(Database.open(self.options, self.p))

    @property
    def model(self) -> dict[bytes, bytes]:
        assert self.db is not None
        return self.hist.at(self.db.max_applied_seqno)

    def teardown(self) -> None:
        if self.db is not None:
            self.run(self.db.close())
        self.loop.close()

    @rule(k=keys, v=values)
    def put(self, k: bytes, v: bytes) -> None:
        assert self.db is not None
        self.hist.record(self.run(self.db.put(k, v)), [(k, v)])

    @rule(k=keys)
    def delete(self, k: bytes) -> None:
        assert self.db is not None
        self.hist.record(self.run(self.db.delete(k)), [(k, None)])

    @rule(ops=st.lists(st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=30))
    def batch(self, ops: list[tuple[bytes, bytes | None]]) -> None:
        assert self.db is not None
        b = WriteBatch()
        for k, v in ops:
            b.put(k, v) if v is not None else b.delete(k)
        self.hist.record(self.run(self.db.apply(b)), ops)

    @rule(n=st.integers(20, 200), seed=st.integers(0, 1000))
    def bulk(self, n: int, seed: int) -> None:
        assert self.db is not None
        for i in range(n):
            k = KEYS[(seed + i * 7) % len(KEYS)]
            v = b"bulk-%d-%d" % (seed, i) * 3
            self.hist.record(self.run(self.db.put(k, v)), [(k, v)])

    @precondition(lambda self: len(self.snapshots) < 3)
    @rule()
    def take_snapshot(self) -> None:
        assert self.db is not None
        self.snapshots.append((self.db.create_snapshot(), dict(self.model)))

    @precondition(lambda self: bool(self.snapshots))
    @rule(i=st.integers(0, 2))
    def release_snapshot(self, i: int) -> None:
        snap, _ = self.snapshots.pop(i % len(self.snapshots))
        snap.release()

    @rule(k=keys)
    def get(self, k: bytes) -> None:
        assert self.db is not None
        assert self.run(self.db.get(k)) == self.model.get(k)
        for snap, view in self.snapshots:
            assert self.run(self.db.get(k, snapshot=snap)) == view.get(k)

    @rule(
        start=bounds,
        end=bounds,
        prefix=st.one_of(st.none(), st.sampled_from([b"a", b"a\x00", b"k0", b"\xff", b"b"])),
        limit=st.one_of(st.none(), st.integers(0, 10)),
        reverse=st.booleans(),
        use_snapshot=st.booleans(),
    )
    def scan(
        self,
        start: bytes | None,
        end: bytes | None,
        prefix: bytes | None,
        limit: int | None,
        reverse: bool,
        use_snapshot: bool,
    ) -> None:
        assert self.db is not None
        snap, view = (None, self.model)
        if use_snapshot and self.snapshots:
            snap, view = self.snapshots[-1]
        expected = sorted(
            (k, v)
            for k, v in view.items()
            if (start is None or k >= start)
            and (end is None or k < end)
            and (prefix is None or k.startswith(prefix))
        )
        if reverse:
            expected.reverse()
        if limit is not None:
            expected = expected[:limit]
        got = self.run(
            self.db.scan(start, end, prefix=prefix, limit=limit, reverse=reverse, snapshot=snap)
        )
        assert got == expected

    @rule(start=keys, moves=st.lists(st.booleans(), max_size=15), writes=st.booleans())
    def iterator_walk(self, start: bytes, moves: list[bool], writes: bool) -> None:
        assert self.db is not None
        view = sorted(self.model.items())
        it = self.db.iterator()

        async def walk() -> None:
            await it.seek(start)
            if writes:  # writes after creation are invisible to the iterator
                await self.db.put(b"k000", b"invisible")  # type: ignore[union-attr]
                self.hist.record(self.db.max_applied_seqno, [(b"k000", b"invisible")])  # type: ignore[union-attr]
            pos = next((i for i, (k, _) in enumerate(view) if k >= start), len(view))
            for fwd in [None, *moves]:
                if fwd is True:
                    await it.next()
                    pos += 1
                elif fwd is False:
                    await it.prev()
                    pos -= 1
                if not 0 <= pos < len(view):
                    assert not it.valid()
                    break
                assert (it.key(), it.value()) == view[pos]
            await it.close()

        self.run(walk())

    @rule()
    def flush(self) -> None:
        assert self.db is not None
        self.run(self.db.flush())
        assert self.db.max_persisted_seqno == self.db.max_applied_seqno

    @rule(start=bounds, end=bounds)
    def compact_range(self, start: bytes | None, end: bytes | None) -> None:
        assert self.db is not None
        self.run(self.db.compact_range(start, end))

    @rule(flush_first=st.booleans())
    def reopen(self, flush_first: bool) -> None:
        assert self.db is not None
        if flush_first:
            self.run(self.db.flush())
        for snap, _ in self.snapshots:
            snap.release()
        self.snapshots.clear()
        self.run(self.db.close())  # an in-flight background flush completes first
        persisted = self.db.max_persisted_seqno
        self.db = self.run(Database.open(self.options, self.p))
        assert self.db.max_applied_seqno == persisted
        # Writes above the persisted seqno were in the memtable only: gone.
        self.hist.ops = [op for op in self.hist.ops if op[0] <= persisted]

    @invariant()
    def seqnos_consistent(self) -> None:
        if self.db is not None:
            assert self.db.max_persisted_seqno <= self.db.max_applied_seqno
            for level in range(1, 7):
                files = self.db.current_version.levels[level]
                for a, b in itertools.pairwise(files):
                    assert a.largest[:-8] < b.smallest[:-8]


DatabaseMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDatabaseMachine = DatabaseMachine.TestCase


class DiskDatabaseMachine(DatabaseMachine):
    """The same machine over the disk persistence (fewer examples: every flush fsyncs)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="lsm-stateful-")
        self.p = self.run(open_disk_persistence(self.dir))

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


DiskDatabaseMachine.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDiskDatabaseMachine = DiskDatabaseMachine.TestCase
