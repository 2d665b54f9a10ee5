"""What the two bucket-backed persistences share: calling the bucket, and the manifests.

The cloud backend (``cloud.py``, local staging directory) and the cloud-cache backend
(``cloud_cache.py``, stages and reads through the cache) differ only in where an SST lives on
this node. Everything they do with the bucket is here, once (Redpanda's
``cloud_data_persistence_base``):

* :class:`CloudIO` runs one bucket operation under a **retry chain**: retryable faults
  (:class:`~cachedaemon.errors.TransientUpstreamError`) are retried with backoff starting at
  100 ms until the chain's deadline (10 s after the operation began, as in Redpanda). Results
  are mapped at this boundary: a miss stays a value (``None``); a shutdown (the abort event,
  a closed gate, a stopping service) becomes :class:`~cachedaemon.errors.ShuttingDown`; every
  other failure, the deadline included, becomes :class:`~cachedaemon.errors.IOFailure`.
  Cancellation propagates untouched. The store passed in may itself be a retrying wrapper;
  the chain then bounds the whole.
* :class:`CloudDataPersistenceBase`: object keys ``<prefix>/<sst name>``, ``remove_file``
  (local hook, then the bucket), ``list_files`` (skips nested keys and anything that is not
  an SST name, e.g. manifests), ``close``, ``upload_file`` (create-only: a handle that already
  exists in the bucket raises :class:`FileExists` and is never overwritten), and the
  bookkeeping of open writers.
* :class:`ObjectRangeReader`: a reader straight from the bucket, one range GET per ``read``.
* :class:`CloudMetadataPersistence`: manifests as objects ``<prefix>/MANIFEST.<epoch:020>``.
  ``read_manifest`` lists them, sorts descending and takes the first whose epoch is
  ``<= max_epoch``; ``write_manifest`` uploads (an object PUT is atomic) and then deletes the
  older manifests in one batch (best effort: a leftover older manifest never wins a read).

Instances belong to one database on one shard (the store is bound to that shard's loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cachedaemon.clock import SYSTEM_CLOCK, Clock, deadline_after
from cachedaemon.core.failpoints import failpoint
from cachedaemon.core.retry import Backoff, retry
from cachedaemon.errors import (
    CacheDaemonError,
    DeadlineExceeded,
    IOFailure,
    PreconditionFailed,
    ShuttingDown,
    Unavailable,
)
from cachedaemon.lsm.io.persistence import (
    PERSISTENCE_ERRORS,
    FileExists,
    FileHandle,
    check_read_bounds,
)
from cachedaemon.remote.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long one bucket operation may keep retrying (Redpanda's 10 s retry chain).
RETRY_CHAIN_S = 10.0
#: First backoff of the chain (Redpanda: 100 ms), doubling up to ``MAX_BACKOFF_S``.
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0

MANIFEST_PREFIX = "MANIFEST."
_MANIFEST = re.compile(r"^MANIFEST\.(\d{20})$")


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def normalise_prefix(prefix: str) -> str:
    """``prefix`` without surrounding slashes; refuses ``.``/``..`` and empty segments."""
    stripped = prefix.strip("/")
    if stripped and any(seg in ("", ".", "..") for seg in stripped.split("/")):
        raise IOFailure(f"invalid bucket prefix {prefix!r}")
    return stripped


def map_error(what: str, exc: BaseException) -> BaseException:
    """The persistence-level error for a failed bucket operation ``what``."""
    if isinstance(exc, PERSISTENCE_ERRORS):
        return exc
    if isinstance(exc, DeadlineExceeded):
        return IOFailure(f"{what}: timed out: {exc}")
    if isinstance(exc, Unavailable):  # gate closed, semaphore broken, shard stopped
        return ShuttingDown(f"{what}: shutting down: {exc}")
    return IOFailure(f"{what} failed: {exc}")


@dataclass
class CloudIO:
    """Runs bucket operations under the retry chain and maps their results (see module doc)."""

    store: ObjectStore
    clock: Clock = SYSTEM_CLOCK
    retry_chain_s: float = RETRY_CHAIN_S
    backoff: Backoff = field(
        default_factory=lambda: Backoff(initial_s=INITIAL_BACKOFF_S, max_s=MAX_BACKOFF_S)
    )
    #: Set when the owner is stopping: retries stop at once with ShuttingDown.
    abort: asyncio.Event | None = None

    async def call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        if self.abort is not None and self.abort.is_set():
            raise ShuttingDown(f"{what}: shutting down")
        deadline = deadline_after(self.retry_chain_s, self.clock)
        try:
            return await retry(
                fn,
                deadline=deadline,
                backoff=self.backoff,
                clock=self.clock,
                abort=self.abort,
                on_retry=on_retry,
            )
        except asyncio.CancelledError:
            raise
        except (CacheDaemonError, OSError) as exc:
            mapped = map_error(what, exc)
            if mapped is exc:
                raise
            raise mapped from exc


class ObjectRangeReader:
    """Reads an SST straight from the bucket: one range GET (under the retry chain) per read."""

    def __init__(self, io: CloudIO, key: str, size: int, name: str) -> None:
        self._io = io
        self._key = key
        self._size = size
        self._name = name
        self._closed = False

    def size(self) -> int:
        return self._size

    async def read(self, offset: int, n: int) -> bytes:
        if self._closed:
            raise IOFailure(f"read of closed reader {self._name}")
        check_read_bounds(self._name, offset, n, self._size)
        if n == 0:
            return b""

        async def _get() -> bytes | None:
            return await self._io.store.get_bytes(self._key, byte_range=(offset, offset + n - 1))

        data = await self._io.call(f"read {self._key} at {offset}+{n}", _get)
        if data is None:
            raise IOFailure(f"{self._key} vanished from the bucket while being read")
        if len(data) != n:
            raise IOFailure(f"short read of {self._key} at {offset}: {len(data)} of {n} bytes")
        return data

    async def close(self) -> None:
        if self._closed:
            raise IOFailure(f"reader of {self._name} closed twice")
        self._closed = True


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class CloudDataPersistenceBase:
    """The bucket side of an SST persistence. Subclasses add the local side.

    Hooks for subclasses: :meth:`_remove_local` (drop the local copy of a file) and
    :meth:`_close_local` (release local resources at close).
    """

    def __init__(self, io: CloudIO, prefix: str) -> None:
        self._io = io
        self._prefix = normalise_prefix(prefix)
        self._writers: set[FileHandle] = set()
        self._closed = False

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def store(self) -> ObjectStore:
        return self._io.store

    def object_key(self, handle: FileHandle) -> str:
        return join_key(self._prefix, handle.name)

    # -- hooks ----------------------------------------------------------------------------

    async def _remove_local(self, handle: FileHandle) -> None:
        return None

    async def _close_local(self) -> None:
        return None

    # -- shared operations ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown(f"persistence of {self._prefix or '(root)'} is closed")

    def _claim_writer(self, handle: FileHandle) -> None:
        """Register an open writer for ``handle`` (FileExists if one is open already)."""
        self._check_open()
        if handle in self._writers:
            raise FileExists(f"data file {handle.name} is already being written")
        self._writers.add(handle)

    def _release_writer(self, handle: FileHandle) -> None:
        self._writers.discard(handle)

    def _check_no_writer(self, handle: FileHandle, action: str) -> None:
        if handle in self._writers:
            raise IOFailure(f"cannot {action} {handle.name}: a writer for it is still open")

    async def head_object(self, handle: FileHandle) -> ObjectInfo | None:
        key = self.object_key(handle)
        return await self._io.call(f"head {key}", lambda: self._io.store.head(key))

    async def check_absent(self, handle: FileHandle) -> None:
        """FileExists if ``handle``'s object is already in the bucket (early duplicate check)."""
        if await self.head_object(handle) is not None:
            raise FileExists(f"data file {handle.name} already exists in the bucket")

    async def upload_file(self, handle: FileHandle, path: Path) -> ObjectInfo:
        """Upload ``path`` as ``handle``'s object, create-only. FileExists if it exists.

        A retried create can find its *own* earlier attempt (which landed although its response
        was lost); that case is told apart from a real duplicate by size and content hash.
        """
        key = self.object_key(handle)
        ambiguous = False

        def _note_retry(attempt: int, exc: BaseException, delay: float) -> None:
            nonlocal ambiguous
            ambiguous = True

        async def _put() -> ObjectInfo | None:
            await failpoint("lsm.cloud.upload")
            try:
                return await self._io.store.put_if_absent(key, path)
            except PreconditionFailed:
                return None  # the key exists: decided below, outside the retry chain

        info = await self._io.call(f"upload {key}", _put, on_retry=_note_retry)
        if info is not None:
            return info
        if ambiguous:
            mine = await self._was_my_upload(key, path)
            if mine is not None:
                return mine
        raise FileExists(f"data file {handle.name} already exists in the bucket; not overwritten")

    async def _was_my_upload(self, key: str, path: Path) -> ObjectInfo | None:
        info = await self._io.call(f"head {key}", lambda: self._io.store.head(key))
        if info is None:
            return None
        size = (await asyncio.to_thread(path.stat)).st_size
        if info.size != size:
            return None
        if "-" in info.etag:  # a multipart etag is not a content hash; size must do
            return info
        return info if info.etag == await asyncio.to_thread(_md5_of, path) else None

    async def open_object_reader(self, handle: FileHandle) -> ObjectRangeReader | None:
        """A reader that serves ``handle`` from the bucket by range GETs; None if missing."""
        info = await self.head_object(handle)
        if info is None:
            return None
        return ObjectRangeReader(self._io, self.object_key(handle), info.size, handle.name)

    async def remove_file(self, handle: FileHandle) -> None:
        self._check_open()
        self._check_no_writer(handle, "remove")
        await self._remove_local(handle)
        key = self.object_key(handle)
        await self._io.call(f"delete {key}", lambda: self._io.store.delete(key))

    async def list_files(self) -> AsyncIterator[FileHandle]:
        self._check_open()
        prefix = join_key(self._prefix, "")  # "<prefix>/" (or "" at the root)
        start_after: str | None = None
        while True:
            after = start_after

            async def _page(after: str | None = after) -> tuple[list[str], str | None]:
                page = await self._io.store.list(prefix, start_after=after)
                return [o.key for o in page.objects], page.next

            keys, start_after = await self._io.call(f"list {prefix or '(root)'}", _page)
            for key in keys:
                rest = key[len(prefix) :]
                if "/" in rest:
                    continue  # nested: another database's prefix, not ours
                handle = FileHandle.parse(rest)
                if handle is not None and handle not in self._writers:
                    yield handle
            if start_after is None:
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._close_local()


class CloudMetadataPersistence:
    """Manifests as bucket objects ``<prefix>/MANIFEST.<epoch:020>`` (see module docstring)."""

    def __init__(self, io: CloudIO, prefix: str) -> None:
        self._io = io
        self._prefix = normalise_prefix(prefix)
        self._closed = False

    def manifest_key(self, epoch: int) -> str:
        return join_key(self._prefix, f"{MANIFEST_PREFIX}{epoch:020d}")

    async def _list_epochs(self) -> list[int]:
        prefix = join_key(self._prefix, MANIFEST_PREFIX)

        async def _list() -> list[int]:
            epochs: list[int] = []
            async for info in self._io.store.list_all(prefix):
                m = _MANIFEST.match(info.key[len(join_key(self._prefix, "")) :])
                if m is not None:
                    epochs.append(int(m.group(1)))
            return epochs

        return await self._io.call(f"list manifests under {prefix}", _list)

    async def read_manifest(self, max_epoch: int) -> tuple[int, bytes] | None:
        self._check_open()
        # A racing writer may delete the manifest we picked; list again (bounded) if so.
        for _ in range(3):
            candidates = [e for e in await self._list_epochs() if e <= max_epoch]
            if not candidates:
                return None
            epoch = max(candidates)
            key = self.manifest_key(epoch)

            async def _get(key: str = key) -> bytes | None:
                return await self._io.store.get_bytes(key)

            data = await self._io.call(f"get {key}", _get)
            if data is not None:
                return epoch, data
        raise IOFailure(f"manifests under {self._prefix} kept changing while being read")

    async def write_manifest(self, epoch: int, data: bytes) -> None:
        self._check_open()
        if epoch < 0:
            raise IOFailure(f"manifest epoch must be >= 0, got {epoch}")
        key = self.manifest_key(epoch)
        body = bytes(data)

        async def _put() -> ObjectInfo:
            await failpoint("lsm.cloud.manifest.put")
            return await self._io.store.put(key, body)

        await self._io.call(f"upload manifest {key}", _put)
        # The new manifest is in place; the older ones are garbage now (best effort).
        try:
            older = [self.manifest_key(e) for e in await self._list_epochs() if e < epoch]
            if older:
                await self._io.call(
                    f"delete {len(older)} older manifests", lambda: self._io.store.delete_many(older)
                )
        except (IOFailure, ShuttingDown) as exc:
            log.warning("manifest %s written; deleting older manifests failed: %s", key, exc)

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ShuttingDown(f"metadata persistence of {self._prefix or '(root)'} is closed")
