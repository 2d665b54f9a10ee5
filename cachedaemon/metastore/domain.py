"""A key-value domain: one LSM database in the bucket, a write-ahead log, and an epoch.

A :class:`Domain` is opened by the :class:`~cachedaemon.metastore.service.DomainService` of the
shard that owns it, in one of two modes:

**Writer** (:meth:`Domain.open_writer`):

1. claim a fresh epoch (``newest + 1``, put-if-absent) in the registry;
2. read the manifest object; with the local log, recover the segment files now (they are
   replayed only if this node was the domain's last writer, see ``local_log``);
3. stamp the manifest object with the new epoch (compare-and-swap on what step 2 read): every
   older writer's next manifest write now fails, and it is fenced;
4. open the LSM at that manifest, SSTs through the cloud-cache persistence;
5. with the remote log, read its segments and fence it; replay every record above the
   manifest's sequence number into the memtable.

A write (:meth:`write`) gets the next sequence numbers, goes into the log's group commit, and
is applied to the memtable by the log's sync task, in sequence order, *after* it is durable and
*before* the writer is woken; so an acknowledged write is both durable and visible, and a
batch is all-or-nothing (one record, one memtable apply). The flush loop (:meth:`run_flush_loop`)
flushes on the interval and on request (the LSM flushes by itself when the memtable is full),
then releases the log segments the manifest now covers.

A write whose log append or manifest update reports :class:`~cachedaemon.errors.Fenced` makes
the domain step down: it stops taking writes (409 ``fenced``), says so in the log and in its
info (``read_only`` turns true), and the service replaces it by a read replica that keeps
``fenced`` set (so writes still get 409 ``fenced``) while reads follow the new writer. Any other log failure
marks the domain :attr:`broken`; the service reopens it on the next request (the log has every
acknowledged write).

The LSM's own background work (a flush when the memtable fills, a compaction) can fail too, with
nobody waiting on it. :meth:`check_background` adopts that failure, and reading :attr:`fenced`
or :attr:`broken` calls it (the service reads them on every lookup, before and after waiting
for an opening; the flush loop calls it when a flush fails). A lost manifest compare-and-swap is a fence
(step down); anything else — a manifest write whose outcome is unknown among them — marks the
domain broken, so the next request reopens it and re-reads the manifest in the bucket (until
then the LSM's file GC deletes nothing; see ``docs/concurrency.md``).

**Read replica** (:meth:`Domain.open_reader`): the LSM opened read-only at the newest manifest
(SSTs through this node's own cache), refreshed by :meth:`refresh` on an interval (the service's
refresher) and on demand. Writes get 409 ``read_only``.

Lives on its owning shard; all methods run on that shard's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.errors import (
    CacheDaemonError,
    Fenced,
    InvalidArgument,
    IOFailure,
    OutcomeUnknown,
    ReadOnly,
    ShuttingDown,
    TooLarge,
)
from cachedaemon.lsm.db import Database
from cachedaemon.lsm.io.cloud import CloudDataPersistence, clean_staging_dir
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.lsm.io.cloud_cache import CloudCacheDataPersistence
from cachedaemon.lsm.io.persistence import DataPersistence, Persistence
from cachedaemon.lsm.manifest import decode_manifest
from cachedaemon.lsm.options import Options
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.group_commit import GroupCommitLog
from cachedaemon.metastore.local_log import LocalLog
from cachedaemon.metastore.log_format import LogRecord
from cachedaemon.metastore.manifest_store import FencedManifestStore
from cachedaemon.metastore.registry import DomainRecord, DomainRegistry, Placement
from cachedaemon.metastore.remote_log import LogMoved, RemoteLog

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 4 * 1024 * 1024
#: Epoch a read replica opens at: "the newest manifest, whoever wrote it".
READER_EPOCH = (1 << 62)
OPEN_ATTEMPTS = 5


@dataclass(frozen=True)
class DomainConfig:
    """How domains are opened (from ``[metastore]`` settings; tests shrink the numbers)."""

    wal: str = "local"  # local | remote
    data_dir: Path = Path("./cachedaemon-data")
    flush_interval_s: float = 30.0
    memtable_bytes: int = 16 * 1024 * 1024
    refresh_interval_s: float = 10.0
    gc_interval_s: float = 60.0
    file_deletion_delay_s: float = 3600.0
    read_only: bool = False
    node: str = "cachedaemon"
    #: Idle domains are flushed and closed after this long (0: never); at most
    #: ``max_open_domains`` are open on a shard; each keeps at most ``max_open_files`` SSTs open.
    idle_timeout_s: float = 600.0
    max_open_domains: int = 64
    max_open_files: int = 64
    clock: Clock = SYSTEM_CLOCK
    #: Which shard owns each domain (None: hashed over every shard, as with one shard).
    placement: Placement | None = None
    #: Extra LSM options (tests: small block/file sizes).
    lsm: dict[str, Any] = field(default_factory=dict)

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "wal"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "lsm-staging"


def check_key(key: bytes) -> None:
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise InvalidArgument(f"key must be 1-{MAX_KEY_BYTES} bytes, got {len(key)}")


def check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(f"value of {len(value)} bytes is over the {MAX_VALUE_BYTES}-byte limit")


@dataclass
class DomainMetrics:
    writes: int = 0
    write_bytes: int = 0
    flushes: int = 0
    compactions: int = 0
    refreshes: int = 0


class Domain:
    def __init__(
        self,
        record: DomainRecord,
        config: DomainConfig,
        db: Database,
        manifest: FencedManifestStore,
        wal: GroupCommitLog | None,
        epoch: int,
        io: CloudIO,
    ) -> None:
        self.record = record
        self.config = config
        self.db = db
        self.manifest = manifest
        self.log = wal
        self.epoch = epoch
        self._io = io
        self.read_only = wal is None
        self._fenced: str | None = None
        self._broken: BaseException | None = None
        self.metrics = DomainMetrics()
        self._next_seqno = db.max_applied_seqno + 1
        self._released_seqno = 0
        self._flush_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self.last_access = config.clock.monotonic()
        self.last_refresh = config.clock.monotonic()
        if wal is not None:
            wal.set_on_durable(self._apply)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def closed(self) -> bool:
        return self._closed

    # --- opening -----------------------------------------------------------------------------

    @staticmethod
    async def _data_persistence(io: CloudIO, record: DomainRecord, cache: Any,
                                config: DomainConfig) -> DataPersistence:
        if cache is not None:
            return CloudCacheDataPersistence(io, record.prefix, cache)
        # No cache service (embedded use without one): a private staging directory.
        staging = config.staging_dir / record.uuid
        await asyncio.to_thread(clean_staging_dir, staging)
        return CloudDataPersistence(io, record.prefix, staging)

    @staticmethod
    def _options(config: DomainConfig, *, epoch: int, readonly: bool) -> Options:
        return Options(**{
            "epoch": epoch,
            "readonly": readonly,
            "memtable_bytes": config.memtable_bytes,
            "file_deletion_delay_s": config.file_deletion_delay_s,
            "clock": config.clock,
            "max_open_files": config.max_open_files,
            **config.lsm,
        })

    @classmethod
    async def open_writer(cls, registry: DomainRegistry, record: DomainRecord, io: CloudIO,
                          cache: Any, config: DomainConfig) -> Domain:
        last_error: BaseException | None = None
        for _ in range(OPEN_ATTEMPTS):
            epoch = await registry.claim_epoch(record, config.node)
            manifest = FencedManifestStore(io, record.prefix)
            current = await manifest.load()
            if current is not None and current.epoch > epoch:
                last_error = Fenced(f"a newer writer (epoch {current.epoch}) opened meanwhile")
                continue
            replaced = current.epoch if current is not None else 0
            persisted = (decode_manifest(current.body, manifest.key).last_seqno
                         if current is not None and current.body else 0)
            wal: GroupCommitLog | None = None
            replay: list[LogRecord] = []
            if config.wal != "remote":
                # Before the stamp: the log records that this node is about to own the domain.
                wal, replay = await LocalLog.open(
                    config.wal_dir / record.uuid, epoch=epoch, persisted_seqno=persisted,
                    owner_epoch=replaced, name=record.name)
            try:
                stamped = await manifest.try_stamp(epoch, current)
            except BaseException:
                if wal is not None:
                    await wal.close()
                raise
            if not stamped:  # another writer got in between: decide again
                if wal is not None:
                    await wal.close()
                last_error = Fenced("the manifest changed while opening")
                continue
            persistence = Persistence(await cls._data_persistence(io, record, cache, config),
                                      manifest)
            db = await Database.open(cls._options(config, epoch=epoch, readonly=False),
                                     persistence)
            try:
                if db.max_persisted_seqno != persisted:
                    raise IOFailure(f"domain {record.name}: manifest seqno {persisted} but the "
                                    f"database opened at {db.max_persisted_seqno}")
                if wal is None:
                    wal, replay = await RemoteLog.open(
                        io, record.prefix, epoch=epoch, persisted_seqno=persisted,
                        name=record.name)
                for r in replay:
                    await db.apply(r.batch(), seqno=r.base_seqno)
            except LogMoved as exc:
                last_error = exc
                await db.close()
                continue
            except BaseException:
                await db.close()
                if wal is not None:
                    await wal.close()
                raise
            log.info(
                "domain %s (%s) open for writing at epoch %d (took over from epoch %d): "
                "%s log, manifest seqno %d, replayed %d records up to seqno %d",
                record.name, record.uuid, epoch, replaced, wal.kind, persisted, len(replay),
                db.max_applied_seqno,
            )
            return cls(record, config, db, manifest, wal, epoch, io)
        raise IOFailure(f"could not open domain {record.name} for writing: {last_error}")

    @classmethod
    async def open_reader(cls, record: DomainRecord, io: CloudIO, cache: Any,
                          config: DomainConfig) -> Domain:
        manifest = FencedManifestStore(io, record.prefix, readonly=True)
        persistence = Persistence(await cls._data_persistence(io, record, cache, config), manifest)
        db = await Database.open(cls._options(config, epoch=READER_EPOCH, readonly=True),
                                 persistence)
        current = await manifest.load()
        epoch = current.epoch if current is not None else 0
        log.info("domain %s (%s) open read-only at seqno %d (epoch %d)",
                 record.name, record.uuid, db.max_persisted_seqno, epoch)
        return cls(record, config, db, manifest, None, epoch, io)

    # --- writes ------------------------------------------------------------------------------

    def check_writable(self) -> None:
        if self.fenced is not None:
            raise Fenced(f"domain {self.name}: {self.fenced}")
        if self.read_only:
            raise ReadOnly(f"domain {self.name} is open read-only")
        if self.broken is not None:
            raise IOFailure(f"domain {self.name} failed: {self.broken}")
        if self._closed:
            raise ShuttingDown(f"domain {self.name} is closed")

    async def write(self, batch: WriteBatch) -> int:
        """Make ``batch`` durable and visible, atomically; returns its last seqno."""
        self.check_writable()
        self.last_access = self.config.clock.monotonic()
        if not batch.ops:
            return self.db.max_applied_seqno
        for _kind, key, value in batch.ops:
            check_key(key)
            check_value(value)
        assert self.log is not None
        base = self._next_seqno
        self._next_seqno += len(batch.ops)
        record = LogRecord.of(batch, base)
        try:
            await self.log.append(record)
        except Fenced as exc:
            self._step_down(str(exc))
            raise
        except CacheDaemonError as exc:
            # The LSM may have tried a manifest write of its own (memtable full) and lost it:
            # that is a fence, not a failure to reopen from (which would take the domain back).
            self._check_fenced(exc)
            if self.log.failed is not None and self.broken is None:
                self.broken = exc
            if isinstance(exc, Fenced | OutcomeUnknown):
                raise
            # The record may be in the log anyway (written, then the sync or the answer
            # failed): replayed at the next opening. Say so rather than "not applied".
            raise OutcomeUnknown(f"domain {self.name}: the write may or may not be applied "
                                 f"(its log append failed: {exc.message})") from exc
        self.metrics.writes += 1
        self.metrics.write_bytes += batch.approximate_bytes
        return record.last_seqno

    async def _apply(self, records: list[LogRecord]) -> None:
        """The log's on-durable hook: apply a durable group to the memtable, in order."""
        db = self.db
        for r in records:
            await db.apply(r.batch(), seqno=r.base_seqno)
        if db.max_persisted_seqno > self._released_seqno:
            self._flush_wake.set()  # the LSM flushed by itself: release the log soon

    # --- health: fenced, broken ----------------------------------------------------------------

    @property
    def fenced(self) -> str | None:
        """Why this writer was fenced (it steps down), or ``None``. Includes a manifest
        compare-and-swap the LSM lost in background work nobody was waiting on."""
        self.check_background()
        return self._fenced

    @fenced.setter
    def fenced(self, why: str | None) -> None:
        self._fenced = why

    @property
    def broken(self) -> BaseException | None:
        """Why this writer failed (the service reopens it), or ``None``: its log failed, or the
        LSM's background work did (a manifest write whose outcome is unknown among them)."""
        self.check_background()
        return self._broken

    @broken.setter
    def broken(self, exc: BaseException | None) -> None:
        self._broken = exc

    def check_background(self) -> bool:
        """Adopt a failure of the LSM's background work (see the module docstring). ``True``
        while this is an open writer that may go on (neither fenced nor broken)."""
        if self.log is None or self._closed or self._fenced is not None:
            return False
        if self.manifest.fenced is not None:
            self._step_down(self.manifest.fenced)
            return False
        err = self.db.background_error
        if err is not None and self._broken is None:
            log.error("domain %s (epoch %d): background work failed (%s); it will be reopened "
                      "from the manifest in the bucket", self.name, self.epoch, err)
            self._broken = err
        return self._broken is None

    def _step_down(self, why: str) -> None:
        if self._fenced is None:
            self._fenced = why
            self.read_only = True
            log.error("domain %s (epoch %d) is fenced and stops taking writes: %s",
                      self.name, self.epoch, why)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        self.last_access = self.config.clock.monotonic()
        return await self.db.get(key)

    async def scan(self, start: bytes | None, end: bytes | None, prefix: bytes | None,
                   limit: int, reverse: bool) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to ``limit`` items at one snapshot, and the ``next`` cursor (None when done).

        Forward, ``next`` is the first key not returned (pass it as the inclusive ``start``);
        reverse, it is the last key returned (pass it as the exclusive ``end``).
        """
        self.last_access = self.config.clock.monotonic()
        snap = self.db.create_snapshot()
        try:
            items = await self.db.scan(start, end, prefix=prefix, limit=limit + 1,
                                       reverse=reverse, snapshot=snap)
        finally:
            snap.release()
        if len(items) <= limit:
            return items, None
        following = items[limit][0]
        items = items[:limit]
        return items, (items[-1][0] if reverse else following)

    # --- flush, compaction, refresh ------------------------------------------------------------

    async def flush(self) -> None:
        """Memtable to SSTs and manifest; then release the log. A replica refreshes instead."""
        if self.log is None and self.fenced is None:
            await self.refresh()
            return
        self.check_writable()
        async with self._flush_lock:
            try:
                if self.db.max_applied_seqno > self.db.max_persisted_seqno:
                    await self.db.flush()
                    self.metrics.flushes += 1
                await self._release()
            except CacheDaemonError as exc:
                self._check_fenced(exc)
                raise

    async def _release(self) -> None:
        persisted = self.db.max_persisted_seqno
        if self.log is not None and persisted > self._released_seqno:
            await self.log.release(persisted)
            self._released_seqno = persisted

    def _check_fenced(self, exc: BaseException) -> None:
        if self.manifest.fenced is not None:
            self._step_down(self.manifest.fenced)
            raise Fenced(f"domain {self.name}: {self.manifest.fenced}") from exc

    async def compact(self) -> None:
        self.check_writable()
        try:
            await self.db.compact_range()
            await self._release()
        except CacheDaemonError as exc:
            self._check_fenced(exc)
            raise
        self.metrics.compactions += 1

    async def refresh(self) -> bool:
        changed = await self.db.refresh()
        self.last_refresh = self.config.clock.monotonic()
        self.metrics.refreshes += 1
        if changed:
            current = await self.manifest.load()
            if current is not None:
                self.epoch = current.epoch
        return changed

    async def run_flush_loop(self) -> None:
        """Writer background: flush every ``flush_interval_s`` (and release after LSM flushes)."""
        clock = self.config.clock
        while not self._closed and self.fenced is None and self.broken is None:
            waiter = asyncio.ensure_future(self._flush_wake.wait())
            sleeper = asyncio.ensure_future(clock.sleep(self.config.flush_interval_s))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                timed = sleeper.done()
            finally:
                waiter.cancel()
                sleeper.cancel()
            self._flush_wake.clear()
            if self.closed:
                return
            try:
                if timed:
                    await self.flush()
                else:
                    async with self._flush_lock:
                        await self._release()
            except asyncio.CancelledError:
                raise
            except Fenced:
                return
            except Exception as exc:
                log.warning("domain %s: background flush failed: %s", self.name, exc)
                if not self.check_background():  # fenced: step down; LSM failure: broken
                    return
                if self.db.max_persisted_seqno < self._released_seqno:
                    return

    async def collect_garbage(self) -> int:
        if self.read_only:
            return 0
        return await self.db.collect_garbage()

    # --- introspection -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.record.uuid,
            "epoch": self.epoch,
            "last_seqno": self.db.max_applied_seqno,
            "persisted_seqno": self.db.max_persisted_seqno,
            "levels": [
                {"level": i, "files": s.files, "bytes": s.bytes}
                for i, s in enumerate(self.db.level_stats())
            ],
            "read_only": self.read_only,
        }

    # --- closing -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Finish queued log writes, close the log and the database (no flush: the log has
        every acknowledged write)."""
        if self._closed:
            return
        self._closed = True
        self._flush_wake.set()
        try:
            if self.log is not None:
                with contextlib.suppress(CacheDaemonError):
                    await self.log.close()
        finally:
            await self.db.close()
