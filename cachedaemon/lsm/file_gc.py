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

Run by the database's GC task on its shard after flushes and compactions (a wake-up keeps only
the newest request, like the actor's mailbox) and when the earliest delay expires.
"""

from __future__ import annotations

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
    ) -> None:
        self._data = data
        self._versions = versions
        self._tables = table_cache
        self._options = options
        self._in_flight = in_flight
        self._since: dict[FileHandle, float] = {}
        self.deleted = 0

    def safe_highest(self) -> int:
        pending = self._in_flight()
        if pending:
            return min(pending) - 1
        return self._versions.next_file_id - 1

    async def collect(self) -> float | None:
        """One pass. Returns seconds until the next garbage file comes due, or ``None``."""
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
            await self._tables.evict(handle)
            await self._data.remove_file(handle)
            self._since.pop(handle, None)
            self.deleted += 1
            log.debug("lsm gc: removed %s", handle.name)
        return next_due
