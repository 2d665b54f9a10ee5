"""StagingFile: an in-flight cache entry, written on local disk, then committed or aborted.

Made by :meth:`CacheService.create_staging_file` on the calling shard and used by one task on
that shard. It lives at ``<dir of the destination>/<name>_<shard>_<counter>.part`` (created
exclusively, never visible as an entry, never trimmed, deleted at the next start if left behind)
and holds, for its whole life, a holder of the shard's cache gate and **one** reservation
guard: the initial reservation (``staging_initial_bytes`` + 1 object) topped up by ``append``
in chunks of at least ``staging_chunk_bytes``, each merged into that guard.

Appends are buffered in memory (references to immutable chunks, copies of mutable ones) and
reach the file with ``writev`` in one worker-thread job once more than
:data:`WRITE_BUFFER_BYTES` are buffered, and at commit (a thread hop costs ~0.1 ms, so one per
small append would dominate; a 1 MiB object is written and committed in a single hop).
``flush()`` writes the buffer out; after it, :attr:`path` holds every appended byte and can be
read (to upload it, say) before the commit.

``commit(replace=False)`` is one thread job: write the buffer, ``fdatasync`` (unless the
service was built with ``fsync_commits=False``), close, then

* ``replace=False``: ``link(part, dest)`` then ``unlink(part)``. A crash between the two leaves
  full data at both names (the ``.part`` is deleted at restart), never an empty placeholder.
  ``EEXIST`` means another writer committed this key first: that is success, this file's data
  is dropped and its reservation released (the entry that won stays accounted).
* ``replace=True``: ``rename(part, dest)``, atomically replacing any previous entry (a new
  version); the old entry's size and object leave the counters as the new one is added.

Once the file is in place, its bytes are always accounted and the tracker updated, even if the
``unlink`` fails (logged). A commit that fails before that aborts the file (no ``.part`` left,
reservation released) and raises; a cancelled commit finishes its thread job and its
accounting first. ``close()`` aborts: releases the reservation, deletes the ``.part``, leaves
the gate. Idempotent, and a no-op after a commit.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cachedaemon.cache.reservation import ReservationGuard
from cachedaemon.cache.walker import remove_empty_parents
from cachedaemon.clock import Deadline
from cachedaemon.core.failpoints import failpoint, failpoint_sync
from cachedaemon.core.gate import GateHolder
from cachedaemon.errors import GateClosed, IOFailure, TooLarge

if TYPE_CHECKING:
    from cachedaemon.cache.service import CacheService

log = logging.getLogger("cachedaemon.cache")

#: Appends are buffered until they pass this many bytes; then one thread job writes them.
WRITE_BUFFER_BYTES = 1024 * 1024


def _write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write ``chunks`` in order with as few ``writev`` calls as possible (blocking)."""
    pending = [memoryview(c) for c in chunks if len(c)]
    while pending:
        n = os.writev(fd, pending[:_IOV_MAX])
        while n and pending:
            head = pending[0]
            if n >= len(head):
                n -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[n:]
                n = 0


_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _immutable(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """``data`` itself if the caller cannot change it later (bytes, or a read-only view of
    bytes); else a copy. Buffered appends keep references, so no copy in the common case."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview) and data.readonly and isinstance(data.obj, bytes):
        return data
    return bytes(data)


class StagingFile:
    """An in-flight entry. See the module docstring."""

    def __init__(
        self,
        service: CacheService,
        key: str,
        relpath: str,
        path: Path,
        dest: Path,
        fd: int,
        guard: ReservationGuard,
        holder: GateHolder,
        on_done: Callable[[StagingFile], None],
    ) -> None:
        self._service = service
        self.key = key
        self.relpath = relpath
        self.path = path
        self.dest = dest
        self._fd: int | None = fd
        self._guard = guard
        self._holder = holder
        self._on_done = on_done
        self._buffer: list[bytes | memoryview] = []
        self._buffered = 0
        self._written = 0  # appended, including what is still buffered
        self._closed = False
        self._committed = False

    @property
    def written(self) -> int:
        """Bytes appended so far."""
        return self._written

    @property
    def reserved_bytes(self) -> int:
        return self._guard.bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise GateClosed(f"staging file for {self.key!r} is already closed or committed")

    async def append(self, data: bytes | bytearray | memoryview, deadline: Deadline | None = None) -> None:
        """Reserve space for ``data`` (waiting until ``deadline``, default the configured
        reserve deadline) and buffer it; write the buffer out when it is large enough."""
        self._check_open()
        await failpoint("cache.staging.append")
        n = len(data)
        if n == 0:
            return
        need = self._written + n
        limit = self._service.max_object_bytes
        if need > limit:
            raise TooLarge(
                f"object {self.key!r} is over the {limit}-byte limit ({need} bytes so far)"
            )
        if need > self._guard.bytes:
            extra = max(need - self._guard.bytes, self._service.settings.staging_chunk_bytes)
            more = await self._service.reserve_space(
                extra, 0, self._service.default_deadline() if deadline is None else deadline
            )
            self._guard.merge(more)
        self._buffer.append(_immutable(data))
        self._buffered += n
        self._written = need
        if self._buffered > WRITE_BUFFER_BYTES:
            await self._write_buffer()

    async def _write_buffer(self) -> None:
        if not self._buffer:
            return
        fd = self._fd
        assert fd is not None
        buf, self._buffer, self._buffered = self._buffer, [], 0
        try:
            await asyncio.to_thread(_write_all, fd, buf)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._service.note_disk_full()
            raise IOFailure(f"cannot write staging file {self.path}: {exc}") from exc

    async def flush(self) -> None:
        """Write every appended byte to :attr:`path`."""
        self._check_open()
        await self._write_buffer()

    async def commit(self, replace: bool = False) -> int:
        """Put the file in place as the key's entry; return its size. See the module docstring."""
        self._check_open()
        self._closed = True
        fd, self._fd = self._fd, None
        assert fd is not None
        buf, self._buffer, self._buffered = self._buffer, [], 0
        job = asyncio.ensure_future(asyncio.to_thread(
            self._commit_job, fd, buf, self._service.fsync_commits, replace
        ))
        # The job cannot be interrupted halfway: if we are cancelled, wait for it, do the
        # accounting, and only then let the cancellation through.
        cancelled = False
        while not job.done():
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                cancelled = True
            except BaseException:
                break
        exc = job.exception()
        try:
            if exc is not None:
                await self._abort(unlink=True)
                if cancelled:
                    raise asyncio.CancelledError()
                if isinstance(exc, OSError):
                    if exc.errno == errno.ENOSPC:
                        self._service.note_disk_full()
                    raise IOFailure(f"cannot commit {self.key!r}: {exc}") from exc
                raise exc
            if job.result():
                held_b, held_o = self._guard.take()
                self._service.account_commit(self.relpath, self._written, held_b, held_o)
            else:
                self._guard.close()  # another writer won: its entry stays accounted
            self._committed = True
            self._finish()
            if cancelled:
                raise asyncio.CancelledError()
            return self._written
        finally:
            if not self._committed:
                self._finish()

    def _commit_job(
        self, fd: int, buf: list[bytes | memoryview], sync: bool, replace: bool
    ) -> bool:
        """Thread job: True if the file is now the entry, False if another writer won.
        Raises (with the ``.part`` untouched) if it failed before that."""
        try:
            if buf:
                _write_all(fd, buf)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(self.path, self.dest)
            failpoint_sync("cache.commit.after_link")
            return True
        try:
            os.link(self.path, self.dest)
        except FileExistsError:
            self._unlink_part()
            return False
        failpoint_sync("cache.commit.after_link")
        self._unlink_part()
        return True

    def _unlink_part(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cache: committed %s but cannot remove %s: %s (deleted at next start)",
                      self.dest, self.path, exc)

    async def close(self) -> None:
        """Abort: release the reservation and delete the ``.part``. Idempotent."""
        if self._committed or self._holder is None:
            return
        self._closed = True
        await self._abort(unlink=True)

    async def _abort(self, *, unlink: bool) -> None:
        fd, self._fd = self._fd, None
        self._buffer, self._buffered = [], 0
        self._guard.close()
        root = self._service.root
        path = self.path

        def job() -> None:
            if fd is not None:
                os.close(fd)
            if unlink:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        log.error("cache: cannot delete aborted staging file %s: %s", path, exc)
                remove_empty_parents(root, path)

        try:
            await asyncio.shield(asyncio.to_thread(job))
        finally:
            self._finish()

    def _finish(self) -> None:
        holder, self._holder = self._holder, None  # type: ignore[assignment]
        if holder is not None:
            self._on_done(self)
            holder.release()

    def __del__(self) -> None:
        if getattr(self, "_holder", None) is None:
            return
        # A bug in the caller. Do what can be done without a loop: close the descriptor, leave
        # the gate (so stop() does not hang), and leave the .part to the next start.
        log.error("cache: staging file %s for %r dropped without close() or commit()",
                  self.path, self.key)
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._finish()
