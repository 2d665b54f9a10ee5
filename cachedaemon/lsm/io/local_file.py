"""Local-file helpers shared by the persistence backends that keep SSTs on this node's disk.

* :class:`FileRandomAccessReader` reads a local file with positional reads (``os.pread``):
  small reads (an SST block, up to ``INLINE_READ_BYTES``) on the loop, bigger ones on a worker
  thread, one hop per ``read``. The file is opened once; the open descriptor keeps the
  data readable even if the path is unlinked (by ``remove_file``, a cache trim or an
  invalidate) while the reader lives.
* :class:`LocalFileWriter` writes a local file front to back with a write-behind buffer: appends
  gather in memory and go to a worker thread once ``WRITE_BEHIND_BYTES`` have gathered (one
  hop per chunk of that size, not per append); ``finish`` writes the rest, optionally fsyncs
  the file and its directory, and closes it in one hop.
* :class:`FileSequentialWriter`: the writer state machine (append / close / abort, a failed
  append poisons close, any failure discards the local file) over a :class:`LocalFileWriter`;
  the backend supplies the step that persists the finished file (disk: fsync in place; cloud:
  upload).
* :func:`unlink_quietly`: a small synchronous step meant to run inside a worker-thread job
  (as :func:`cachedaemon.core.fsync.fsync_dir` does, with the write it makes durable).

Used by the disk, cloud and cloud-cache backends (``cachedaemon.lsm.io``); a reader belongs to
the shard that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import IOFailure
from cachedaemon.lsm.io.persistence import PERSISTENCE_ERRORS, check_read_bounds

#: A writer hands its buffer to a worker thread once this much has gathered.
WRITE_BEHIND_BYTES = 1 << 20
#: Reads up to this size are done on the loop: an SST block read is a page-cache copy of a few
#: microseconds, where a thread hop costs ~100 us. Bigger reads go to a worker thread.
INLINE_READ_BYTES = 64 << 10


def unlink_quietly(path: Path) -> None:
    """Remove ``path``; a missing file or any OS error is ignored (best-effort cleanup)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def pread_exactly(fd: int, offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset`` (looping over short reads). Blocking; raises on EOF."""
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise EOFError(f"end of file at {offset + got}, wanted {n - got} more bytes")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FileRandomAccessReader:
    """A :class:`~cachedaemon.lsm.io.persistence.RandomAccessReader` over a local file.

    Create it with :meth:`open`. ``name`` is what error messages call the file (the SST name).
    """

    def __init__(self, fd: int, size: int, name: str) -> None:
        self._fd = fd
        self._size = size
        self._name = name
        self._closed = False

    @classmethod
    async def open(cls, path: Path, name: str) -> FileRandomAccessReader | None:
        """Open ``path`` for reading; ``None`` if it does not exist. One thread hop."""

        def _open() -> tuple[int, int] | None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                return fd, os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise

        try:
            opened = await asyncio.to_thread(_open)
        except OSError as exc:
            raise IOFailure(f"cannot open {name} ({path}): {exc}") from exc
        if opened is None:
            return None
        return cls(opened[0], opened[1], name)

    async def read(self, offset: int, n: int) -> bytes:
        if self._closed:
            raise IOFailure(f"read of closed reader {self._name}")
        check_read_bounds(self._name, offset, n, self._size)
        if n == 0:
            return b""
        try:
            if n <= INLINE_READ_BYTES:
                return pread_exactly(self._fd, offset, n)
            return await asyncio.to_thread(pread_exactly, self._fd, offset, n)
        except (OSError, EOFError) as exc:
            raise IOFailure(f"read of {self._name} at {offset}+{n} failed: {exc}") from exc

    def size(self) -> int:
        return self._size

    async def close(self) -> None:
        if self._closed:
            raise IOFailure(f"reader of {self._name} closed twice")
        self._closed = True
        # Closing a regular file's descriptor does not block: no thread hop.
        os.close(self._fd)

    def __del__(self) -> None:
        # A reader dropped without close() must not leak its descriptor.
        if not getattr(self, "_closed", True):
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


class LocalFileWriter:
    """Buffered, thread-backed writes to one local file created by the caller.

    ``failpoints`` names a family of fail points reached in the worker thread:
    ``<failpoints>.write`` before each chunk is written and ``<failpoints>.before_fsync``
    (or ``.before_close`` when not syncing) in :meth:`finish`. Errors are raised as they come
    (``OSError``, ``FailPointTriggered``); the owner translates them and calls
    :meth:`discard` on failure.
    """

    def __init__(self, fd: int, path: Path, failpoints: str) -> None:
        self._fd: int | None = fd
        self.path = path
        self._failpoints = failpoints
        self._buf = bytearray()
        self.written = 0  # bytes handed to the kernel so far
        self.appended = 0  # bytes accepted by write() so far

    @classmethod
    async def create(cls, path: Path, failpoints: str) -> LocalFileWriter:
        """Create ``path`` exclusively (``FileExistsError`` if it exists). One thread hop."""

        def _create() -> int:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

        return cls(await asyncio.to_thread(_create), path, failpoints)

    async def write(self, data: bytes) -> None:
        self._buf += data
        self.appended += len(data)
        if len(self._buf) >= WRITE_BEHIND_BYTES:
            chunk = bytes(self._buf)
            self._buf = bytearray()
            await asyncio.to_thread(self._write_all, chunk)

    async def finish(self, *, fsync: bool) -> None:
        """Write what is buffered, fsync (file and directory) if asked, and close the file."""
        rest = bytes(self._buf)
        self._buf = bytearray()
        await asyncio.to_thread(self._finish, rest, fsync)

    async def discard(self) -> None:
        """Close (if open) and delete the file. Runs to completion even if cancelled."""
        self._buf = bytearray()
        await asyncio.shield(asyncio.to_thread(self._discard_sync))

    # -- thread side ----------------------------------------------------------------------

    def _write_all(self, chunk: bytes) -> None:
        if self._fd is None:
            raise OSError(f"{self.path} is already closed")
        failpoint_sync(f"{self._failpoints}.write")
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self.written += len(chunk)

    def _finish(self, rest: bytes, fsync: bool) -> None:
        if rest:
            self._write_all(rest)
        if self._fd is None:
            raise OSError(f"{self.path} is already closed")
        if fsync:
            failpoint_sync(f"{self._failpoints}.before_fsync")
            os.fsync(self._fd)
        else:
            failpoint_sync(f"{self._failpoints}.before_close")
        fd, self._fd = self._fd, None
        os.close(fd)
        if fsync:
            fsync_dir(self.path.parent)

    def _discard_sync(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        unlink_quietly(self.path)

    def __del__(self) -> None:
        # Dropped without finish/discard (a bug upstream): at least do not leak the descriptor.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)


class FileSequentialWriter:
    """A :class:`~cachedaemon.lsm.io.persistence.SequentialWriter` over a local file.

    ``persist(file)`` runs in ``close()`` after the appends: it must make the finished file
    durable where it belongs (and call ``file.finish``). If an append, ``persist`` or the
    caller's cancellation fails the writer, the local file is discarded and ``close()`` raises
    (an :class:`IOFailure`, or the persistence error ``persist`` raised: FileExists,
    ShuttingDown). ``on_done()`` runs exactly once when the writer is finished either way.
    """

    def __init__(
        self,
        name: str,
        file: LocalFileWriter,
        persist: Callable[[LocalFileWriter], Awaitable[None]],
        on_done: Callable[[], None],
    ) -> None:
        self._name = name
        self._file = file
        self._persist = persist
        self._on_done = on_done
        self._failed: BaseException | None = None
        self._state = "open"  # open | closing | closed | aborted | failed

    @property
    def path(self) -> Path:
        return self._file.path

    async def append(self, data: bytes) -> None:
        if self._state != "open":
            raise IOFailure(f"append to {self._state} writer of {self._name}")
        if self._failed is not None:
            raise IOFailure(f"append after a failed write to {self._name}")
        try:
            await self._file.write(data)
        except BaseException as exc:  # incl. cancellation: the file is now incomplete
            self._failed = exc
            if isinstance(exc, Exception):
                raise IOFailure(f"write of {self._name} failed: {exc}") from exc
            raise

    async def close(self) -> None:
        if self._state != "open":
            raise IOFailure(f"close of {self._state} writer of {self._name}")
        self._state = "closing"
        try:
            if self._failed is not None:
                raise IOFailure(
                    f"writer of {self._name} had a failed write; nothing was persisted"
                ) from self._failed
            await self._persist(self._file)
        except BaseException as exc:
            await self._discard("failed")
            if isinstance(exc, Exception) and not isinstance(exc, PERSISTENCE_ERRORS):
                raise IOFailure(f"persisting {self._name} failed: {exc}") from exc
            raise
        self._state = "closed"
        self._on_done()

    async def abort(self) -> None:
        if self._state != "open":
            return
        await self._discard("aborted")

    async def _discard(self, state: str) -> None:
        self._state = state
        try:
            await self._file.discard()
        finally:
            self._on_done()
