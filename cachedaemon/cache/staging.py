"""StagingFile: an in-flight cache entry, written on local disk, then committed or aborted.

Made by :meth:`CacheService.create_staging_file` on the calling shard and used by one task on
that shard. It lives at ``<dir of the destination>/<name>_<shard>_<counter>.part`` (created
exclusively, never visible as an entry, never trimmed, deleted at the next start if left behind)
and holds, for its whole life, a holder of the shard's cache gate and **one** reservation
guard: the initial reservation (``staging_initial_bytes`` + 1 object) topped up by ``append``
in chunks of at least ``staging_chunk_bytes``, each merged into that guard. Both are clamped to
what one object can ever take (``max_object_bytes``, by default the byte limit).

Appends are buffered in memory (references to immutable chunks, copies of mutable ones) and
reach the file with ``writev`` in one worker-thread job once more than
:data:`WRITE_BUFFER_BYTES` are buffered, and at commit (a thread hop costs ~0.1 ms, so one per
small append would dominate; a 1 MiB object is written and committed in a single hop).
``flush()`` writes the buffer out; after it, :attr:`path` holds every appended byte and can be
read (to upload it, say) before the commit. ``sync()`` writes it out and ``fdatasync``-s it in
one thread job, through a descriptor of its own (an abort meanwhile cannot close it under the
job); a commit with nothing appended since then skips its own ``fdatasync``, so running
``sync()`` while waiting for something else (an upload) takes the disk off the commit's path.
Writes use explicit offsets (``pwritev``). A failed write marks the file torn: later appends
and the commit raise :class:`IOFailure` (the commit aborts the file).

``commit(replace=False, xattrs=None)`` is one thread job: write the buffer, set ``xattrs``
(best effort), ``fdatasync`` (unless the service was built with ``fsync_commits=False``, or
``sync()`` covered every byte), close, then

* ``replace=False``: ``link(part, dest)`` then ``unlink(part)``. A crash between the two leaves
  full data at both names (the ``.part`` is deleted at restart), never an empty placeholder.
  ``EEXIST`` means another writer committed this key first: that is success, this file's data
  is dropped and its reservation released (the entry that won stays accounted).
* ``replace=True``: ``rename(part, dest)``, atomically replacing any previous entry (a new
  version); the old entry's size and object leave the counters as the new one is added.

``publish(ticket, replace=..., remove=..., xattrs=...)`` is the object routes' commit: it seals the
file on its own shard (the same thread job up to the close) and lets shard 0's
:class:`~cachedaemon.cache.coherence.KeyTable` decide, under the key's lock, whether it becomes
the entry (``docs/cache.md``, "Per key, reads follow writes"); if not, it is deleted.

Once the file is in place, its bytes are always accounted and the tracker updated, even if the
``unlink`` fails (logged) or anything else fails after the ``link``/``rename`` (the commit then
still raises, saying the entry is in place: a write that landed is never treated as one that
did not happen). A commit that fails before that aborts the file (no ``.part`` left,
reservation released) and raises; a cancelled commit finishes its thread job and its
accounting first. ``close()`` aborts: releases the reservation, deletes the ``.part``, leaves
the gate. Idempotent, and a no-op after a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cachedaemon.cache.classes import ReservationClass
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


def _write_all(fd: int, chunks: list[bytes | memoryview], offset: int) -> None:
    """Write ``chunks`` in order at ``offset`` with as few ``pwritev`` calls as possible
    (blocking). Explicit offsets: :meth:`StagingFile.sync` writes through its own descriptor."""
    pending = [memoryview(c) for c in chunks if len(c)]
    while pending:
        n = os.pwritev(fd, pending[:_IOV_MAX], offset)
        offset += n
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


def _seal_job(fd: int, buf: list[bytes | memoryview], offset: int, sync: bool,
              xattrs: dict[str, bytes] | None) -> None:
    """Thread job: write what is buffered, set ``xattrs`` (best effort), ``fdatasync`` if
    asked, close. The file is then complete at its ``.part`` path."""
    try:
        if buf:
            _write_all(fd, buf, offset)
        for name, value in (xattrs or {}).items():
            with contextlib.suppress(OSError):
                os.setxattr(fd, name, value)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


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
        *,
        klass: ReservationClass = ReservationClass.write,
        owner: str = "",
    ) -> None:
        self._service = service
        self.klass = klass  # its reservations' class and owner (top-ups too)
        self.owner = owner
        self.since = service.clock.monotonic()
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
        self._flushed = 0  # handed to a write job (the file's size once those finish)
        self._synced = -1  # bytes known to be on disk (fdatasync-ed), -1 if none yet
        self._failed: BaseException | None = None  # a write job failed: the file is torn
        self._pending: asyncio.Future[None] | None = None  # a running sync() job
        self._closed = False
        self._committed = False
        self._landed = False  # set by the commit job once the file is in place

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
        if self._failed is not None:
            raise IOFailure(f"staging file {self.path} lost a write: {self._failed}")

    def _take_buffer(self) -> tuple[list[bytes | memoryview], int]:
        """Hand the buffer to a write job: returns it and the file offset it goes to."""
        buf, offset = self._buffer, self._flushed
        self._buffer, self._flushed, self._buffered = [], offset + self._buffered, 0
        return buf, offset

    def _write_failed(self, exc: BaseException) -> IOFailure:
        self._failed = exc
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            self._service.note_disk_full()
        return IOFailure(f"cannot write staging file {self.path}: {exc}")

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
            # At least a chunk, but never more than the object could ever take: with a byte
            # limit below the chunk size, a full chunk could never be granted.
            chunk = min(self._service.settings.staging_chunk_bytes, limit - self._guard.bytes)
            extra = max(need - self._guard.bytes, chunk)
            more = await self._service.reserve_space(
                extra, 0, self._service.default_deadline() if deadline is None else deadline,
                klass=self.klass, owner=self.owner,
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
        buf, offset = self._take_buffer()
        try:
            await asyncio.to_thread(_write_all, fd, buf, offset)
        except OSError as exc:
            raise self._write_failed(exc) from exc

    async def flush(self) -> None:
        """Write every appended byte to :attr:`path`."""
        self._check_open()
        await self._write_buffer()

    async def sync(self) -> None:
        """Write every appended byte to :attr:`path` and ``fdatasync`` it, in one thread job
        through a descriptor of its own (so an abort meanwhile cannot close it under the job).
        A commit with nothing appended since needs no ``fdatasync`` of its own: run this
        while waiting for something else (an upload) and the commit is cheap."""
        self._check_open()
        if self._pending is not None:
            await asyncio.shield(self._pending)
        buf, offset = self._take_buffer()
        upto = self._written
        path = self.path

        def job() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                _write_all(fd, buf, offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)

        self._pending = pending = asyncio.ensure_future(asyncio.to_thread(job))
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            raise self._write_failed(exc) from exc
        finally:
            if pending.done():
                self._pending = None
        self._synced = max(self._synced, upto)

    async def commit(self, replace: bool = False, *, xattrs: dict[str, bytes] | None = None
                     ) -> int:
        """Put the file in place as the key's entry; return its size. ``xattrs`` are set on
        the file before it becomes visible (best effort, as part of the same thread job). See
        the module docstring."""
        fd, buf, offset, sync = await self._close_for_commit()
        job = asyncio.ensure_future(asyncio.to_thread(
            self._commit_job, fd, buf, offset, sync, replace, xattrs
        ))
        # The job cannot be interrupted halfway: if we are cancelled, wait for it, do the
        # accounting, and only then let the cancellation through.
        cancelled = await _uninterrupted(job)
        exc = job.exception()
        try:
            if exc is not None and not self._landed:
                await self._commit_failed(exc, cancelled)
            if exc is not None and not replace:
                # The file was in place when the job failed: the commit happened (and is
                # accounted); only its answer failed. Finish the cleanup the job did not reach.
                await asyncio.to_thread(self._unlink_part)
            if exc is not None or job.result():
                rid, _, _ = self._guard.take()
                self._service.account_commit(self.relpath, self._written, rid)
            else:
                self._guard.close()  # another writer won: its entry stays accounted
            self._committed = True
            self._finish()
            if cancelled:
                raise asyncio.CancelledError()
            if exc is not None:
                raise IOFailure(
                    f"{self.key!r} was committed (the entry is in place and accounted), but the "
                    f"commit failed after that: {exc}"
                ) from exc
            return self._written
        finally:
            if not self._committed:
                self._finish()

    def _commit_job(
        self, fd: int, buf: list[bytes | memoryview], offset: int, sync: bool, replace: bool,
        xattrs: dict[str, bytes] | None,
    ) -> bool:
        """Thread job: True if the file is now the entry, False if another writer won.
        Raises (with the ``.part`` untouched) if it failed before that."""
        _seal_job(fd, buf, offset, sync, xattrs)
        if replace:
            os.rename(self.path, self.dest)
            self._landed = True
            failpoint_sync("cache.commit.after_link")
            return True
        try:
            os.link(self.path, self.dest)
        except FileExistsError:
            self._unlink_part()
            return False
        self._landed = True  # from here on the entry exists, whatever fails next
        failpoint_sync("cache.commit.after_link")
        self._unlink_part()
        return True

    async def publish(self, ticket: int, *, replace: bool = False, remove: bool = False,
                      xattrs: dict[str, bytes] | None = None) -> bool:
        """Seal the file here (write the buffer, set ``xattrs``, ``fdatasync``, close; one
        thread job), then have shard 0 finish ``ticket`` with it (``docs/cache.md``, "Per key,
        reads follow writes"). True if the file became the key's entry (``rename`` when
        ``replace``, else ``link``), its bytes accounted. False if the operation was overlapped
        by a write of the key (or a ``link`` found an entry in place): the file is deleted and
        its reservation released, and with ``remove`` the key's copy was removed instead. The
        ticket is finished in every case; if sealing fails this raises after finishing it
        (with ``remove``). A cancellation waits for the finish and its accounting, then
        propagates."""
        sealed = False
        try:
            await self._seal(xattrs)
            sealed = True
        finally:
            if not sealed:
                await self._service.finish(ticket, remove=remove)
        job = asyncio.ensure_future(
            self._service.finish(ticket, part=self.path, replace=replace, remove=remove))
        cancelled = False
        while not job.done():
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                cancelled = cancelled or not job.done()
            except BaseException:
                break
        published = (not job.cancelled() and job.exception() is None and job.result())
        try:
            if published:
                rid, _, _ = self._guard.take()
                self._service.account_commit(self.relpath, self._written, rid)
                self._committed = True
                self._finish()
            else:
                await self._abort(unlink=True)
        finally:
            if not self._committed:
                self._finish()
        if cancelled:
            raise asyncio.CancelledError()
        if job.cancelled():
            raise asyncio.CancelledError()
        exc = job.exception()
        if exc is not None:
            raise exc
        return bool(published)

    async def _seal(self, xattrs: dict[str, bytes] | None) -> None:
        """Make the ``.part`` complete and closed (for :meth:`publish`). Aborts the file and
        raises if that fails."""
        fd, buf, offset, sync = await self._close_for_commit()
        job = asyncio.ensure_future(asyncio.to_thread(_seal_job, fd, buf, offset, sync, xattrs))
        cancelled = await _uninterrupted(job)
        exc = job.exception()
        if exc is not None or cancelled:
            await self._commit_failed(exc, cancelled)

    async def _close_for_commit(self) -> tuple[int, list[bytes | memoryview], int, bool]:
        """End writing before a commit or a seal: refuse if a write was lost (aborting the
        file), wait for the write in flight, close for writers and take the descriptor, the
        unwritten buffer with its offset, and whether the job must fdatasync."""
        if self._failed is not None and not self._closed:
            self._closed = True
            await self._abort(unlink=True)
            raise IOFailure(f"cannot commit {self.key!r}: a write was lost: {self._failed}")
        self._check_open()
        pending = self._pending
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
            self._check_open()
        self._closed = True
        fd, self._fd = self._fd, None
        assert fd is not None
        buf, offset = self._take_buffer()
        return fd, buf, offset, self._service.fsync_commits and self._synced != self._written

    async def _commit_failed(self, exc: BaseException | None, cancelled: bool) -> NoReturn:
        """A commit or seal job failed (or its caller was cancelled) before the file was in
        place: abort the file, then raise the cancellation, or the failure (ENOSPC noted)."""
        await self._abort(unlink=True)
        if cancelled:
            raise asyncio.CancelledError()
        assert exc is not None
        if isinstance(exc, OSError):
            if exc.errno == errno.ENOSPC:
                self._service.note_disk_full()
            raise IOFailure(f"cannot commit {self.key!r}: {exc}") from exc
        raise exc

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
        # A running sync() job writes through its own descriptor: closing ours and unlinking
        # the path under it is harmless (it finishes on the unlinked inode).
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
            try:
                self._on_done(self)
            finally:
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
        try:
            self._finish()
        except RuntimeError:
            # Its loop is closed (the owner, or the process, is ending): nothing to tell the
            # accounting. The journal's BEGIN record leads the next start to the .part.
            pass


async def _uninterrupted(job: asyncio.Future[Any]) -> bool:
    """Wait for a thread job that must not be interrupted halfway: a cancellation waits for
    the job too, and is reported (True) for the caller to raise once it has done its part."""
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break
    return cancelled
