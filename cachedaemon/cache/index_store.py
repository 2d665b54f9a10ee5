"""IndexStore: the cache index kept on disk (shard 0): start-up, journaling, compaction, and the
staging files in flight.

Owned by the :class:`~cachedaemon.cache.coordinator.CacheCoordinator` on shard 0 and used only
from its loop. It holds the in-memory :class:`~cachedaemon.cache.index.CacheIndex`, its writer
(:class:`~cachedaemon.cache.journal.IndexJournal`, whose thread is the only writer of the index
files), and the set of live staging files (``.part`` path -> shard).

**Start-up** (:meth:`open`): the index is read (:func:`~cachedaemon.cache.index_load.load_index`,
one thread job) and the cache is ready: counts, LRU order and sizes come from it, and the
``.part`` files a crash left behind are exactly the staging files begun and never finished in
the journal, deleted one by one, without walking the tree. A walk then runs in the background
(:attr:`needs_reconcile`, done by the coordinator) to adopt files the index missed and forget
ones it lists wrongly. Without a snapshot, or with one that cannot be trusted, it falls back to
the walk of old (``walk_cache``: every ``.part`` and empty directory deleted), with a warning
(not for an empty, new cache), and writes a fresh snapshot.

**Staging files** (:meth:`stage_begin`, :meth:`stage_end`): a shard announces a ``.part``
before creating it; the BEGIN record is written before the call returns (write-ahead), so the
next start finds it. The end (commit or abort) is journaled without waiting.

**Compaction** (:meth:`compact`): when the journal outgrows the snapshot, after bulk changes
(a walk's corrections are never journaled), or after a failed write, a copy of the index is
taken on the loop (``dict.copy``, C speed) and written by the writer thread as the next
snapshot, which also starts the next journal generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachedaemon.cache.index import CacheIndex
from cachedaemon.cache.index_load import (
    IndexUnusable,
    LoadedIndex,
    journal_generation,
    layout_is_current,
    load_index,
)
from cachedaemon.cache.journal import IndexJournal
from cachedaemon.cache.keys import PART_SUFFIX
from cachedaemon.cache.walker import (
    LEGACY_SST_DIR,
    delete_entries,
    drop_legacy_layout,
    walk_cache,
)
from cachedaemon.core.failpoints import failpoint

log = logging.getLogger("cachedaemon.cache")


@dataclass
class IndexFigures:
    """What the index did, for stats and metrics."""

    recovered_from_index: int = 0  # 1: the last start read the index (0: it walked)
    recovery_seconds: float = 0.0
    leftover_parts_deleted: int = 0
    snapshots: int = 0
    journal_records: int = 0
    journal_bytes: int = 0
    journal_failures: int = 0


def _is_part(path: str) -> bool:
    return path.endswith(PART_SUFFIX) and ".." not in path.split("/") and not path.startswith("/")


class IndexStore:
    """See the module docstring. ``open()`` on shard 0's loop before anything else."""

    def __init__(self, root: Path, on_disk_full: Callable[[], None]) -> None:
        self.root = root
        self.index = CacheIndex()
        self.journal: IndexJournal | None = None
        self.staging: dict[str, int] = {}  # live .part path -> shard
        self.needs_reconcile = False
        self.figures = IndexFigures()
        self._on_disk_full = on_disk_full
        self._compacting: asyncio.Future[int] | None = None

    # --- start-up ---------------------------------------------------------------------------

    async def open(self) -> None:
        started = time.monotonic()
        problem: IndexUnusable | None = None
        try:
            loaded = await asyncio.to_thread(load_index, self.root)
        except IndexUnusable as exc:
            loaded, problem = None, exc
        if loaded is not None:
            await self._open_loaded(loaded)
        else:
            await self._open_by_walk(problem)
        self.figures.recovery_seconds = time.monotonic() - started

    async def _open_loaded(self, loaded: LoadedIndex) -> None:
        self.index.install(loaded.entries, loaded.total_bytes)
        leftovers = sorted(p for p in loaded.staging if _is_part(p))
        deleted = 0
        if leftovers:
            results = await asyncio.to_thread(delete_entries, self.root, leftovers)
            deleted = sum(1 for _, size in results if size is not None)
        self._start_journal(loaded.generation, loaded.journal_length, loaded.snapshot_bytes)
        assert self.journal is not None
        for part in sorted(loaded.staging):
            self.journal.finish(part)
        self.needs_reconcile = True
        self.figures.recovered_from_index = 1
        self.figures.leftover_parts_deleted = deleted
        log.info(
            "cache: index read in %.2fs: %d entries, %d bytes (snapshot of %d entries, %d "
            "journal records%s); %d .part leftovers deleted; a background walk checks it "
            "against the disk", loaded.seconds, len(self.index), self.index.total_bytes,
            loaded.snapshot_entries, loaded.journal_records,
            f", cut {loaded.torn_tail}" if loaded.torn_tail else "", deleted)

    async def _open_by_walk(self, problem: IndexUnusable | None) -> None:
        if not await asyncio.to_thread(layout_is_current, self.root):
            # Not (known to be) a cache of this layout: drop layout 1's SST copies, which sit
            # where user keys live now.
            dropped = await asyncio.to_thread(drop_legacy_layout, self.root)
            if dropped:
                log.warning("cache: dropped %d metastore SST copies of the previous cache "
                            "layout (%s/; they are fetched again under .cachedaemon/lsm/)",
                            dropped, LEGACY_SST_DIR)
        walk = await asyncio.to_thread(walk_cache, self.root, delete_parts=True)
        items = sorted(walk.files, key=lambda f: f[1])
        self.index.install({p: s for p, _, s in items})
        if problem is not None and problem.legacy:
            log.info("cache: the access-time tracker of before the index is replaced by an "
                     "index built from a directory walk of %d files", len(items))
        elif problem is not None:
            log.warning("cache: the index is unusable (%s); rebuilt it from a directory walk "
                        "of %d files", problem.reason, len(items))
        elif items:
            log.warning("cache: no index in %s; rebuilt it from a directory walk of %d files",
                        self.root, len(items))
        # The rebuilt index must be newer than any journal left there, which could otherwise
        # be taken for its continuation.
        generation = max(problem.generation if problem is not None else 0,
                         journal_generation(self.root))
        self._start_journal(generation, None, 0)
        self.compact()  # the first snapshot: generation + 1, with its journal
        self.figures.recovered_from_index = 0
        self.figures.leftover_parts_deleted = walk.parts_deleted
        log.info("cache: recovered %d entries, %d bytes by a walk (%d .part leftovers and %d "
                 "empty directories deleted)", len(self.index), self.index.total_bytes,
                 walk.parts_deleted, walk.empty_dirs_removed)

    def _start_journal(self, generation: int, journal_length: int | None,
                       snapshot_bytes: int) -> None:
        self.journal = IndexJournal(
            self.root, generation, journal_length=journal_length,
            snapshot_bytes=snapshot_bytes, on_grow=self.compact,
            on_disk_full=self._on_disk_full,
        )
        self.index.journal = self.journal

    # --- staging files ----------------------------------------------------------------------

    async def stage_begin(self, part: str, shard: int) -> None:
        """Record that ``shard`` is about to create the staging file ``part`` (a path relative
        to the cache root); returns once the record is in the journal."""
        self.staging[part] = shard
        if self.journal is not None:
            await self.journal.begin(part)
        await failpoint("cache.staging.begin")

    def stage_end(self, part: str) -> None:
        """The staging file ``part`` was committed or aborted."""
        if self.staging.pop(part, None) is not None and self.journal is not None:
            self.journal.finish(part)

    def shard_parts(self, shard: int) -> list[str]:
        """The live staging files of ``shard`` (to release when it dies)."""
        return [p for p, s in self.staging.items() if s == shard]

    # --- persistence ------------------------------------------------------------------------

    def push_touches(self) -> None:
        """Hand the access order gathered since the last call to the journal."""
        if self.journal is not None:
            self.journal.touches(self.index.take_touches())

    def compact(self) -> None:
        """Write a snapshot and start the next journal generation (in the writer's thread);
        one at a time. Also the journal's call when it outgrows the snapshot."""
        journal = self.journal
        if journal is None or (self._compacting is not None and not self._compacting.done()):
            return
        self.push_touches()
        entries = self.index.copy()
        self.index.bulk_dirty = False
        self._compacting = journal.snapshot(entries, sorted(self.staging))
        self._compacting.add_done_callback(self._compacted)

    def _compacted(self, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.result():
            log.debug("cache: index snapshot of %d bytes written", fut.result())
        self._refresh_figures()

    def _refresh_figures(self) -> None:
        journal = self.journal
        if journal is not None:
            f = self.figures
            f.snapshots = journal.snapshots
            f.journal_records = journal.records
            f.journal_bytes = journal.journal_bytes
            f.journal_failures = journal.failures

    @property
    def wants_snapshot(self) -> bool:
        return self.index.bulk_dirty or (self.journal is not None and self.journal.broken)

    async def flush(self) -> None:
        """Everything so far written and synced (a snapshot first if one is due)."""
        journal = self.journal
        if journal is None:
            return
        self.push_touches()
        if self.wants_snapshot:
            self.compact()
        if self._compacting is not None and not self._compacting.done():
            await asyncio.shield(self._compacting)
        await asyncio.shield(journal.flush())
        self._refresh_figures()

    async def close(self) -> None:
        """Flush, then end the writer. Idempotent."""
        journal = self.journal
        if journal is None:
            return
        try:
            await self.flush()
        finally:
            self.index.journal = None
            self.journal = None
            await journal.close()
            self._refresh_figures_from(journal)

    def _refresh_figures_from(self, journal: IndexJournal) -> None:
        f = self.figures
        f.snapshots = journal.snapshots
        f.journal_records = journal.records
        f.journal_bytes = journal.journal_bytes
        f.journal_failures = journal.failures
