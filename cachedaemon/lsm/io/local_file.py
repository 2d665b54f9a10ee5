"""Local-file helpers shared by the persistence backends that keep SSTs on this node's disk.

* :class:`FileRandomAccessReader` reads a local file with positional reads (``os.pread``) on a
  worker thread, one hop per ``read``. The file is opened once; the open descriptor keeps the
  data readable even if the path is unlinked (by ``remove_file``, a cache trim or an
  invalidate) while the reader lives.
* :func:`fsync_dir`, :func:`unlink_quietly`: small synchronous steps meant to run inside a
  worker-thread job together with the write they make durable.

Used by the disk, cloud and cloud-cache backends (``cachedaemon.lsm.io``); a reader belongs to
the shard that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from cachedaemon.errors import IOFailure


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a create, rename or unlink in it) durable. Blocking."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if offset < 0 or n < 0 or offset + n > self._size:
            raise IOFailure(
                f"read [{offset}, {offset + n}) out of bounds of {self._name} "
                f"({self._size} bytes)"
            )
        if n == 0:
            return b""
        try:
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
