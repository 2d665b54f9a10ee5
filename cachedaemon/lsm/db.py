"""Database: the LSM key-value store (LevelDB's ``DBImpl``, Redpanda's ``lsm::database``).

Writes go to the memtable (:meth:`apply`, atomic per batch). When the memtable passes
``memtable_bytes`` it becomes the immutable memtable and a background *flusher* writes it as
an SST and records it in a new manifest; a background *compactor* keeps the levels in shape;
a background *GC* deletes files nothing references any more. There is no write-ahead log here:
the caller (the metastore) logs its own writes and replays those above
:attr:`max_persisted_seqno` after a crash, passing the original seqnos to :meth:`apply`.

Reads (:meth:`get`, :meth:`iterator`, :meth:`scan`) see the memtable, the immutable memtable,
L0 newest first, then one file per deeper level, at a snapshot seqno. A range scan leaves out
the SSTs whose keys all lie outside its range, and a reverse one positions every level with one
``seek_before``.

Write listeners (:meth:`add_write_listener`) are told every applied batch in the synchronous
step that makes it visible, so a cache above the database (the L1 row cache) can stay equal to
it.

Write throttling: while L0 has more than ``l0_slowdown_writes_trigger`` files a writer sleeps
once; while an immutable memtable is still being flushed, or L0 has
``l0_stop_writes_trigger`` files, writers wait for background work.

Concurrency: one database lives on one shard's loop. Memtable mutation is synchronous, so a
batch is all-or-nothing for readers. The flusher, compactor and GC are tasks holding the
database's :class:`~cachedaemon.core.gate.Gate`; :meth:`close` stops them and waits. One
compaction runs at a time (``_compaction_lock``); a flush finishing during a compaction goes to
L0 so it cannot overlap the compaction's outputs. Manifest writes are serialised by the
version set. A background failure is sticky: later writes and flushes raise it (reopen to
recover), as LevelDB's ``bg_error_``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sortedcontainers import SortedList

from cachedaemon.clock import NO_DEADLINE, Deadline, remaining
from cachedaemon.core.failpoints import failpoint
from cachedaemon.core.gate import Gate
from cachedaemon.core.preempt import TaskQuota
from cachedaemon.errors import (
    CacheDaemonError,
    DeadlineExceeded,
    GateClosed,
    InvalidArgument,
    IOFailure,
    ReadOnly,
)
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.compaction import (
    Compaction,
    compact_range_compaction,
    do_compaction_work,
    pick_compaction,
)
from cachedaemon.lsm.db_iter import DBIter
from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_SEEK, MAX_SEQNO, trailer, user_prefix
from cachedaemon.lsm.file_gc import FileGC
from cachedaemon.lsm.io.persistence import FileHandle, Persistence
from cachedaemon.lsm.iterator import InternalIterator
from cachedaemon.lsm.level_iterator import LevelIterator
from cachedaemon.lsm.memtable import MemTable
from cachedaemon.lsm.merger import MergingIterator
from cachedaemon.lsm.options import NUM_LEVELS, Options
from cachedaemon.lsm.table_builder import SstBuilder
from cachedaemon.lsm.table_cache import TableCache
from cachedaemon.lsm.version_edit import FileMeta, VersionEdit
from cachedaemon.lsm.version_set import Version, VersionSet
from cachedaemon.lsm.write_batch import WriteBatch

log = logging.getLogger(__name__)

#: ``range`` reads this many entries at a time (the iterator is pinned to its snapshot, so
#: reading ahead changes nothing a caller sees).
_RANGE_CHUNK = 64
#: No limit, for the loop that counts down (larger than any database holds).
_NO_LIMIT = 1 << 62

#: Entries a flush adds in one go before it looks at its task quota.
_FLUSH_STEP = 64

#: Told about every applied batch's ``(kind, key, value)`` operations (``None``: rows changed
#: wholesale); see :meth:`Database.add_write_listener`.
WriteListener = Callable[[list[tuple[int, bytes, bytes]] | None], None]


class Snapshot:
    """A pinned read point. Release it (or use ``with``) so compaction may drop old versions."""

    __slots__ = ("_db", "released", "seqno")

    def __init__(self, db: Database, seqno: int) -> None:
        self._db = db
        self.seqno = seqno
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._db._snapshots.remove(self.seqno)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass
class LevelStats:
    files: int
    bytes: int


def prefix_successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: unbounded)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))


class Database:
    """An open LSM database. Create with :meth:`open`; always :meth:`close`."""

    def __init__(self, options: Options, persistence: Persistence) -> None:
        self.options = options
        self._persistence = persistence
        self._data = persistence.data
        self._versions = VersionSet(options, persistence.metadata)
        self._block_cache = BlockCache(options.block_cache_bytes)
        self._tables = TableCache(
            self._data,
            self._block_cache,
            options.max_open_files,
            verify_checksums=options.verify_checksums,
        )
        self._mem = MemTable()
        self._imm: MemTable | None = None
        self._max_applied = 0
        self._snapshots: SortedList = SortedList()
        self._gate = Gate("lsm.database")
        self._bg_error: BaseException | None = None
        self._bg_event = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._compact_wake = asyncio.Event()
        self._gc_wake = asyncio.Event()
        self._compaction_lock = asyncio.Lock()
        self._compacting = False
        self._pending_outputs: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._gc = FileGC(
            self._data,
            self._versions,
            self._tables,
            options,
            lambda: self._pending_outputs,
            lambda: self._bg_error,
        )
        self._closed = False
        self._write_listeners: list[WriteListener] = []
        self.flushes = 0
        self.compactions = 0
        self.trivial_moves = 0
        self.write_slowdowns = 0
        self.write_stalls = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, options: Options, persistence: Persistence) -> Database:
        """Open (recovering the newest manifest at or below ``options.epoch``)."""
        db = cls(options, persistence)
        await db._open()
        return db

    async def _open(self) -> None:
        vs = self._versions
        await vs.recover()
        if not self.options.readonly:
            # Files of our epoch above the manifest's next_file_id are leftovers of a crashed
            # incarnation of this epoch: never reuse their ids (creation is exclusive).
            async for handle in self._data.list_files():
                if handle.epoch == vs.epoch and handle.id >= vs.next_file_id:
                    vs.next_file_id = handle.id + 1
        self._max_applied = vs.last_seqno
        if not self.options.readonly:
            self._spawn(self._flusher(), "flusher")
            self._spawn(self._compactor(), "compactor")
            self._spawn(self._gc_loop(), "gc")
            self._compact_wake.set()
            self._gc_wake.set()

    def _spawn(self, coro: Any, name: str) -> None:
        holder = self._gate.hold()

        async def run() -> None:
            with holder:
                await coro

        self._tasks.append(asyncio.get_running_loop().create_task(run(), name=f"lsm.{name}"))

    async def close(self) -> None:
        """Stop background work and close files. Unflushed memtable data is *not* persisted
        (call :meth:`flush` first if the caller has no log to replay it from)."""
        if self._closed:
            return
        self._closed = True
        closing = self._gate.close()
        for ev in (self._flush_wake, self._compact_wake, self._gc_wake):
            ev.set()
        self._signal_bg()
        try:
            await closing
        finally:
            for t in self._tasks:
                if not t.done():
                    t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._tables.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- properties ------------------------------------------------------------------------

    @property
    def max_applied_seqno(self) -> int:
        return self._max_applied

    @property
    def max_persisted_seqno(self) -> int:
        return self._versions.last_seqno

    @property
    def epoch(self) -> int:
        return self._versions.epoch

    @property
    def background_error(self) -> BaseException | None:
        """The sticky failure of background work, or ``None``. Once set, writes and flushes
        raise it and the file GC deletes nothing (a failed manifest write may have landed);
        only reopening, which re-reads the durable manifest, recovers (LevelDB's
        ``bg_error_``)."""
        return self._bg_error

    @property
    def current_version(self) -> Version:
        return self._versions.current

    # --- writes ----------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch, seqno: int | None = None) -> int:
        """Apply ``batch`` atomically; returns the seqno of its last operation.

        With ``seqno`` the operations get ``seqno, seqno + 1, ...`` (it must exceed
        :attr:`max_applied_seqno`); otherwise the database assigns the next ones.
        """
        if self.options.readonly:
            raise ReadOnly("database is open read-only")
        self._gate.check()
        if seqno is not None and seqno <= self._max_applied:
            raise InvalidArgument(f"seqno {seqno} not above max applied {self._max_applied}")
        ops = batch.ops
        if not ops:
            return self._max_applied
        opts = self.options
        if (
            self._bg_error is not None
            or self._mem.approximate_bytes > opts.memtable_bytes
            or len(self._versions.current.levels[0]) > opts.l0_slowdown_writes_trigger
        ):
            await self._make_room_for_write(force=False)
        base = self._max_applied + 1 if seqno is None else seqno
        if base <= self._max_applied:
            raise InvalidArgument(f"seqno {base} not above max applied {self._max_applied}")
        if base + len(ops) - 1 > MAX_SEQNO:
            raise InvalidArgument("seqno overflow")
        self._max_applied = self._mem.apply(ops, base, batch.approximate_bytes)
        for listener in self._write_listeners:
            listener(ops)
        return self._max_applied

    async def put(self, key: bytes, value: bytes) -> int:
        return await self.apply(WriteBatch().put(key, value))

    async def delete(self, key: bytes) -> int:
        return await self.apply(WriteBatch().delete(key))

    def add_write_listener(self, listener: WriteListener) -> None:
        """Call ``listener(ops)`` with the operations of every batch applied from now on, in
        seqno order, synchronously in the step that makes them visible (so a reader on this
        loop never sees the database and the listener's view disagree); ``listener(None)``
        when a read-only refresh changed rows it did not see one by one. A listener must not
        raise or wait (it runs inside :meth:`apply`)."""
        self._write_listeners.append(listener)

    def remove_write_listener(self, listener: WriteListener) -> None:
        with contextlib.suppress(ValueError):
            self._write_listeners.remove(listener)

    def _raise_bg_error(self) -> None:
        e = self._bg_error
        if e is not None:
            raise IOFailure(f"lsm background work failed: {e}") from e

    async def _make_room_for_write(self, force: bool) -> bool:
        """Returns True if it swapped the memtable (only with ``force``)."""
        opts = self.options
        allow_delay = not force
        while True:
            self._raise_bg_error()
            self._gate.check()
            l0 = self._versions.current.num_files(0)
            if allow_delay and l0 > opts.l0_slowdown_writes_trigger:
                allow_delay = False
                self.write_slowdowns += 1
                self._compact_wake.set()
                # A throttle, not a timer: real time (an injected manual clock would park
                # writers forever), and cut short when background work makes progress.
                ev = self._bg_event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), opts.l0_slowdown_sleep_s)
            elif (not force and self._mem.approximate_bytes <= opts.memtable_bytes) or (force and self._mem.empty):
                return False
            elif self._imm is not None or l0 >= opts.l0_stop_writes_trigger:
                self.write_stalls += 1
                self._compact_wake.set()
                await self._wait_bg(NO_DEADLINE)
            else:
                self._imm = self._mem
                self._mem = MemTable()
                self._flush_wake.set()
                return True

    def _signal_bg(self) -> None:
        ev = self._bg_event
        self._bg_event = asyncio.Event()
        ev.set()

    async def _wait_bg(self, deadline: Deadline) -> None:
        ev = self._bg_event
        if deadline == NO_DEADLINE:
            await ev.wait()
            return
        left = remaining(deadline, self.options.clock)
        if left <= 0:
            raise DeadlineExceeded("lsm flush deadline passed")
        try:
            await asyncio.wait_for(ev.wait(), left)
        except TimeoutError:
            raise DeadlineExceeded("lsm flush deadline passed") from None

    async def flush(self, deadline: Deadline = NO_DEADLINE) -> None:
        """Persist everything applied so far: afterwards ``max_persisted_seqno >=`` the
        ``max_applied_seqno`` seen on entry. Raises DeadlineExceeded past ``deadline``."""
        if self.options.readonly:
            return
        target = self._max_applied
        with self._gate.hold():
            while self._versions.last_seqno < target:
                self._raise_bg_error()
                if self._imm is None and not self._mem.empty:
                    self._imm = self._mem
                    self._mem = MemTable()
                    self._flush_wake.set()
                    continue
                await self._wait_bg(deadline)
                self._gate.check()

    async def wait_for_background_work(self, deadline: Deadline = NO_DEADLINE) -> None:
        """Wait until no flush is pending and no level needs compaction (tests, benchmarks,
        shutdown paths that want a settled tree). Raises a background failure."""
        if self.options.readonly:
            return
        with self._gate.hold():
            while True:
                self._raise_bg_error()
                if (
                    self._imm is None
                    and not self._compaction_lock.locked()
                    and self._versions.current.compaction_score < 1
                ):
                    return
                self._compact_wake.set()
                await self._wait_bg(deadline)

    # --- background: flush -------------------------------------------------------------------

    async def _flusher(self) -> None:
        try:
            while True:
                await self._flush_wake.wait()
                self._flush_wake.clear()
                if self._gate.is_closed:
                    return
                while self._imm is not None and not self._gate.is_closed:
                    await self._flush_imm()
                    self._signal_bg()
        except GateClosed:
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set_bg_error(e)

    def _set_bg_error(self, e: BaseException) -> None:
        log.error("lsm background work failed: %r", e)
        if self._bg_error is None:
            self._bg_error = e
        self._signal_bg()

    async def _new_builder(self, level: int) -> SstBuilder:
        vs = self._versions
        fid = vs.new_file_id()
        self._pending_outputs.add(fid)
        handle = FileHandle(fid, vs.epoch)
        try:
            writer = await self._data.open_sequential_writer(handle)
        except BaseException:
            self._pending_outputs.discard(fid)
            raise
        opts = self.options
        return SstBuilder(
            handle,
            writer,
            block_size=opts.block_size,
            restart_interval=opts.block_restart_interval,
            bloom_bits_per_key=opts.bloom_bits_per_key,
            compression=opts.compression_for(level),
            zstd_level=opts.zstd_level,
        )

    async def _write_table(self, imm: MemTable) -> FileMeta:
        builder = await self._new_builder(0)
        entries = imm.entries()
        seqnos = (imm.first_seqno, imm.last_seqno)
        quota = TaskQuota()  # the shard serves requests meanwhile: hold its loop no longer
        try:
            while chunk := list(itertools.islice(entries, _FLUSH_STEP)):
                builder.add_many(chunk, seqnos)
                if builder.should_drain:
                    await builder.drain()
                await quota.maybe_yield()
            size = await builder.finish()
        except BaseException:
            self._pending_outputs.discard(builder.handle.id)
            await asyncio.shield(builder.abort())
            raise
        assert builder.smallest is not None
        return FileMeta(
            builder.handle,
            size,
            builder.smallest,
            builder.largest,
            builder.oldest_seqno,
            builder.newest_seqno,
        )

    async def _flush_imm(self) -> None:
        imm = self._imm
        assert imm is not None
        meta: FileMeta | None = None
        try:
            if not imm.empty:
                meta = await self._write_table(imm)
            edit = VersionEdit(last_seqno=imm.last_seqno)
            await failpoint("lsm.flush.before_manifest")
            if meta is None:
                await self._versions.log_and_apply(edit)
            elif self._compaction_lock.locked():
                edit.add_file(0, meta)
                await self._versions.log_and_apply(edit)
            else:
                async with self._compaction_lock:
                    level = self._versions.current.pick_level_for_memtable_output(
                        meta.smallest[:-8], meta.largest[:-8], self.options
                    )
                    edit.add_file(level, meta)
                    await self._versions.log_and_apply(edit)
        finally:
            if meta is not None:
                self._pending_outputs.discard(meta.handle.id)
        self._imm = None
        self.flushes += 1
        self._compact_wake.set()
        self._gc_wake.set()

    # --- background: compaction ------------------------------------------------------------

    def _smallest_snapshot(self) -> int:
        if self._snapshots:
            return int(self._snapshots[0])
        return self._max_applied

    async def _compactor(self) -> None:
        try:
            while True:
                await self._compact_wake.wait()
                self._compact_wake.clear()
                while not self._gate.is_closed:
                    async with self._compaction_lock:
                        vs = self._versions
                        c = pick_compaction(
                            vs.current, vs.compact_pointers, self.options, vs.file_to_compact
                        )
                        if c is None:
                            break
                        await self._run_compaction(c)
                    self._signal_bg()
                if self._gate.is_closed:
                    return
        except GateClosed:
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set_bg_error(e)

    async def _run_compaction(self, c: Compaction) -> None:
        """REQUIRES: ``_compaction_lock`` held."""
        vs = self._versions
        if c.is_trivial_move():
            f = c.inputs[0][0]
            edit = c.edit
            edit.delete_file(c.level, f.handle)
            edit.add_file(c.output_level, f)
            await vs.log_and_apply(edit)
            self.trivial_moves += 1
            return
        self._compacting = True
        vs.pin(c.version)
        allocated: list[int] = []
        try:
            level = c.output_level

            async def new_output() -> SstBuilder:
                builder = await self._new_builder(level)
                allocated.append(builder.handle.id)
                return builder

            outputs = await do_compaction_work(
                c, self._tables, self._smallest_snapshot(), new_output, self._gate.check
            )
            edit = c.edit
            c.add_input_deletions(edit)
            for meta in outputs:
                edit.add_file(level, meta)
            await failpoint("lsm.compaction.before_manifest")
            await vs.log_and_apply(edit)
            self.compactions += 1
        finally:
            self._compacting = False
            vs.unpin(c.version)
            self._pending_outputs.difference_update(allocated)
            self._gc_wake.set()

    async def compact_range(self, start: bytes | None = None, end: bytes | None = None) -> None:
        """Flush, then compact every level's files overlapping ``[start, end]`` (user keys,
        ``None`` = unbounded) down one level past the deepest level holding any of them
        (files already in the last level stay), dropping shadowed versions and tombstones."""
        if self.options.readonly:
            raise ReadOnly("database is open read-only")
        await self.flush()
        begin = user_prefix(start) if start is not None else None
        stop = user_prefix(end) if end is not None else None
        with self._gate.hold():
            vs = self._versions
            max_level = 1
            for level in range(1, NUM_LEVELS):
                if vs.current.overlapping_inputs(level, begin, stop):
                    max_level = level
            # Like LevelDB, push the range down to the deepest level holding it; unlike
            # LevelDB, also rewrite that level's files one level down (RocksDB's bottommost
            # compaction), so garbage sitting in a single level is dropped too.
            last = max_level + 1 if max_level < NUM_LEVELS - 1 else max_level
            for level in range(last):
                while True:
                    self._raise_bg_error()
                    async with self._compaction_lock:
                        c = compact_range_compaction(vs.current, level, begin, stop, self.options)
                        if c is None:
                            break
                        try:
                            await self._run_compaction(c)
                        except Exception as e:
                            if not isinstance(e, CacheDaemonError | GateClosed):
                                raise
                            self._set_bg_error(e)
                            raise
                    self._signal_bg()

    # --- background: file GC ---------------------------------------------------------------

    async def _gc_loop(self) -> None:
        clock = self.options.clock
        try:
            while not self._gate.is_closed:
                self._gc_wake.clear()
                try:
                    due = await self._gc.collect()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # GC failures are retried on the next pass
                    log.warning("lsm file gc failed: %r", e)
                    due = 1.0
                if self._closed:
                    return
                waiter = asyncio.ensure_future(self._gc_wake.wait())
                waits: set[asyncio.Future[Any]] = {waiter}
                if due is not None:
                    waits.add(asyncio.ensure_future(clock.sleep(due)))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
        except GateClosed:
            return

    async def collect_garbage(self) -> int:
        """Run one GC pass now (tests, admin). Returns how many files were deleted so far."""
        await self._gc.collect()
        return self._gc.deleted

    # --- reads -----------------------------------------------------------------------------

    def create_snapshot(self, seqno: int | None = None) -> Snapshot:
        """Pin the current seqno (or ``seqno``): reads at it never change, compaction keeps
        its versions.

        REQUIRES: ``max_persisted_seqno <= seqno <= max_applied_seqno``. Every version visible
        at such a seqno still exists (SSTs hold only persisted data, so compaction cannot yet
        have dropped a version that a newer, unpersisted write shadows); an older seqno could
        name versions that are already gone, so it is refused.
        """
        self._gate.check()
        if seqno is None:
            seqno = self._max_applied
        elif not self.max_persisted_seqno <= seqno <= self._max_applied:
            raise InvalidArgument(
                f"snapshot seqno {seqno} outside [{self.max_persisted_seqno}, {self._max_applied}]"
            )
        snap = Snapshot(self, seqno)
        self._snapshots.add(snap.seqno)
        return snap

    async def get(self, key: bytes, snapshot: Snapshot | int | None = None) -> bytes | None:
        """The value of ``key`` at ``snapshot`` (default: now), or ``None``.

        A bare ``int`` snapshot is a seqno, not a registration: the versions it needs are kept
        only while a :class:`Snapshot` at or below it is live (compaction drops versions
        shadowed at or below the oldest registered snapshot, as LevelDB does). Use
        :meth:`create_snapshot` for reads that must stay stable across awaits.
        """
        if snapshot is None:
            snap = self._max_applied
        elif isinstance(snapshot, int):
            snap = snapshot
        else:
            snap = snapshot.seqno
        node = self._mem.get(key, snap)
        if node is None and self._imm is not None:
            node = self._imm.get(key, snap)
        if node is not None:
            return None if node[1] == KIND_DELETE else node[2]
        vs = self._versions
        version = vs.current
        if not version.num_files_total:
            return None
        # Held, not just checked: close() waits for in-flight reads before it closes readers.
        holder = self._gate.hold()
        uprefix = user_prefix(key)
        seek = uprefix + trailer(snap, KIND_SEEK)
        vs.pin(version)
        tables = self._tables
        first: tuple[int, FileMeta] | None = None
        consulted = 0
        try:
            for level, f in version.files_for_get(uprefix):
                consulted += 1
                if first is None:
                    first = (level, f)
                table = tables.lookup(f.handle) or await tables.find(f.handle)
                try:
                    found = await table.get(seek, uprefix)
                finally:
                    tables.release(table)
                if found is not None:
                    k, v = found
                    return None if k[-1] == 0xFE else v
            return None
        finally:
            holder.release()
            vs.unpin(version)
            # LevelDB's seek compaction: a file that keeps being consulted in vain before
            # the file that answers is worth compacting into the next level.
            if consulted > 1 and first is not None and vs.charge_seek(*first):
                self._compact_wake.set()

    def _internal_iterator(
        self, lo: bytes | None = None, hi: bytes | None = None
    ) -> tuple[InternalIterator, Version]:
        """The merged internal iterator over the memtables and the current version, and that
        version. With ``lo``/``hi`` (user prefixes, :func:`user_prefix`), SSTs whose keys all
        lie outside ``[lo, hi)`` are left out: the caller never reads outside that range."""
        children: list[InternalIterator] = [self._mem.iterator()]
        if self._imm is not None:
            children.append(self._imm.iterator())
        version = self._versions.current
        tables = self._tables
        for f in version.levels[0]:
            if (lo is None or f.largest[:-8] >= lo) and (hi is None or f.smallest[:-8] < hi):
                children.append(LevelIterator([f], tables))
        for level in range(1, NUM_LEVELS):
            files = version.levels[level]
            if not files:
                continue
            if lo is not None or hi is not None:
                files = version.files_in_range(level, lo, hi)
                if not files:
                    continue
            children.append(LevelIterator(files, tables))
        it = children[0] if len(children) == 1 else MergingIterator(children)
        return it, version

    @staticmethod
    def _seqno(snapshot: Snapshot | int | None, default: int) -> int:
        if snapshot is None:
            return default
        if isinstance(snapshot, int):
            return snapshot
        return snapshot.seqno

    def _make_iterator(
        self, snap: int, reverse: bool, lo: bytes | None = None, hi: bytes | None = None
    ) -> tuple[DBIter, Callable[[], None]]:
        it, version = self._internal_iterator(lo, hi)
        vs = self._versions
        vs.pin(version)
        unpinned = False

        def unpin() -> None:
            nonlocal unpinned
            if not unpinned:
                unpinned = True
                vs.unpin(version)

        return DBIter(it, snap, on_close=unpin, reverse=reverse), unpin

    def iterator(self, snapshot: Snapshot | int | None = None, *, reverse: bool = False) -> DBIter:
        """A user-key iterator at ``snapshot`` (default: now). Position it with
        ``seek``/``seek_to_first``/``seek_to_last`` and step with ``next``/``prev``; close it
        (or ``async with``). ``async for k, v in it`` walks the whole database ascending, or
        descending with ``reverse=True``, and closes it."""
        self._gate.check()
        db_iter, unpin = self._make_iterator(self._seqno(snapshot, self._max_applied), reverse)
        # An iterator the caller forgets to close still unpins its version when collected.
        weakref.finalize(db_iter, unpin)
        return db_iter

    def _range_iterator(
        self, snapshot: Snapshot | int | None, start: bytes | None, end: bytes | None
    ) -> DBIter:
        """An iterator for :meth:`range`/:meth:`scan` over ``[start, end)`` only: SSTs outside
        the range are left out, and it is always closed by its caller (no finalizer)."""
        self._gate.check()
        lo = None if start is None else user_prefix(start)
        hi = None if end is None else user_prefix(end)
        return self._make_iterator(self._seqno(snapshot, self._max_applied), False, lo, hi)[0]

    @staticmethod
    def _range_bounds(
        start: bytes | None, end: bytes | None, prefix: bytes | None, limit: int | None
    ) -> tuple[bytes | None, bytes | None, bool]:
        """``(start, end, empty)`` with ``prefix`` folded into the bounds."""
        if prefix is not None:
            if start is None or start < prefix:
                start = prefix
            succ = prefix_successor(prefix)
            if succ is not None and (end is None or succ < end):
                end = succ
        empty = (limit is not None and limit <= 0) or (
            start is not None and end is not None and start >= end
        )
        return start, end, empty

    @staticmethod
    async def _position(it: DBIter, start: bytes | None, end: bytes | None, reverse: bool) -> None:
        if not reverse:
            if start is None:
                await it.seek_to_first()
            else:
                await it.seek(start)
        elif end is None:
            await it.seek_to_last()
        else:
            await it.seek_before(end)

    async def range(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
        snapshot: Snapshot | int | None = None,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` for ``start <= key < end`` (and starting with ``prefix``),
        ascending or (``reverse``) descending, at most ``limit`` items."""
        start, end, empty = self._range_bounds(start, end, prefix, limit)
        if empty:
            return
        left = _NO_LIMIT if limit is None else limit
        async with self._range_iterator(snapshot, start, end) as it:
            await self._position(it, start, end, reverse)
            while True:
                chunk: list[tuple[bytes, bytes]] = []
                more = await self._collect(it, start, end, reverse,
                                           min(left, _RANGE_CHUNK), chunk)
                for kv in chunk:
                    yield kv
                left -= len(chunk)
                if not more or left <= 0:
                    return
                await (it.prev() if reverse else it.next())

    async def scan(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        limit: int | None = None,
        reverse: bool = False,
        snapshot: Snapshot | int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """:meth:`range` collected into a list (one coroutine, no generator step per item)."""
        start, end, empty = self._range_bounds(start, end, prefix, limit)
        if empty:
            return []
        out: list[tuple[bytes, bytes]] = []
        it = self._range_iterator(snapshot, start, end)
        try:
            await self._position(it, start, end, reverse)
            await self._collect(it, start, end, reverse,
                                _NO_LIMIT if limit is None else limit, out)
        finally:
            await it.close()
        return out

    @staticmethod
    async def _collect(it: DBIter, start: bytes | None, end: bytes | None, reverse: bool,
                       room: int, out: list[tuple[bytes, bytes]]) -> bool:
        """Append to ``out`` the entries from ``it``'s position on, in its direction, while
        they lie in ``[start, end)``, at most ``room`` of them (``room`` >= 1). True if it
        stopped for ``room`` (on the last entry taken, not past it: step before calling
        again), False at the range's or the data's end. The one loop of :meth:`range` and
        :meth:`scan`."""
        while it.valid():
            k = it.key()
            if reverse:
                if start is not None and k < start:
                    return False
            elif end is not None and k >= end:
                return False
            out.append((k, it.value()))
            room -= 1
            if room <= 0:
                return True
            await (it.prev() if reverse else it.next())
        return False

    # --- read-only replicas --------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Read-only: adopt the newest manifest. ``True`` if it changed anything."""
        if not self.options.readonly:
            raise InvalidArgument("refresh() is for read-only databases")
        with self._gate.hold():
            changed = await self._versions.refresh()
            self._max_applied = max(self._max_applied, self._versions.last_seqno)
            if changed:
                for listener in self._write_listeners:
                    listener(None)
            return changed

    # --- introspection -------------------------------------------------------------------------

    def level_stats(self) -> list[LevelStats]:
        v = self._versions.current
        return [LevelStats(len(files), sum(f.size for f in files)) for files in v.levels]

    def stats(self) -> dict[str, Any]:
        bc, tc = self._block_cache, self._tables
        v = self._versions.current

        def rate(h: int, m: int) -> float:
            return h / (h + m) if h + m else 0.0

        return {
            "levels": [{"files": s.files, "bytes": s.bytes} for s in self.level_stats()],
            "memtable_bytes": self._mem.approximate_bytes,
            "immutable_memtable": self._imm is not None,
            "max_applied_seqno": self._max_applied,
            "max_persisted_seqno": self.max_persisted_seqno,
            "next_file_id": self._versions.next_file_id,
            "epoch": self._versions.epoch,
            "compaction_score": v.compaction_score,
            "flushes": self.flushes,
            "compactions": self.compactions,
            "seek_compaction_pending": self._versions.file_to_compact is not None,
            "trivial_moves": self.trivial_moves,
            "write_slowdowns": self.write_slowdowns,
            "write_stalls": self.write_stalls,
            "files_deleted": self._gc.deleted,
            "live_snapshots": len(self._snapshots),
            "block_cache": {
                "hits": bc.hits,
                "misses": bc.misses,
                "hit_rate": rate(bc.hits, bc.misses),
                "usage_bytes": bc.usage_bytes,
                "capacity_bytes": bc.capacity_bytes,
            },
            "table_cache": {
                "hits": tc.hits,
                "misses": tc.misses,
                "hit_rate": rate(tc.hits, tc.misses),
                "open": len(tc),
            },
        }
