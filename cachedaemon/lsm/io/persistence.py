"""The seam between the LSM engine and where its files live (LevelDB's ``Env``, narrowed).

The engine stores two kinds of things:

* **data files** (SSTs), named by a :class:`FileHandle` ``(id, epoch)``, written once
  sequentially and then read at random offsets; and
* **the manifest**, one small blob per epoch, replaced atomically as a whole.

:class:`DataPersistence` and :class:`MetadataPersistence` are the two interfaces; the
implementations (memory, disk, cloud via a staging directory, cloud via the cache) live beside
this module, one per file, and all pass the same contract suite
(``tests/lsm/test_persistence_contract.py``).

Contract (every implementation):

* ``open_sequential_writer(h)`` is **exclusive**: if ``h`` exists (or a writer for it is open),
  it raises :class:`FileExists` and the existing file is left intact. The engine never reuses a
  handle, so a duplicate is a bug and fails loudly.
* A writer's data is durable and visible only after ``close()`` returns. A writer whose
  ``append`` or ``close`` failed leaves nothing behind (``close()`` raises
  :class:`~cachedaemon.errors.IOFailure`).
* ``open_random_access_reader(h)`` returns ``None`` for a missing file; ``read(offset, n)`` past
  the end raises :class:`~cachedaemon.errors.IOFailure`.
* ``remove_file(h)`` is a no-op for a missing file. ``list_files()`` yields the handles present.
* ``write_manifest(epoch, data)`` is atomic; ``read_manifest(epoch)`` returns the newest manifest
  whose epoch is ``<= epoch`` as ``(epoch, bytes)``, or ``None``.

Instances are owned by one database, on one shard; they are not shared across loops.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cachedaemon.errors import CacheDaemonError, IOFailure, ShuttingDown

_NAME = re.compile(r"^(\d{20})-(\d{20})\.sst$")


class FileExists(CacheDaemonError):
    """A sequential writer was opened for a handle that already exists (a bug upstream)."""

    code = "file_exists"
    http_status = 500


#: The errors of the persistence contract: a backend passes these through as they are and
#: translates anything else (into IOFailure, or ShuttingDown for a stopping part).
PERSISTENCE_ERRORS: tuple[type[CacheDaemonError], ...] = (IOFailure, FileExists, ShuttingDown)


@dataclass(frozen=True, order=True)
class FileHandle:
    """An SST's identity: a file id unique within an epoch, and the writer's epoch."""

    id: int
    epoch: int = 0

    @property
    def name(self) -> str:
        return f"{self.id:020d}-{self.epoch:020d}.sst"

    @classmethod
    def parse(cls, name: str) -> FileHandle | None:
        """The handle of an SST file name, or ``None`` if ``name`` is not one."""
        m = _NAME.match(name)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2)))


class RandomAccessReader(Protocol):
    """Reads byte ranges of one data file."""

    async def read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; out of bounds raises IOFailure."""
        ...

    def size(self) -> int: ...

    async def close(self) -> None: ...


def check_read_bounds(name: str, offset: int, n: int, size: int) -> None:
    """The bounds rule of :meth:`RandomAccessReader.read`, for every backend's reader: IOFailure
    unless ``[offset, offset + n)`` lies within the ``size`` bytes of file ``name``."""
    if offset < 0 or n < 0 or offset + n > size:
        raise IOFailure(f"read [{offset}, {offset + n}) out of bounds of {name} ({size} bytes)")


class SequentialWriter(Protocol):
    """Writes one data file front to back; durable after ``close()``."""

    async def append(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Persist the file. Raises IOFailure (leaving nothing behind) if it cannot."""
        ...

    async def abort(self) -> None:
        """Give up: discard everything written. Idempotent."""
        ...


class DataPersistence(Protocol):
    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None: ...

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter: ...

    async def remove_file(self, handle: FileHandle) -> None: ...

    def list_files(self) -> AsyncIterator[FileHandle]: ...

    async def close(self) -> None: ...


class MetadataPersistence(Protocol):
    async def read_manifest(self, max_epoch: int) -> tuple[int, bytes] | None: ...

    async def write_manifest(self, epoch: int, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Persistence:
    """The pair a database opens with."""

    data: DataPersistence
    metadata: MetadataPersistence
