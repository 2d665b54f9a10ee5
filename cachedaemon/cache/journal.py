"""The cache index's writer: appends journal records and writes snapshots, in its own thread.

Owned by the cache coordinator on shard 0; the index files are written by nothing else. The
loop side (:class:`IndexJournal`'s public methods, called on shard 0's loop) only queues
operations: everything queued in one turn of the loop is handed to the writer thread at once,
and the thread turns whatever it finds queued into as few records as it can (consecutive
operations of one kind become one batch record) and writes them with one ``pwrite``: a group
commit. So the loop never waits on the disk, and a burst of commits costs one write.

The journal is ``fdatasync``-ed at most once a second (and on :meth:`flush` and at close): a
crash of the process loses nothing written, a power loss up to a second of records, which the
start-up walk puts right (the bucket is authoritative; a lost record is at worst a file the
index does not know, or an entry whose file is gone). A staging file's BEGIN record is the one
a caller waits for (:meth:`begin`): it must be in the file before the ``.part`` is created, so
that a restart finds every leftover without walking the tree.

**Compaction** (:meth:`snapshot`): the coordinator hands over a copy of the index and of the
live staging files; the thread writes pending records, then the snapshot of generation G+1 to
``%tracker.tmp`` (fdatasync), an empty journal of generation G+1 to ``%tracker.journal.tmp``
(fdatasync), renames the snapshot into place, then the journal, and fsyncs the directory. A
crash between the two renames leaves the new snapshot and the old journal (generation G),
which the reader recognises as older than the snapshot and ignores. Records queued after the
snapshot request go to the new journal.

A write that fails is logged and the journal marked :attr:`broken` (records are dropped, not
retried, and waiters are released so that writers go on); the coordinator then asks for a
snapshot, which rewrites everything. ENOSPC is reported to the coordinator too.

Byte format: :mod:`cachedaemon.cache.index_format`. Fail points (thread): ``cache.journal.
append`` (before a group is written), ``cache.journal.torn`` (when armed, half of a group is
written before it is reached), ``cache.journal.after_write``, ``cache.snapshot.write`` (the
snapshot written, before its rename), ``cache.snapshot.renamed`` (before the new journal's
rename), ``cache.journal.switched`` (after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachedaemon.cache import index_format as fmt
from cachedaemon.cache.keys import JOURNAL_NAME, JOURNAL_TMP_NAME, TRACKER_NAME, TRACKER_TMP_NAME
from cachedaemon.core import failpoints
from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir

log = logging.getLogger("cachedaemon.cache")

#: The journal is fdatasync-ed at most this often (and on flush/close).
SYNC_INTERVAL_S = 1.0
#: Entries per ENTRIES record of a snapshot.
SNAPSHOT_CHUNK = 65536
#: Compaction is asked for once the journal is larger than the snapshot and at least this.
COMPACT_MIN_BYTES = 4 << 20

_WAIT, _SYNC, _SNAPSHOT, _CLOSE = range(100, 104)


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_snapshot(path: Path, generation: int, entries: dict[str, int],
                   staging: list[str]) -> int:
    """Write a snapshot file of ``generation`` at ``path`` (fdatasync-ed, not renamed);
    return its size. Blocking."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        offset = 0

        def put(data: bytes) -> None:
            nonlocal offset
            _write_all(fd, data, offset)
            offset += len(data)

        put(fmt.encode_header(fmt.SNAPSHOT_MAGIC, generation))
        # Chunk by chunk (the dict is this thread's own copy): each step is short, so the GIL
        # goes back to the event loop between them instead of after one long list().
        keys, values = iter(entries), iter(entries.values())
        count = total = 0
        while True:
            paths = list(itertools.islice(keys, SNAPSHOT_CHUNK))
            if not paths:
                break
            sizes = list(itertools.islice(values, len(paths)))
            put(fmt.encode_batch(fmt.ENTRIES, paths, sizes))
            count += len(paths)
            total += sum(sizes)
        if staging:
            put(fmt.encode_batch(fmt.STAGING, staging))
        put(fmt.encode_end(count, total, len(staging)))
        os.fdatasync(fd)
        return offset
    finally:
        os.close(fd)


def create_journal(path: Path, generation: int) -> int:
    """Create an empty journal of ``generation`` at ``path`` (fdatasync-ed); return an fd open
    for writing. Blocking."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, fmt.encode_header(fmt.JOURNAL_MAGIC, generation), 0)
        os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


class IndexJournal:
    """The writer of the index files. See the module docstring. Shard 0 only."""

    def __init__(
        self,
        root: Path,
        generation: int,
        *,
        journal_length: int | None,
        snapshot_bytes: int,
        on_grow: Callable[[], None],
        on_disk_full: Callable[[], None],
    ) -> None:
        """``journal_length``: the valid length of the existing journal of ``generation`` (the
        file is cut to it), or ``None`` when there is none to continue (a fresh one of
        ``generation`` is made, unless the first job is a snapshot, which makes one anyway)."""
        self.root = root
        self.generation = generation
        self.snapshot_bytes = snapshot_bytes
        self.journal_bytes = 0  # appended since the snapshot
        self.records = 0
        self.groups = 0
        self.snapshots = 0
        self.failures = 0
        self.broken = False
        self._journal_length = journal_length
        self._on_grow = on_grow
        self._on_disk_full = on_disk_full
        self._loop = asyncio.get_running_loop()
        self._pending: list[tuple[Any, ...]] = []
        self._handover_scheduled = False
        self._queue: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()
        self._fd: int | None = None
        self._offset = 0
        self._dirty = False
        self._last_sync = time.monotonic()
        self._grow_signalled = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cache-index-journal",
                                        daemon=True)
        self._thread.start()

    # --- loop side ----------------------------------------------------------------------------

    def _put(self, item: tuple[Any, ...]) -> None:
        self._pending.append(item)
        if not self._handover_scheduled:
            self._handover_scheduled = True
            self._loop.call_soon(self._handover)

    def _handover(self) -> None:
        self._handover_scheduled = False
        items, self._pending = self._pending, []
        if not items:
            return
        with self._cond:
            self._queue.extend(items)
            self._cond.notify()

    def commit(self, path: str, size: int) -> None:
        self._put((fmt.COMMIT, path, size))

    def remove(self, path: str) -> None:
        self._put((fmt.REMOVE, path))

    def touches(self, paths: list[str]) -> None:
        if paths:
            self._put((fmt.TOUCH, paths))

    def finish(self, part: str) -> None:
        self._put((fmt.FINISH, part))

    def begin(self, part: str) -> asyncio.Future[None]:
        """Queue a BEGIN record; the future resolves once it is written (not synced)."""
        self._put((fmt.BEGIN, part))
        return self._marker(_WAIT)

    def flush(self) -> asyncio.Future[None]:
        """Resolves once everything queued before is written and fdatasync-ed."""
        return self._marker(_SYNC)

    def snapshot(self, entries: dict[str, int], staging: list[str]) -> asyncio.Future[int]:
        """Write a snapshot of ``entries`` (a copy the writer owns from now on) and start the
        next journal generation. Resolves with the snapshot's size (0 if it failed)."""
        fut: asyncio.Future[int] = self._loop.create_future()
        self._put((_SNAPSHOT, entries, staging, fut))
        self._grow_signalled = True  # until this snapshot is done
        return fut

    def _marker(self, kind: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._put((kind, fut))
        return fut

    async def close(self) -> None:
        """Write and sync what is queued, close the file, end the thread. Idempotent."""
        if self._closing:
            return
        self._closing = True
        fut: asyncio.Future[None] = self._loop.create_future()
        self._put((_CLOSE, fut))
        self._handover()
        await asyncio.shield(fut)
        await asyncio.to_thread(self._thread.join, 10.0)

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._open()
        except OSError as exc:
            self._fail("cannot open the index journal", exc)
        while True:
            with self._cond:
                if not self._queue:
                    timeout = None  # idle: nothing to sync either
                    if self._dirty:
                        timeout = max(0.0, self._last_sync + SYNC_INTERVAL_S - time.monotonic())
                    self._cond.wait(timeout)
                items, self._queue = self._queue, []
            if not items:
                if self._dirty and time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
                    self._sync()
                continue
            try:
                if self._process(items):
                    return
            except Exception as exc:  # never die with callers waiting: fail, release them
                log.error("cache: the index writer failed: %r", exc, exc_info=exc)
                self.failures += 1
                self.broken = True
                for item in items:
                    fut = item[-1]
                    if isinstance(fut, asyncio.Future):
                        self._loop_call(_resolve, fut, 0 if item[0] == _SNAPSHOT else None)
                    if item[0] == _CLOSE:
                        return

    def _open(self) -> None:
        path = self.root / JOURNAL_NAME
        if self._journal_length is None:
            return  # made by the first snapshot, or on the first write
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size > self._journal_length:
                os.ftruncate(fd, self._journal_length)  # a torn tail from a crash
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._offset = self._journal_length
        self.journal_bytes = self._journal_length - fmt.HEADER_SIZE

    def _ensure_fd(self) -> int | None:
        if self._fd is None and not self.broken:
            try:
                fd = create_journal(self.root / JOURNAL_TMP_NAME, self.generation)
                os.rename(self.root / JOURNAL_TMP_NAME, self.root / JOURNAL_NAME)
                fsync_dir(self.root)
            except OSError as exc:
                self._fail("cannot create the index journal", exc)
                return None
            self._fd, self._offset = fd, fmt.HEADER_SIZE
        return self._fd

    def _process(self, items: list[tuple[Any, ...]]) -> bool:
        """Write ``items`` in order; True when the thread is to end."""
        records: list[bytes] = []
        waiters: list[asyncio.Future[Any]] = []
        kind = 0
        paths: list[str] = []
        sizes: list[int] = []

        def cut() -> None:
            nonlocal kind, paths, sizes
            if kind:
                records.append(fmt.encode_batch(kind, paths, sizes if kind == fmt.COMMIT
                                                else None))
            kind, paths, sizes = 0, [], []

        def write() -> None:
            cut()
            if records:
                self._append(b"".join(records), len(records))
                records.clear()
            for fut in waiters:
                self._loop_call(_resolve, fut, None)
            waiters.clear()

        for item in items:
            tag = item[0]
            if tag < _WAIT:
                if tag != kind:
                    cut()
                    kind = tag
                if tag == fmt.COMMIT:
                    paths.append(item[1])
                    sizes.append(item[2])
                elif tag == fmt.TOUCH:
                    paths.extend(item[1])
                else:
                    paths.append(item[1])
            elif tag == _WAIT:
                waiters.append(item[1])
            elif tag == _SYNC:
                write()
                self._sync()
                self._loop_call(_resolve, item[1], None)
            elif tag == _SNAPSHOT:
                write()
                size = self._write_snapshot(item[1], item[2])
                self._loop_call(_resolve, item[3], size)
            elif tag == _CLOSE:
                write()
                self._sync()
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd = None
                self._loop_call(_resolve, item[1], None)
                return True
        write()
        return False

    def _append(self, data: bytes, nrecords: int) -> None:
        if self.broken:
            return  # after a failed write the file may end in a torn record: wait for a snapshot
        fd = self._ensure_fd()
        if fd is None:
            return
        try:
            failpoint_sync("cache.journal.append")
            if failpoints.armed("cache.journal.torn"):
                half = len(data) // 2
                _write_all(fd, data[:half], self._offset)
                failpoint_sync("cache.journal.torn")
                _write_all(fd, data[half:], self._offset + half)
            else:
                _write_all(fd, data, self._offset)
            failpoint_sync("cache.journal.after_write")
        except OSError as exc:
            self._fail("cannot append to the index journal", exc)
            return
        self._offset += len(data)
        self.journal_bytes += len(data)
        self.records += nrecords
        self.groups += 1
        self._dirty = True
        if time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
            self._sync()
        if not self._grow_signalled and self.journal_bytes > max(COMPACT_MIN_BYTES,
                                                                 self.snapshot_bytes):
            self._grow_signalled = True
            self._loop_call(self._on_grow)

    def _sync(self) -> None:
        if self._dirty and self._fd is not None:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._fail("cannot sync the index journal", exc)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _write_snapshot(self, entries: dict[str, int], staging: list[str]) -> int:
        generation = self.generation + 1
        tmp, jtmp = self.root / TRACKER_TMP_NAME, self.root / JOURNAL_TMP_NAME
        new_fd: int | None = None
        try:
            size = write_snapshot(tmp, generation, entries, staging)
            failpoint_sync("cache.snapshot.write")
            new_fd = create_journal(jtmp, generation)
            os.rename(tmp, self.root / TRACKER_NAME)
            failpoint_sync("cache.snapshot.renamed")
            os.rename(jtmp, self.root / JOURNAL_NAME)
            fsync_dir(self.root)
            failpoint_sync("cache.journal.switched")
        except Exception as exc:  # OSError, or a fail point raising in a test
            if new_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(new_fd)
            for leftover in (tmp, jtmp):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
            self._fail("cannot write an index snapshot", exc)
            self._loop_call(self._release_grow)
            return 0
        del entries  # the copy can go now
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._offset = new_fd, fmt.HEADER_SIZE
        self.generation = generation
        self.snapshot_bytes = size
        self.journal_bytes = 0
        self.snapshots += 1
        self.broken = False  # everything is in the snapshot now
        self._dirty = False
        self._loop_call(self._release_grow)
        return size

    def _release_grow(self) -> None:
        self._grow_signalled = False

    def _fail(self, what: str, exc: Exception) -> None:
        """A write failed: records are dropped from now on until a snapshot (which the
        coordinator asks for on its next tick, :attr:`broken`) rewrites everything."""
        self.failures += 1
        if not self.broken:
            log.error("cache: %s: %s; the next index snapshot (or start-up walk) makes up for "
                      "it", what, exc)
        self.broken = True
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self._loop_call(self._on_disk_full)

    def _loop_call(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(fn, *args)
