"""In-memory persistence: the LSM's files as ``bytes`` in dicts (tests and ephemeral databases).

:class:`MemoryDataPersistence` holds one immutable ``bytes`` per finished data file.
A writer accumulates its appends privately and publishes them in ``close()``; until then the
file is invisible (not listed, not readable, and opening a reader for it is an error, as in
Redpanda). A reader holds a reference to the bytes it opened, so removing a file does not
disturb readers that are already open (the POSIX behaviour the disk backend has too).

:class:`MemoryMetadataPersistence` keeps manifests keyed by epoch. Writing epoch ``e``
replaces any manifest of epoch ``e`` and drops the ones older than ``e`` (what the disk and
cloud backends do after their atomic write); ``read_manifest(max_epoch)`` returns the newest
kept manifest whose epoch is ``<= max_epoch``.

Fault injection (tests): set ``failing = True`` to make every later operation raise
:class:`~cachedaemon.errors.IOFailure`, or call ``fail_next(n)`` to fail only the next ``n``
operations. Operations are: opening a writer or reader, ``append``, writer ``close``, ``read``,
``remove_file``, ``list_files``, ``read_manifest`` and ``write_manifest``. A writer whose
``append`` or ``close`` failed publishes nothing.

Owned by one database on one shard; every method runs on that shard's loop and never yields
between checking and mutating state, so no lock is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from cachedaemon.errors import IOFailure, ShuttingDown
from cachedaemon.lsm.io.persistence import (
    FileExists,
    FileHandle,
    MetadataPersistence,
    Persistence,
    RandomAccessReader,
    SequentialWriter,
    check_read_bounds,
)


class _FaultInjector:
    """The ``failing`` / ``fail_next`` switch shared by both memory persistences."""

    def __init__(self) -> None:
        self.failing = False
        self._fail_count = 0
        self.operations = 0  # how many checked operations ran (tests use it to aim faults)

    def fail_next(self, count: int = 1) -> None:
        """Make the next ``count`` operations raise IOFailure."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self._fail_count = count

    def check(self, what: str) -> None:
        self.operations += 1
        if self.failing:
            raise IOFailure(f"injected failure: {what}")
        if self._fail_count > 0:
            self._fail_count -= 1
            raise IOFailure(f"injected failure: {what}")


class _FaultSwitch:
    """Fault injection of a memory persistence: ``failing`` and ``fail_next`` forwarded to its
    :class:`_FaultInjector` (``faults``)."""

    faults: _FaultInjector

    @property
    def failing(self) -> bool:
        return self.faults.failing

    @failing.setter
    def failing(self, value: bool) -> None:
        self.faults.failing = value

    def fail_next(self, count: int = 1) -> None:
        self.faults.fail_next(count)


class MemoryRandomAccessReader:
    """Reads one published file's bytes (a snapshot taken when it was opened)."""

    def __init__(self, owner: MemoryDataPersistence, handle: FileHandle, data: bytes) -> None:
        self._owner = owner
        self._handle = handle
        self._data = data
        self._closed = False

    async def read(self, offset: int, n: int) -> bytes:
        if self._closed:
            raise IOFailure(f"read of closed reader {self._handle.name}")
        self._owner.faults.check(f"read {self._handle.name}")
        check_read_bounds(self._handle.name, offset, n, len(self._data))
        return self._data[offset : offset + n]

    def size(self) -> int:
        return len(self._data)

    async def close(self) -> None:
        if self._closed:
            raise IOFailure(f"reader of {self._handle.name} closed twice")
        self._closed = True
        self._owner._readers_open -= 1


class MemorySequentialWriter:
    """Accumulates appends; ``close()`` publishes them as the file's bytes."""

    def __init__(self, owner: MemoryDataPersistence, handle: FileHandle) -> None:
        self._owner = owner
        self._handle = handle
        self._buf = bytearray()
        self._failed: IOFailure | None = None
        self._state = "open"  # open | closed | aborted | failed

    async def append(self, data: bytes) -> None:
        if self._state != "open":
            raise IOFailure(f"append to {self._state} writer of {self._handle.name}")
        if self._failed is not None:
            raise IOFailure(f"append after a failed append to {self._handle.name}")
        try:
            self._owner.faults.check(f"append {self._handle.name}")
        except IOFailure as exc:
            self._failed = exc
            raise
        self._buf += data

    async def close(self) -> None:
        if self._state != "open":
            raise IOFailure(f"close of {self._state} writer of {self._handle.name}")
        try:
            if self._failed is not None:
                raise IOFailure(
                    f"writer of {self._handle.name} had a failed append; nothing was persisted"
                ) from self._failed
            self._owner.faults.check(f"close {self._handle.name}")
        except IOFailure:
            self._state = "failed"
            self._release()
            raise
        self._state = "closed"
        self._owner._files[self._handle] = bytes(self._buf)
        self._release()

    async def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._release()

    def _release(self) -> None:
        self._buf = bytearray()
        self._owner._writers.discard(self._handle)


class MemoryDataPersistence(_FaultSwitch):
    """Data files (SSTs) in a dict. See the module docstring for the rules."""

    def __init__(self, files: dict[FileHandle, bytes] | None = None) -> None:
        # ``files`` may be shared with an earlier, closed instance: that is how tests "reopen"
        # an in-memory database and see what it persisted.
        self._files: dict[FileHandle, bytes] = {} if files is None else files
        self._writers: set[FileHandle] = set()
        self._readers_open = 0
        self._closed = False
        self.faults = _FaultInjector()

    # -- DataPersistence ------------------------------------------------------------------

    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None:
        self._check_open()
        if handle in self._writers:
            raise IOFailure(f"cannot read {handle.name}: a writer for it is still open")
        self.faults.check(f"open reader {handle.name}")
        data = self._files.get(handle)
        if data is None:
            return None
        self._readers_open += 1
        return MemoryRandomAccessReader(self, handle, data)

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter:
        self._check_open()
        if handle in self._files or handle in self._writers:
            raise FileExists(f"data file {handle.name} already exists")
        self.faults.check(f"open writer {handle.name}")
        self._writers.add(handle)
        return MemorySequentialWriter(self, handle)

    async def remove_file(self, handle: FileHandle) -> None:
        self._check_open()
        if handle in self._writers:
            raise IOFailure(f"cannot remove {handle.name}: a writer for it is open")
        self.faults.check(f"remove {handle.name}")
        self._files.pop(handle, None)

    async def list_files(self) -> AsyncIterator[FileHandle]:
        self._check_open()
        self.faults.check("list files")
        for handle in sorted(self._files):
            yield handle

    async def close(self) -> None:
        self._closed = True

    # -- introspection for tests ----------------------------------------------------------

    @property
    def files(self) -> dict[FileHandle, bytes]:
        """The published files (shared, live). Pass it to a new instance to "reopen"."""
        return self._files

    @property
    def open_writers(self) -> int:
        return len(self._writers)

    @property
    def open_readers(self) -> int:
        return self._readers_open

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("memory data persistence is closed")


class MemoryMetadataPersistence(_FaultSwitch):
    """Manifests in a dict keyed by epoch. See the module docstring for the rules."""

    def __init__(self, manifests: dict[int, bytes] | None = None) -> None:
        # ``manifests`` may be shared with an earlier, closed instance (a "reopen").
        self._manifests: dict[int, bytes] = {} if manifests is None else manifests
        self._closed = False
        self.faults = _FaultInjector()

    async def read_manifest(self, max_epoch: int) -> tuple[int, bytes] | None:
        self._check_open()
        self.faults.check("read manifest")
        eligible = [e for e in self._manifests if e <= max_epoch]
        if not eligible:
            return None
        epoch = max(eligible)
        return epoch, self._manifests[epoch]

    async def write_manifest(self, epoch: int, data: bytes) -> None:
        self._check_open()
        if epoch < 0:
            raise IOFailure(f"manifest epoch must be >= 0, got {epoch}")
        self.faults.check(f"write manifest {epoch}")
        self._manifests[epoch] = bytes(data)
        for older in [e for e in self._manifests if e < epoch]:
            del self._manifests[older]

    async def close(self) -> None:
        self._closed = True

    @property
    def manifests(self) -> dict[int, bytes]:
        """The kept manifests (shared, live). Pass it to a new instance to "reopen"."""
        return self._manifests

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown("memory metadata persistence is closed")


def memory_persistence(
    files: dict[FileHandle, bytes] | None = None, manifests: dict[int, bytes] | None = None
) -> Persistence:
    """An in-memory :class:`Persistence` pair: empty, or over the given (shared) dicts."""
    metadata: MetadataPersistence = MemoryMetadataPersistence(manifests)
    return Persistence(data=MemoryDataPersistence(files), metadata=metadata)
