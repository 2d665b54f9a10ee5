"""FileGC: deletes SSTs that no version references, after a delay (Redpanda's GC actor,
LevelDB's ``RemoveObsoleteFiles``).

A pass lists the data files and, for each one, decides:

* referenced by the current version or by a version pinned by a reader (iterator, get) —
  keep;
* written under a newer epoch than ours — keep (another writer's);
* of our epoch with an id above ``safe_highest`` — keep: an in-flight flush or compaction may
  be writing it (``safe_highest`` = lowest in-flight output id − 1, or ``next_file_id − 1``);
* otherwise it is garbage. It is deleted once it has been seen unreferenced for
  ``file_deletion_delay_s`` (on the injected clock): first evicted from the table cache, then
  removed through the persistence.

**Never after a background error** (LevelDB's ``RemoveObsoleteFiles`` returns early once
``bg_error_`` is set). A failed flush or compaction may have failed *after* its manifest became
durable (the directory fsync after the rename, a PUT whose answers were all lost): the outcome
is unknown, the in-memory version may be older than the durable manifest, and "unreferenced by
the current version" no longer means garbage. Nothing is deleted until the database is reopened
and has re-read the durable manifest (``docs/concurrency.md``). The check is made before every
deletion, so a pass that began before the failure stops too.

Run by the database's GC task on its shard after flushes and compactions (a wake-up keeps only
the newest request, like the actor's mailbox) and when the earliest delay expires, and by
:meth:`~cachedaemon.lsm.db.Database.collect_garbage`. Passes never overlap (a lock): a pass
that waited for another computes everything afresh, so it sees what the other one left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cachedaemon.lsm.io.persistence import DataPersistence, FileHandle
from cachedaemon.lsm.options import Options
from cachedaemon.lsm.table_cache import TableCache
from cachedaemon.lsm.version_set import VersionSet

log = logging.getLogger(__name__)


class FileGC:
    def __init__(
        self,
        data: DataPersistence,
        versions: VersionSet,
        table_cache: TableCache,
        options: Options,
        in_flight: Callable[[], set[int]],
        background_error: Callable[[], BaseException | None] = lambda: None,
    ) -> None:
        self._data = data
        self._versions = versions
        self._tables = table_cache
        self._options = options
        self._in_flight = in_flight
        self._background_error = background_error
        self._since: dict[FileHandle, float] = {}
        self._lock = asyncio.Lock()
        self._refusing = False
        self.deleted = 0

    def _stopped(self) -> bool:
        """True (and logged once) while a background error forbids deleting anything."""
        e = self._background_error()
        if e is None:
            return False
        if not self._refusing:
            self._refusing = True
            log.warning(
                "lsm gc: deleting nothing after a background error (%r): a manifest write may "
                "have landed although it failed; reopen to re-read the durable manifest", e
            )
        return True

    def safe_highest(self) -> int:
        pending = self._in_flight()
        if pending:
            return min(pending) - 1
        return self._versions.next_file_id - 1

    async def collect(self) -> float | None:
        """One pass. Returns seconds until the next garbage file comes due, or ``None``."""
        async with self._lock:
            return await self._collect()

    async def _collect(self) -> float | None:
        if self._stopped():
            return None
        clock = self._options.clock
        epoch = self._versions.epoch
        safe_highest = self.safe_highest()
        live = self._versions.live_files()
        garbage: set[FileHandle] = set()
        async for handle in self._data.list_files():
            if handle in live or handle.epoch > epoch:
                continue
            if handle.epoch == epoch and handle.id > safe_highest:
                continue
            garbage.add(handle)
        now = clock.monotonic()
        delay = self._options.file_deletion_delay_s
        next_due: float | None = None
        for handle in list(self._since):
            if handle not in garbage:
                del self._since[handle]
        for handle in sorted(garbage):
            since = self._since.setdefault(handle, now)
            due = since + delay - now
            if due > 0:
                next_due = due if next_due is None else min(next_due, due)
                continue
            if self._stopped():
                return None
            await self._tables.evict(handle)
            await self._data.remove_file(handle)
            self._since.pop(handle, None)
            self.deleted += 1
            log.debug("lsm gc: removed %s", handle.name)
        return next_due
