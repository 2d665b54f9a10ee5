"""Hypothesis state machines comparing the database with a sorted-dict model through puts,
deletes, batches, snapshots, gets, scans (forward, reverse, prefix, range), iterator walks,
flushes, compactions and close/reopen, with tiny memtable and file sizes so that flushes,
compactions and trivial moves all happen; and one that runs groups of those concurrently over
disk persistence with tiny table and block caches, injecting manifest writes that land and
then fail (``ConcurrentDiskMachine``; its ``slow`` variant runs far more examples)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm import Database, Snapshot, WriteBatch
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import FileHandle, Persistence
from cachedaemon.lsm.manifest import decode_manifest
from tests.lsm.lsm_helpers import History, manifest_files, stored_files, tiny_options

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


# --- concurrency and ambiguity --------------------------------------------------------------
#
# Issue 11: the two bugs found against LevelDB struck only with concurrent readers over more
# SSTs than ``max_open_files`` (bug 1) and with a manifest write that failed after it landed
# (bug 2). This machine runs a *group* of operations concurrently per step — writes, gets and
# scans at "now" and at snapshots, iterator walks, flushes, compactions — over disk persistence
# with two open files, a block cache smaller than a block and tiny files, and injects manifest
# writes that land and then fail (and ones that fail before landing). Reads at a snapshot must
# equal the model at it; a read at "now" must equal the model at some seqno between its start
# and its end. After a fault the database refuses writes, the file GC deletes nothing that the
# durable manifest names, and a reopen finds whichever manifest is durable, complete.

ReadCheck = tuple[str, Any, Any]  # (kind, what was asked, what came back)


def values_between(hist: History, key: bytes, lo: int, hi: int) -> list[bytes | None]:
    """Every value ``key`` had at some seqno in ``[lo, hi]``."""
    out = [hist.at(lo).get(key)]
    out += [v for s, k, v in hist.ops if k == key and lo < s <= hi]
    return out


op_strategy = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys, st.none()),
    st.tuples(st.just("batch"), st.lists(st.tuples(keys, st.one_of(st.none(), values)),
                                         min_size=1, max_size=12), st.none()),
    st.tuples(st.just("bulk"), st.integers(0, 1000), st.integers(10, 60)),
    st.tuples(st.just("get"), keys, st.none()),
    st.tuples(st.just("snap_get"), st.lists(keys, min_size=1, max_size=6), st.none()),
    st.tuples(st.just("scan"), bounds, st.integers(0, 12)),
    st.tuples(st.just("walk"), keys, st.lists(st.booleans(), max_size=10)),
    st.tuples(st.just("flush"), st.none(), st.none()),
    st.tuples(st.just("compact"), bounds, bounds),
)


class ConcurrentDiskMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="lsm-concurrent-")
        self.p: Persistence = self.run(open_disk_persistence(self.dir))
        self.db: Database | None = None
        self.hist = History()
        self.faults = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(memtable=st.sampled_from([512, 2048]), open_files=st.sampled_from([1, 2]))
    def open_db(self, memtable: int, open_files: int) -> None:
        self.options = tiny_options(
            memtable_bytes=memtable, max_file_bytes=1024, l1_max_bytes=4096, block_size=128,
            max_open_files=open_files, block_cache_bytes=100, file_deletion_delay_s=0,
        )
        self.db = self.run(Database.open(self.options, self.p))

    def teardown(self) -> None:
        try:
            if self.db is not None:
                self.run(self.db.close())
            self.loop.close()
        finally:
            failpoints.disarm()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- one concurrent group -----------------------------------------------------------

    async def _op(self, db: Database, op: tuple[str, Any, Any], checks: list[ReadCheck]) -> None:
        kind, a, b = op
        hist = self.hist
        if kind == "put":
            hist.record(await db.put(a, b), [(a, b)])
        elif kind == "delete":
            hist.record(await db.delete(a), [(a, None)])
        elif kind == "batch":
            wb = WriteBatch()
            for k, v in a:
                wb.put(k, v) if v is not None else wb.delete(k)
            hist.record(await db.apply(wb), a)
        elif kind == "bulk":
            for i in range(b):
                k = KEYS[(a + i * 7) % len(KEYS)]
                v = b"bulk-%d-%d" % (a, i) * 3
                hist.record(await db.put(k, v), [(k, v)])
        elif kind == "get":
            lo = db.max_applied_seqno
            got = await db.get(a)
            checks.append(("get", (a, lo, db.max_applied_seqno), got))
        elif kind == "snap_get":
            with db.create_snapshot() as snap:
                got_all = []
                for k in a:
                    got_all.append(await db.get(k, snapshot=snap))
            checks.append(("snap_get", (a, snap.seqno), got_all))
        elif kind == "scan":
            with db.create_snapshot() as snap:
                got = await db.scan(a, limit=b, snapshot=snap)
            checks.append(("scan", (a, b, snap.seqno), got))
        elif kind == "walk":
            with db.create_snapshot() as snap:
                seen = []
                async with db.iterator(snap) as it:
                    await it.seek(a)
                    for fwd in b:
                        if not it.valid():
                            break
                        seen.append((it.key(), it.value()))
                        await (it.next() if fwd else it.prev())
                    if it.valid():
                        seen.append((it.key(), it.value()))
            checks.append(("walk", (a, b, snap.seqno), seen))
        elif kind == "flush":
            await db.flush()
        elif kind == "compact":
            lo_k, hi_k = (a, b) if a is None or b is None or a <= b else (b, a)
            await db.compact_range(lo_k, hi_k)

    def _check(self, kind: str, asked: Any, got: Any) -> None:
        hist = self.hist
        if kind == "get":
            key, lo, hi = asked
            assert got in values_between(hist, key, lo, hi), (key, lo, hi, got)
        elif kind == "snap_get":
            ks, seqno = asked
            view = hist.at(seqno)
            assert got == [view.get(k) for k in ks]
        elif kind == "scan":
            start, limit, seqno = asked
            want = sorted((k, v) for k, v in hist.at(seqno).items()
                          if start is None or k >= start)[:limit]
            assert got == want
        elif kind == "walk":
            start, moves, seqno = asked
            view = sorted(hist.at(seqno).items())
            pos = next((i for i, (k, _) in enumerate(view) if k >= start), len(view))
            want = []
            for fwd in [*moves, None]:
                if not 0 <= pos < len(view):
                    break
                want.append(view[pos])
                if fwd is None:
                    break
                pos += 1 if fwd else -1
            assert got == want[: len(got)] and len(got) == len(want), (got, want)

    @rule(ops=st.lists(op_strategy, min_size=2, max_size=10))
    def concurrent_group(self, ops: list[tuple[str, Any, Any]]) -> None:
        db = self.db
        assert db is not None
        checks: list[ReadCheck] = []

        async def group() -> None:
            await asyncio.gather(*(self._op(db, op, checks) for op in ops))

        self.run(group())
        for kind, asked, got in checks:
            self._check(kind, asked, got)

    # -- faults -------------------------------------------------------------------------

    @rule(
        point=st.sampled_from(["lsm.disk.manifest.after_rename", "lsm.disk.manifest.before_rename"]),
        compact=st.booleans(),
        readers=st.lists(keys, max_size=6),
    )
    def manifest_write_fails(self, point: str, compact: bool, readers: list[bytes]) -> None:
        """A flush or compaction whose manifest write fails: after the rename (it landed) or
        before it (it did not). Readers run meanwhile."""
        db = self.db
        assert db is not None
        failpoints.arm(point, "raise@1")

        async def attempt() -> None:
            work = db.compact_range() if compact else db.flush()
            results = await asyncio.gather(work, *(db.get(k) for k in readers),
                                           return_exceptions=True)
            for r in results[1:]:  # reads never fail
                assert not isinstance(r, BaseException), r
            # Settle while the fault is armed: a background compaction's manifest write may be
            # in a worker thread right now, and must not meet the fail point after this rule.
            with contextlib.suppress(CacheDaemonError):
                await db.wait_for_background_work()

        try:
            self.run(attempt())
        finally:
            failpoints.disarm()
        if db.background_error is None:
            return  # nothing needed a manifest write
        self.faults += 1
        # The database refuses to go on, and its GC deletes nothing the durable manifest names.
        with pytest.raises(CacheDaemonError):
            self.run(db.put(b"k000", b"refused"))
        self.run(db.collect_garbage())
        durable = self.run(self._durable_files())
        assert durable <= self.run(stored_files(self.p)), "GC deleted durable files"
        self._reopen()

    async def _durable_files(self) -> set[FileHandle]:
        found = await self.p.metadata.read_manifest(1 << 62)
        if found is None:
            return set()
        state = decode_manifest(found[1], "manifest")
        return {f.handle for files in state.levels for f in files}

    def _reopen(self) -> None:
        assert self.db is not None
        self.run(self.db.close())
        self.db = self.run(Database.open(self.options, self.p))
        persisted = self.db.max_persisted_seqno
        self.hist.ops = [op for op in self.hist.ops if op[0] <= persisted]
        assert self.run(self.db.scan()) == sorted(self.hist.at(persisted).items())

    @rule(flush_first=st.booleans())
    def reopen(self, flush_first: bool) -> None:
        assert self.db is not None
        if flush_first:
            self.run(self.db.flush())
        self._reopen()

    @invariant()
    def files_and_seqnos_consistent(self) -> None:
        db = self.db
        if db is None:
            return
        assert db.background_error is None
        assert db.max_persisted_seqno <= db.max_applied_seqno
        assert manifest_files(db) <= self.run(stored_files(self.p))
        for level in range(1, 7):
            for a, b in itertools.pairwise(db.current_version.levels[level]):
                assert a.largest[:-8] < b.smallest[:-8]
        stats = db.stats()
        assert stats["table_cache"]["open"] <= self.options.max_open_files


ConcurrentDiskMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestConcurrentDiskMachine = ConcurrentDiskMachine.TestCase


class SlowConcurrentDiskMachine(ConcurrentDiskMachine):
    """The same machine, far more examples and longer runs (``scripts/test -m slow``)."""


SlowConcurrentDiskMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSlowConcurrentDiskMachine = pytest.mark.slow(SlowConcurrentDiskMachine.TestCase)
