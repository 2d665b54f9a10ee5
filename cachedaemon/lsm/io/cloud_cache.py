"""Cloud-cache persistence: SSTs in the bucket, staged and read through the local cache.

The point of Redpanda PR #30045: the metastore's SSTs no longer go through a private staging
directory but through the cloud cache, so a freshly written SST is a local cache hit and a
read of an older one fills the cache, under the cache's byte/object limits and trimming.

Names: an SST ``h`` of a database with bucket prefix ``P`` is the object ``P/<h.name>`` and
the cache entry ``.cachedaemon/lsm/P/<h.name>`` (:data:`cachedaemon.namespace.CACHE_ROOT`, a part
of the cache no user key maps to). Manifests are bucket objects, exactly as in the cloud
backend (:class:`~cachedaemon.lsm.io.cloud_base.CloudMetadataPersistence`).

**Writer** (:class:`CloudCacheSequentialWriter`): a cache :class:`StagingFile` for the SST's
cache key, created with a reservation deadline of ``write_deadline_s`` (30 s); each
``append`` tops the reservation up with its own 30 s deadline. ``close()`` flushes, uploads
the staged ``.part`` file create-only (so a duplicate handle raises :class:`FileExists` and
never overwrites the object), then commits the file into the cache. A failed append or upload
makes ``close()`` raise and leaves nothing behind: the staging file is closed (its reservation
released), its ``.part`` deleted, and no object exists. (Redpanda's writer returned quietly
from ``close()`` after a failed append; that silently lost an SST.) If only the commit fails,
the SST *is* safe in the bucket, which is what the engine asked for: ``close()`` cleans up
locally, logs a warning and succeeds; the next read downloads the SST into the cache. (Failing
there would stop the database for a cache problem while its data was durable.)

**Reader**: a cache hit is read with positional reads on its file (the open descriptor keeps
it readable even if a trim evicts the entry meanwhile). On a miss the object is downloaded
into the cache through a reservation (``reserve_space(size, 1, deadline)`` then
``cache.put``) and the lookup is repeated, at most ``read_attempts`` times (Redpanda's loop
was unbounded and could spin while trims evicted each download). If the object cannot be
cached (no space before the deadline, larger than the cache's object limit, or evicted every
time) the reader falls back to range GETs on the bucket, so a full cache slows reads but
never fails them.

``remove_file`` invalidates the cache entry, then deletes the object.

Owned by one database on one shard; the cache service it uses may coordinate with shard 0
itself. Bucket calls run under the retry chain of ``cloud_base``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cachedaemon.cache.service import CacheService
from cachedaemon.cache.staging import StagingFile
from cachedaemon.clock import SYSTEM_CLOCK, Clock, Deadline, deadline_after
from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import (
    CacheDaemonError,
    DeadlineExceeded,
    IOFailure,
    ShuttingDown,
    TooLarge,
    Unavailable,
)
from cachedaemon.lsm.io.cloud_base import (
    RETRY_CHAIN_S,
    CloudDataPersistenceBase,
    CloudIO,
    CloudMetadataPersistence,
    join_key,
)
from cachedaemon.lsm.io.local_file import FileRandomAccessReader, unlink_quietly
from cachedaemon.lsm.io.persistence import (
    PERSISTENCE_ERRORS,
    FileHandle,
    Persistence,
    RandomAccessReader,
    SequentialWriter,
)
from cachedaemon.namespace import CACHE_ROOT
from cachedaemon.remote.base import ObjectStore

log = logging.getLogger(__name__)

#: Deadline for the staging file's initial reservation and for each append's top-up.
WRITE_DEADLINE_S = 30.0
#: Deadline for reserving cache space for a download before falling back to range GETs.
READ_RESERVE_DEADLINE_S = 30.0
#: How many times a reader tries to get the object into the cache before reading the bucket.
READ_ATTEMPTS = 3
#: Cache keys of LSM files start with this (reserved: no object route reaches them).
CACHE_KEY_ROOT = CACHE_ROOT.rstrip("/")


def _cache_error(what: str, exc: BaseException) -> BaseException:
    """The persistence error for a failed cache step (shutdown stays a shutdown)."""
    if isinstance(exc, PERSISTENCE_ERRORS):
        return exc
    if isinstance(exc, DeadlineExceeded):  # CacheFull included
        return IOFailure(f"{what}: no cache space in time: {exc}")
    if isinstance(exc, Unavailable):
        return ShuttingDown(f"{what}: cache is stopping: {exc}")
    return IOFailure(f"{what} failed: {exc}")


class CloudCacheSequentialWriter:
    """Writes one SST into a cache staging file; ``close()`` uploads, then commits."""

    def __init__(
        self,
        owner: CloudCacheDataPersistence,
        handle: FileHandle,
        staging: StagingFile,
    ) -> None:
        self._owner = owner
        self._handle = handle
        self._staging = staging
        self._failed: BaseException | None = None
        self._state = "open"  # open | closing | closed | aborted | failed

    @property
    def staging_path(self) -> Path:
        return self._staging.path

    async def append(self, data: bytes) -> None:
        if self._state != "open":
            raise IOFailure(f"append to {self._state} writer of {self._handle.name}")
        if self._failed is not None:
            raise IOFailure(f"append after a failed append to {self._handle.name}")
        try:
            await failpoint("lsm.cloud_cache.append")
            await self._staging.append(data, self._owner._write_deadline())
        except BaseException as exc:  # incl. cancellation: the staged file is now incomplete
            self._failed = exc
            if isinstance(exc, Exception):
                raise _cache_error(f"append to {self._handle.name}", exc) from exc
            raise

    async def close(self) -> None:
        if self._state != "open":
            raise IOFailure(f"close of {self._state} writer of {self._handle.name}")
        self._state = "closing"
        name = self._handle.name
        try:
            if self._failed is not None:
                raise IOFailure(
                    f"writer of {name} had a failed append; nothing was persisted"
                ) from self._failed
            try:
                await self._staging.flush()
            except Exception as exc:
                raise _cache_error(f"flush of {name}", exc) from exc
            await self._owner.upload_file(self._handle, self._staging.path)
        except BaseException as exc:
            await self._discard("failed")
            if isinstance(exc, Exception) and not isinstance(exc, PERSISTENCE_ERRORS):
                raise IOFailure(f"persisting {name} failed: {exc}") from exc
            raise
        # Uploaded: the SST is durable. Now make it a local cache hit.
        try:
            await failpoint("lsm.cloud_cache.commit")
            await self._staging.commit()
        except Exception as exc:
            await self._discard("closed")
            log.warning("%s was uploaded to %s but committing it into the cache failed (%s); "
                        "it will be read from the bucket", name,
                        self._owner.object_key(self._handle), exc)
            return
        except BaseException:
            await self._discard("failed")
            raise
        self._state = "closed"
        self._owner._release_writer(self._handle)

    async def abort(self) -> None:
        if self._state != "open":
            return
        await self._discard("aborted")

    async def _discard(self, state: str) -> None:
        """Close the staging file (releasing its reservation) and delete its ``.part``."""
        self._state = state
        path = self._staging.path
        try:
            await asyncio.shield(self._close_and_unlink(path))
        finally:
            self._owner._release_writer(self._handle)

    async def _close_and_unlink(self, path: Path) -> None:
        try:
            await self._staging.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("closing staging file %s failed: %s", path, exc)
        await asyncio.to_thread(unlink_quietly, path)


class CloudCacheDataPersistence(CloudDataPersistenceBase):
    """SSTs in the bucket, staged and cached by the cloud cache. See the module docstring."""

    def __init__(
        self,
        io: CloudIO,
        prefix: str,
        cache: CacheService,
        *,
        write_deadline_s: float = WRITE_DEADLINE_S,
        read_reserve_deadline_s: float = READ_RESERVE_DEADLINE_S,
        read_attempts: int = READ_ATTEMPTS,
    ) -> None:
        super().__init__(io, prefix)
        if read_attempts < 1:
            raise ValueError("read_attempts must be >= 1")
        self._cache = cache
        self._write_deadline_s = write_deadline_s
        self._read_reserve_deadline_s = read_reserve_deadline_s
        self._read_attempts = read_attempts
        #: Downloads into the cache (tests and metrics).
        self.downloads = 0
        #: Readers that fell back to range GETs because the object could not be cached.
        self.uncached_reads = 0

    def cache_key(self, handle: FileHandle) -> str:
        return join_key(join_key(CACHE_KEY_ROOT, self.prefix), handle.name)

    def _write_deadline(self) -> Deadline:
        return deadline_after(self._write_deadline_s, self._io.clock)

    # -- writers --------------------------------------------------------------------------

    async def open_sequential_writer(self, handle: FileHandle) -> SequentialWriter:
        self._claim_writer(handle)
        try:
            await self.check_absent(handle)
            key = self.cache_key(handle)
            try:
                staging = await self._cache.create_staging_file(
                    key, self._write_deadline(), klass="metastore", owner=f"SST write {key}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _cache_error(f"staging {key}", exc) from exc
        except BaseException:
            self._release_writer(handle)
            raise
        return CloudCacheSequentialWriter(self, handle, staging)

    # -- readers --------------------------------------------------------------------------

    async def open_random_access_reader(self, handle: FileHandle) -> RandomAccessReader | None:
        self._check_open()
        self._check_no_writer(handle, "read")
        key = self.cache_key(handle)
        for _ in range(self._read_attempts):
            reader = await self._open_cached(handle, key)
            if reader is not None:
                return reader
            fetched = await self._download(handle, key)
            if fetched is None:
                return None  # not in the bucket
            if not fetched:
                break  # no room in the cache: read the bucket directly
        # Could not keep it in the cache (full, or evicted after every download).
        self.uncached_reads += 1
        return await self.open_object_reader(handle)

    async def _open_cached(self, handle: FileHandle, key: str) -> RandomAccessReader | None:
        try:
            entry = await self._cache.get(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _cache_error(f"cache lookup of {key}", exc) from exc
        if entry is None:
            return None
        # The entry may be trimmed between get() and open(): then it is a miss.
        return await FileRandomAccessReader.open(entry.path, handle.name)

    async def _download(self, handle: FileHandle, key: str) -> bool | None:
        """Fetch the object into the cache. None: no such object; False: could not cache it."""
        object_key = self.object_key(handle)

        async def _attempt() -> bool | None:
            result = await self.store.get(object_key)
            if result is None:
                return None
            async with result:
                # A miss of the cache's miss-ratio curve (the hit was its get()).
                self._cache.note_miss(key, result.content_length)
                deadline = deadline_after(self._read_reserve_deadline_s, self._io.clock)
                try:
                    guard = await self._cache.reserve_space(
                        result.content_length, 1, deadline, klass="metastore",
                        owner=f"SST read {key}")
                    try:
                        await self._cache.put(key, result.iter_chunks(), guard, deadline,
                                              klass="metastore", owner=f"SST read {key}")
                    finally:
                        guard.close()  # releases only what put() did not take over
                except (DeadlineExceeded, TooLarge) as exc:  # CacheFull included
                    log.info("cannot cache %s (%s); reading it from the bucket", key, exc)
                    return False
            return True

        fetched = await self._io.call(f"download {object_key} into the cache", _attempt)
        if fetched:
            self.downloads += 1
        return fetched

    # -- hooks ----------------------------------------------------------------------------

    async def _remove_local(self, handle: FileHandle) -> None:
        key = self.cache_key(handle)
        try:
            await self._cache.invalidate(key)
        except asyncio.CancelledError:
            raise
        except CacheDaemonError as exc:
            raise _cache_error(f"invalidate {key}", exc) from exc


def cloud_cache_persistence(
    store: ObjectStore,
    cache: CacheService,
    prefix: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    retry_chain_s: float = RETRY_CHAIN_S,
    abort: asyncio.Event | None = None,
    write_deadline_s: float = WRITE_DEADLINE_S,
    read_reserve_deadline_s: float = READ_RESERVE_DEADLINE_S,
    read_attempts: int = READ_ATTEMPTS,
) -> Persistence:
    """The cloud-cache :class:`Persistence` for the database at bucket prefix ``prefix``.

    ``clock`` must be the cache's clock (its deadlines are read on it). No blocking work.
    """
    io = CloudIO(store, clock=clock, retry_chain_s=retry_chain_s, abort=abort)
    return Persistence(
        data=CloudCacheDataPersistence(
            io,
            prefix,
            cache,
            write_deadline_s=write_deadline_s,
            read_reserve_deadline_s=read_reserve_deadline_s,
            read_attempts=read_attempts,
        ),
        metadata=CloudMetadataPersistence(io, prefix),
    )
