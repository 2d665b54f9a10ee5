"""Cloud persistence through a local staging directory (Redpanda's ``cloud_persistence``).

SSTs live in the bucket as ``<prefix>/<sst name>``; manifests as
``<prefix>/MANIFEST.<epoch:020>`` (:class:`~cachedaemon.lsm.io.cloud_base.CloudMetadataPersistence`).
This node keeps files in ``staging_dir``, which this persistence owns exclusively:

* a **writer** stages to ``<sst name>.<uuid>.staging`` (created exclusively, so even two
  writers of one handle never share a file); ``close()`` uploads it create-only
  (put-if-absent: a duplicate handle raises :class:`FileExists` and never overwrites the
  object) and then deletes the staged file. Any failure deletes the staged file and makes
  ``close()`` raise; nothing reaches the bucket unless the upload succeeded.
  ``open_sequential_writer`` also checks the bucket first (one HEAD) so a duplicate fails
  early, as the contract says; the create-only upload is what makes it race-free.
* a **reader** uses the local copy ``<sst name>`` if present, else downloads the object to
  ``<sst name>.tmp.<uuid>`` and renames it into place, then reads it with positional reads.
  The whole download (GET, stream, write) is retried under the retry chain.
* ``remove_file`` drops the local copy, then the object.
* at open, every file left in ``staging_dir`` (crash leftovers: staged writes, partial
  downloads, stale copies) is removed.

Owned by one database on one shard; blocking file work runs on worker threads, one hop per
operation (a download writes its file in batches of ``DOWNLOAD_BATCH_BYTES``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import IOFailure
from cachedaemon.lsm.io.cloud_base import (
    RETRY_CHAIN_S,
    CloudDataPersistenceBase,
    CloudIO,
    CloudMetadataPersistence,
)
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
from cachedaemon.remote.base import ObjectStore

#: A download hands what it has received to a worker thread in batches of this size.
DOWNLOAD_BATCH_BYTES = 4 << 20

STAGED_SUFFIX = ".staging"


def clean_staging_dir(staging_dir: Path) -> list[Path]:
    """Create ``staging_dir`` if needed and delete every regular file in it. Blocking."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    removed: list[Path] = []
    with os.scandir(staging_dir) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                path = staging_dir / entry.name
                unlink_quietly(path)
                removed.append(path)
    return removed


class CloudDataPersistence(CloudDataPersistenceBase):
    """SSTs in the bucket, staged and cached in a private local directory."""

    def __init__(self, io: CloudIO, prefix: str, staging_dir: Path) -> None:
        super().__init__(io, prefix)
        self._staging_dir = staging_dir

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    def local_path(self, handle: FileHandle) -> Path:
        return self._staging_dir / handle.name

    # -- writers --------------------------------------------------------------------------

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter:
        self._claim_writer(handle)
        try:
            await self.check_absent(handle)
            path = self._staging_dir / f"{handle.name}.{uuid.uuid4().hex}{STAGED_SUFFIX}"
            try:
                file = await LocalFileWriter.create(path, "lsm.cloud.writer")
            except OSError as exc:
                raise IOFailure(f"cannot stage {handle.name} at {path}: {exc}") from exc
        except BaseException:
            self._release_writer(handle)
            raise

        async def _persist(file: LocalFileWriter) -> None:
            await file.finish(fsync=False)  # the bucket, not this disk, makes it durable
            await self.upload_file(handle, file.path)
            await asyncio.to_thread(unlink_quietly, file.path)

        return FileSequentialWriter(
            handle.name, file, _persist, lambda: self._release_writer(handle)
        )

    # -- readers --------------------------------------------------------------------------

    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None:
        self._check_open()
        self._check_no_writer(handle, "read")
        local = self.local_path(handle)
        reader = await FileRandomAccessReader.open(local, handle.name)
        if reader is not None:
            return reader
        if not await self._download(handle, local):
            return None
        return await FileRandomAccessReader.open(local, handle.name)

    async def _download(self, handle: FileHandle, local: Path) -> bool:
        """Fetch ``handle``'s object into ``local`` (tmp file + rename). False if missing."""
        key = self.object_key(handle)
        tmp = self._staging_dir / f"{handle.name}.tmp.{uuid.uuid4().hex}"

        async def _attempt() -> bool:
            result = await self.store.get(key)
            if result is None:
                return False
            async with result:
                file = await LocalFileWriter.create(tmp, "lsm.cloud.download")
                try:
                    async for chunk in result.iter_chunks():
                        await file.write(chunk)
                    await failpoint("lsm.cloud.download.before_rename")
                    await file.finish(fsync=False)
                    await asyncio.to_thread(os.replace, tmp, local)
                except BaseException:
                    await file.discard()
                    raise
            return True

        return await self._io.call(f"download {key}", _attempt)

    # -- hooks ----------------------------------------------------------------------------

    async def _remove_local(self, handle: FileHandle) -> None:
        await asyncio.to_thread(unlink_quietly, self.local_path(handle))


def cloud_persistence(
    store: ObjectStore,
    prefix: str,
    staging_dir: Path | str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    retry_chain_s: float = RETRY_CHAIN_S,
    abort: asyncio.Event | None = None,
) -> Persistence:
    """Open the cloud persistence for ``prefix``. Blocking (cleans ``staging_dir``).

    ``staging_dir`` must belong to this persistence alone: everything in it is deleted here.
    Use :func:`open_cloud_persistence` on an event loop.
    """
    directory = Path(staging_dir).absolute()
    try:
        clean_staging_dir(directory)
    except OSError as exc:
        raise IOFailure(f"cannot open staging directory {directory}: {exc}") from exc
    io = CloudIO(store, clock=clock, retry_chain_s=retry_chain_s, abort=abort)
    return Persistence(
        data=CloudDataPersistence(io, prefix, directory),
        metadata=CloudMetadataPersistence(io, prefix),
    )


async def open_cloud_persistence(
    store: ObjectStore,
    prefix: str,
    staging_dir: Path | str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    retry_chain_s: float = RETRY_CHAIN_S,
    abort: asyncio.Event | None = None,
) -> Persistence:
    """:func:`cloud_persistence` with its directory cleanup on a worker thread."""
    return await asyncio.to_thread(
        lambda: cloud_persistence(
            store, prefix, staging_dir, clock=clock, retry_chain_s=retry_chain_s, abort=abort
        )
    )


__all__ = [
    "CloudDataPersistence",
    "FileExists",
    "clean_staging_dir",
    "cloud_persistence",
    "open_cloud_persistence",
]
