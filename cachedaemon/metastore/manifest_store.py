"""A domain's manifest in the bucket, replaced only by compare-and-swap: epoch fencing.

The LSM's :class:`~cachedaemon.lsm.io.persistence.MetadataPersistence` for metastore domains.
There is one object per domain, ``meta/domain/<uuid>/MANIFEST``::

    "CDMF" ‖ u32 LE version (1) ‖ u64 LE writer epoch ‖ u32 LE crc32c(epoch ‖ body) ‖ body

where ``body`` is the LSM's own manifest bytes (empty: the domain has no manifest yet).

Every write is conditional on the etag this writer last saw (put-if-match; put-if-absent for
the first), so exactly one writer's view of the manifest can advance at a time:

1. A writer opening the domain with a freshly claimed epoch first **stamps** the object: it
   rewrites the current body under its own epoch (:meth:`FencedManifestStore.stamp`). From
   then on any older writer's conditional write fails.
2. A write that loses its condition re-reads the object: a newer epoch there means this writer
   is **fenced** (:attr:`fenced` is set and :class:`~cachedaemon.errors.Fenced` raised; the
   domain steps down to read-only). Its own earlier attempt that landed (a retried PUT whose
   reply was lost) is recognised by its bytes and counts as success.
3. A write that fails otherwise (the retry chain gave up, a cancellation) may still have
   landed: its outcome is **unknown**, and this store's view of the object (the etag it would
   condition the next write on) may be stale. It refuses every later write with
   :class:`~cachedaemon.errors.IOFailure` instead of guessing: a conditional write would fail
   against our own landed bytes and be taken for a fence. The LSM stops on that failure (its
   sticky background error; its file GC deletes nothing) and the domain is reopened, which
   re-reads the object (``docs/concurrency.md``).

Read-only replicas read the object with no condition (``read_manifest`` fetches it afresh on
every call, which is how ``refresh`` sees a newer manifest).

Owned by one domain on one shard; bucket calls run under the LSM's retry chain (CloudIO).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import google_crc32c

from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import Corruption, Fenced, IOFailure, PreconditionFailed
from cachedaemon.lsm.io.cloud_base import CloudIO, join_key

log = logging.getLogger(__name__)

MAGIC = b"CDMF"
_HEAD = struct.Struct("<4sIQI")
VERSION = 1
MANIFEST_NAME = "MANIFEST"


@dataclass(frozen=True)
class ManifestObject:
    epoch: int
    body: bytes
    etag: str


def encode(epoch: int, body: bytes) -> bytes:
    crc = google_crc32c.value(struct.pack("<Q", epoch) + body)
    return _HEAD.pack(MAGIC, VERSION, epoch, crc) + body


def decode(data: bytes, key: str) -> tuple[int, bytes]:
    if len(data) < _HEAD.size:
        raise Corruption(f"{key}: truncated manifest ({len(data)} bytes)")
    magic, version, epoch, crc = _HEAD.unpack_from(data, 0)
    body = data[_HEAD.size:]
    if magic != MAGIC or version != VERSION:
        raise Corruption(f"{key}: not a domain manifest (magic {magic!r}, version {version})")
    if google_crc32c.value(struct.pack("<Q", epoch) + body) != crc:
        raise Corruption(f"{key}: manifest checksum mismatch")
    return epoch, body


class FencedManifestStore:
    """MetadataPersistence with CAS writes (see the module docstring)."""

    def __init__(self, io: CloudIO, prefix: str, *, readonly: bool = False) -> None:
        self._io = io
        self.key = join_key(prefix.strip("/"), MANIFEST_NAME)
        self.readonly = readonly
        self.epoch: int | None = None  # the epoch this writer stamped
        self._etag: str | None = None
        self._body: bytes = b""
        self.fenced: str | None = None  # why, once fenced
        #: Why the outcome of a write is unknown, once one failed ambiguously (see above).
        self.unknown: str | None = None
        self.writes = 0

    async def load(self) -> ManifestObject | None:
        """The current object, or None if the domain has no manifest object yet."""

        async def _get() -> tuple[bytes, str] | None:
            result = await self._io.store.get(self.key)
            if result is None:
                return None
            etag = result.info.etag
            return await result.read(), etag

        got = await self._io.call(f"get {self.key}", _get)
        if got is None:
            return None
        data, etag = got
        epoch, body = decode(data, self.key)
        return ManifestObject(epoch, body, etag)

    async def try_stamp(self, epoch: int, current: ManifestObject | None) -> bool:
        """Make ``epoch`` the owner of the manifest ``current`` (as :meth:`load` returned it).

        False if the object changed since (compare-and-swap lost: load and decide again);
        :class:`Fenced` if ``current`` is already owned by a newer epoch.
        """
        if current is not None and current.epoch > epoch:
            raise Fenced(f"{self.key} is owned by epoch {current.epoch} > {epoch}")
        body = current.body if current is not None else b""
        etag = await self._put(encode(epoch, body), current.etag if current is not None else None)
        if etag is None:
            return False
        self.epoch, self._etag, self._body = epoch, etag, body
        return True

    async def stamp(self, epoch: int) -> int:
        """Load and stamp until it sticks; returns the epoch it replaced (0: none)."""
        for _ in range(100):
            current = await self.load()
            if await self.try_stamp(epoch, current):
                return current.epoch if current is not None else 0
        raise IOFailure(f"{self.key}: could not stamp epoch {epoch}: too much contention")

    async def _put(self, data: bytes, etag: str | None) -> str | None:
        """The new etag, or None when the condition failed."""

        async def _do() -> str | None:
            await failpoint("metastore.manifest.put")
            try:
                if etag is None:
                    info = await self._io.store.put_if_absent(self.key, data)
                else:
                    info = await self._io.store.put_if_match(self.key, data, etag)
            except PreconditionFailed:
                return None
            return info.etag

        return await self._io.call(f"put {self.key}", _do)

    # -- MetadataPersistence ----------------------------------------------------------------

    async def read_manifest(self, max_epoch: int) -> tuple[int, bytes] | None:
        if not self.readonly and self.epoch is not None:
            # The writer's own view: what it stamped or last wrote.
            return (self.epoch, self._body) if self._body else None
        current = await self.load()
        if current is None or not current.body:
            return None
        if current.epoch > max_epoch:
            raise Fenced(f"{self.key} is owned by epoch {current.epoch} > {max_epoch}")
        return current.epoch, current.body

    async def write_manifest(self, epoch: int, data: bytes) -> None:
        if self.readonly:
            raise IOFailure(f"{self.key}: read-only")
        if self.fenced is not None:
            raise Fenced(self.fenced)
        if self.epoch is None or epoch != self.epoch:
            raise IOFailure(f"{self.key}: write at epoch {epoch} but stamped {self.epoch}")
        if self.unknown is not None:
            raise IOFailure(f"{self.key}: the outcome of an earlier write is unknown "
                            f"({self.unknown}); reopen the domain to re-read the manifest")
        body = bytes(data)
        try:
            etag = await self._write(epoch, body)
        except Fenced:
            raise
        except BaseException as exc:  # cancellation too: the PUT may have landed
            self.unknown = f"{type(exc).__name__}: {exc}"
            log.error("%s: manifest write of epoch %d failed and may have landed: %s",
                      self.key, epoch, self.unknown)
            raise
        self._etag, self._body = etag, body
        self.writes += 1

    async def _write(self, epoch: int, body: bytes) -> str:
        """Put ``body`` conditional on our etag; the new etag. Fenced if the CAS was lost to
        another writer."""
        etag = await self._put(encode(epoch, body), self._etag)
        if etag is None:
            current = await self.load()
            if current is not None and current.epoch == epoch and current.body == body:
                etag = current.etag  # our own retried PUT had landed
            else:
                owner = current.epoch if current is not None else None
                self.fenced = (
                    f"domain manifest {self.key} was replaced by epoch {owner}; "
                    f"writer of epoch {epoch} is fenced"
                )
                log.error("%s", self.fenced)
                raise Fenced(self.fenced)
        return etag

    async def close(self) -> None:
        return None
