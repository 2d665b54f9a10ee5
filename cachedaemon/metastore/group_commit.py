"""Group commit: one durable write (fsync or bucket PUT) for every batch that queued meanwhile.

:class:`GroupCommitLog` is the part both log kinds share. Writers call :meth:`append` with a
record whose sequence numbers the domain assigned; the record joins the pending group. One
**sync task** at a time takes the whole pending group, makes it durable with the subclass's
:meth:`_persist` (local: one ``write`` + one ``fdatasync`` in one thread hop; remote: one
conditional PUT), then hands the group to the ``on_durable`` callback (the domain applies the
batches to its memtable, in sequence order) and only then wakes the writers. So N writers that
arrive while a sync runs share the next sync: the number of syncs is at most the number of
groups, not the number of writes (:attr:`LogStats.syncs` counts them).

A failed persist breaks the log for good (:attr:`failed`): the group and everything queued
behind it fail with that error, and so does every later append. The records of a failed group
were never acknowledged; the owner steps down (a fenced or failing writer stops taking writes).

Owned by one domain on one shard; used from that shard's loop only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachedaemon.errors import CacheDaemonError, IOFailure
from cachedaemon.metastore.log_format import LogRecord

log = logging.getLogger(__name__)

OnDurable = Callable[[list[LogRecord]], Awaitable[None] | None]


@dataclass
class LogStats:
    appends: int = 0  # records acknowledged
    syncs: int = 0  # durable writes (fsyncs / PUTs), one per group
    bytes: int = 0  # record bytes made durable
    segments_deleted: int = 0


class GroupCommitLog:
    """Base of the two log kinds; subclasses implement :meth:`_persist` and :meth:`release`."""

    kind = "abstract"

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = LogStats()
        self._pending: list[tuple[LogRecord, asyncio.Future[None]]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._on_durable: OnDurable | None = None
        self.failed: BaseException | None = None
        self._closed = False
        #: Highest seqno made durable by this log instance.
        self.durable_seqno = 0

    def set_on_durable(self, fn: OnDurable) -> None:
        self._on_durable = fn

    async def append(self, record: LogRecord) -> None:
        """Returns once ``record`` is durable and applied; raises if the log failed."""
        if self.failed is not None:
            raise self._failure()
        if self._closed:
            raise IOFailure(f"log {self.name} is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        if self._sync_task is None:
            self._sync_task = asyncio.create_task(self._sync_loop(), name=f"log-sync-{self.name}")
        # The group is written whether or not this writer waits; a cancelled writer only
        # stops waiting (its batch may still become durable, never half of it).
        await asyncio.shield(fut)

    def _failure(self) -> BaseException:
        assert self.failed is not None
        if isinstance(self.failed, CacheDaemonError):
            return self.failed
        return IOFailure(f"log {self.name} failed: {self.failed!r}")

    async def _sync_loop(self) -> None:
        try:
            while self._pending and self.failed is None:
                group = self._pending
                self._pending = []
                records = [r for r, _ in group]
                try:
                    await self._persist(records)
                    self.durable_seqno = max(self.durable_seqno, records[-1].last_seqno)
                    self.stats.syncs += 1
                    self.stats.appends += len(records)
                    self.stats.bytes += sum(len(r.payload) for r in records)
                    if self._on_durable is not None:
                        result = self._on_durable(records)
                        if result is not None:
                            await result
                except asyncio.CancelledError as exc:
                    self._fail(group, IOFailure(f"log {self.name} sync cancelled"))
                    self.failed = exc
                    raise
                except BaseException as exc:
                    log.error("log %s: group of %d records failed: %s", self.name, len(group), exc)
                    self.failed = exc
                    self._fail(group, exc)
                else:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_result(None)
            if self.failed is not None:
                pending, self._pending = self._pending, []
                self._fail(pending, self._failure())
        finally:
            self._sync_task = None

    @staticmethod
    def _fail(group: list[tuple[LogRecord, asyncio.Future[None]]], exc: BaseException) -> None:
        for _, fut in group:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a cancelled waiter must not log it

    async def drain(self) -> None:
        """Wait until every queued record is durable (or the log failed)."""
        while self._sync_task is not None:
            await asyncio.shield(self._sync_task)

    async def _persist(self, records: list[LogRecord]) -> None:
        raise NotImplementedError

    async def release(self, persisted_seqno: int) -> None:
        """Delete segments whose every record is ``<= persisted_seqno`` (in the manifest)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Finish queued groups, then release resources. Idempotent."""
        if self._closed:
            return
        await self.drain()
        self._closed = True
        await self._close()

    async def _close(self) -> None:
        return None

