"""Disk persistence: the LSM's SSTs and manifests as files in one local directory.

Layout of ``directory``::

    00000000000000000007-00000000000000000003.sst   data file (FileHandle.name)
    00000000000000000003.MANIFEST                    manifest of epoch 3 (%020d.MANIFEST)
    .00000000000000000003.MANIFEST.<uuid>.lsm-staging   a manifest being written

Data files are created with ``O_CREAT | O_EXCL``, so a duplicate handle fails at
``open_sequential_writer`` with :class:`FileExists` and never touches the existing file. A
writer buffers appends and writes them from a worker thread once ``WRITE_BEHIND_BYTES`` have
gathered (one hop per chunk of that size, not per append); ``close()`` writes the rest, fsyncs
the file and the directory in one hop. A failed append or close unlinks the partial file.
Until ``close()`` returns the file is not listed, and opening a reader for it is an error. (The buffering lives in
:class:`~cachedaemon.lsm.io.local_file.LocalFileWriter`.)

``write_manifest`` runs in one hop: write a uniquely named staging file (exclusive create),
fsync it, rename it over ``%020d.MANIFEST``, fsync the directory, then delete the manifests of
older epochs. A crash leaves either the old or the new manifest, plus perhaps a staging file;
staging files are deleted (by their full path) when the persistence is opened.
Redpanda's quirks are fixed here: its staging name was not unique, and its cleanup unlinked a
bare file name relative to the process's working directory.

Owned by one database on one shard. Blocking work runs on worker threads, one hop per
operation; in-process state (the set of open writers) is only touched on the owning loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import FailPointTriggered, IOFailure, ShuttingDown
from cachedaemon.lsm.io.local_file import (
    FileRandomAccessReader,
    FileSequentialWriter,
    LocalFileWriter,
    unlink_quietly,
)
from cachedaemon.lsm.io.persistence import (
    FileExists,
    FileHandle,
    Persistence,
    RandomAccessReader,
    SequentialWriter,
)

STAGING_SUFFIX = ".lsm-staging"
_MANIFEST = re.compile(r"^(\d{20})\.MANIFEST$")


def manifest_name(epoch: int) -> str:
    return f"{epoch:020d}.MANIFEST"


def staging_name(final_name: str) -> str:
    """A unique staging name for ``final_name``: ``.<final_name>.<uuid>.lsm-staging``."""
    return f".{final_name}.{uuid.uuid4().hex}{STAGING_SUFFIX}"


def remove_stale_staging_files(directory: Path) -> list[Path]:
    """Delete every ``*.lsm-staging`` file in ``directory`` (crash leftovers). Blocking.

    Returns the full paths removed.
    """
    removed: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(STAGING_SUFFIX) and entry.is_file(follow_symlinks=False):
                path = directory / entry.name
                unlink_quietly(path)
                removed.append(path)
    return removed


class DiskDataPersistence:
    """SSTs as files in ``directory``. See the module docstring."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._writers: set[FileHandle] = set()
        self._closed = False

    @property
    def directory(self) -> Path:
        return self._dir

    def path_of(self, handle: FileHandle) -> Path:
        return self._dir / handle.name

    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None:
        self._check_open()
        if handle in self._writers:
            raise IOFailure(f"cannot read {handle.name}: a writer for it is still open")
        return await FileRandomAccessReader.open(self.path_of(handle), handle.name)

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter:
        self._check_open()
        if handle in self._writers:
            raise FileExists(f"data file {handle.name} is already being written")
        path = self.path_of(handle)
        # Claim the handle before the hop so a concurrent open on this loop sees it.
        self._writers.add(handle)
        try:
            file = await LocalFileWriter.create(path, "lsm.disk.writer")
        except FileExistsError as exc:
            self._writers.discard(handle)
            raise FileExists(f"data file {handle.name} already exists") from exc
        except OSError as exc:
            self._writers.discard(handle)
            raise IOFailure(f"cannot create {path}: {exc}") from exc
        except BaseException:
            self._writers.discard(handle)
            raise

        async def _persist(file: LocalFileWriter) -> None:
            await file.finish(fsync=True)

        return FileSequentialWriter(
            handle.name, file, _persist, lambda: self._writers.discard(handle)
        )

    async def remove_file(self, handle: FileHandle) -> None:
        self._check_open()
        if handle in self._writers:
            raise IOFailure(f"cannot remove {handle.name}: a writer for it is open")
        path = self.path_of(handle)

        def _remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        try:
            await asyncio.to_thread(_remove)
        except OSError as exc:
            raise IOFailure(f"cannot remove {path}: {exc}") from exc

    async def list_files(self) -> AsyncIterator[FileHandle]:
        self._check_open()

        def _list() -> list[FileHandle]:
            found: list[FileHandle] = []
            with os.scandir(self._dir) as entries:
                for entry in entries:
                    handle = FileHandle.parse(entry.name)
                    if handle is not None:
                        found.append(handle)
            return found

        try:
            handles = await asyncio.to_thread(_list)
        except OSError as exc:
            raise IOFailure(f"cannot list {self._dir}: {exc}") from exc
        for handle in sorted(handles):
            if handle not in self._writers:  # not persisted yet: invisible
                yield handle

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown(f"disk data persistence {self._dir} is closed")


class DiskMetadataPersistence:
    """Manifests as ``%020d.MANIFEST`` files in ``directory``, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._closed = False

    async def read_manifest(self, max_epoch: int) -> tuple[int, bytes] | None:
        self._check_open()
        try:
            return await asyncio.to_thread(self._read_sync, max_epoch)
        except OSError as exc:
            raise IOFailure(f"cannot read a manifest in {self._dir}: {exc}") from exc

    def _read_sync(self, max_epoch: int) -> tuple[int, bytes] | None:
        # A racing writer may delete the manifest we picked; list again (bounded) if so.
        for _ in range(3):
            epochs: list[int] = []
            with os.scandir(self._dir) as entries:
                for entry in entries:
                    m = _MANIFEST.match(entry.name)
                    if m is not None and int(m.group(1)) <= max_epoch:
                        epochs.append(int(m.group(1)))
            if not epochs:
                return None
            epoch = max(epochs)
            try:
                return epoch, (self._dir / manifest_name(epoch)).read_bytes()
            except FileNotFoundError:
                continue
        raise OSError(f"manifests in {self._dir} kept changing while being read")

    async def write_manifest(self, epoch: int, data: bytes) -> None:
        self._check_open()
        if epoch < 0:
            raise IOFailure(f"manifest epoch must be >= 0, got {epoch}")
        try:
            # Shielded: once the rename may have happened, finish (fsync, cleanup) regardless.
            await asyncio.shield(asyncio.to_thread(self._write_sync, epoch, bytes(data)))
        except (OSError, FailPointTriggered) as exc:
            raise IOFailure(f"cannot write manifest {epoch} in {self._dir}: {exc}") from exc

    def _write_sync(self, epoch: int, data: bytes) -> None:
        final = self._dir / manifest_name(epoch)
        tmp = self._dir / staging_name(final.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                failpoint_sync("lsm.disk.manifest.before_fsync")
                os.fsync(fd)
            finally:
                os.close(fd)
            failpoint_sync("lsm.disk.manifest.before_rename")
            os.replace(tmp, final)
        except BaseException:
            unlink_quietly(tmp)
            raise
        fsync_dir(self._dir)
        failpoint_sync("lsm.disk.manifest.after_rename")
        # The new manifest is durable; older ones are now garbage (best effort).
        with os.scandir(self._dir) as entries:
            older = [
                e.name
                for e in entries
                if (m := _MANIFEST.match(e.name)) is not None and int(m.group(1)) < epoch
            ]
        for name in older:
            unlink_quietly(self._dir / name)

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown(f"disk metadata persistence {self._dir} is closed")


def disk_persistence(directory: Path | str) -> Persistence:
    """Open (creating if needed) the disk persistence in ``directory``. Blocking.

    Creates the directory and deletes stale manifest staging files. Call it from a worker
    thread, or use :func:`open_disk_persistence` on an event loop.
    """
    path = Path(directory).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_staging_files(path)
    except OSError as exc:
        raise IOFailure(f"cannot open disk persistence in {path}: {exc}") from exc
    return Persistence(data=DiskDataPersistence(path), metadata=DiskMetadataPersistence(path))


async def open_disk_persistence(directory: Path | str) -> Persistence:
    """:func:`disk_persistence`, with its blocking directory work on a worker thread."""
    return await asyncio.to_thread(disk_persistence, directory)
