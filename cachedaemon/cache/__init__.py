"""The bounded local-disk cache: keys, reservations, staging files, trim, index, service.

Public API (see ``docs/cache.md``)::

    cache = await start_cache(smp, settings.cache, settings.cache_dir)   # Sharded[CacheService]
    svc = cache.local()                                # or: await CacheService.open_single(dir)
    entry = await svc.get(key)                         # CacheEntry(path, size) | None
    guard = await svc.reserve_space(nbytes, nobjects, deadline)
    staging = await svc.create_staging_file(key, deadline)
    await staging.append(data); await staging.commit(replace=True)
    ticket, overlapped = await svc.register(key, write=True)   # object routes: docs/cache.md
    await staging.publish(ticket, replace=True, remove=True)   # ... or svc.finish(ticket, ...)

Modules: :mod:`.keys` (validation, on-disk names), :mod:`.reservation` (ReservationGuard),
:mod:`.pressure` (limits, trim target, over-commit, degraded disk), :mod:`.index` (the index
in memory), :mod:`.index_format` / :mod:`.journal` / :mod:`.index_load` (its files: bytes,
writer, reader), :mod:`.index_store` (start-up, journaling, compaction, staging files),
:mod:`.walker` (blocking directory work), :mod:`.coordinator` (shard-0 accounting and trim),
:mod:`.coherence` (shard-0 per-key ordering of object writes and fills), :mod:`.staging`
(StagingFile), :mod:`.service` (CacheService, start/stop).
"""

from cachedaemon.cache.coherence import KeyTable
from cachedaemon.cache.coordinator import CacheCoordinator, CacheMetrics, TrimResult
from cachedaemon.cache.keys import checked_relpath, key_relpath, validate_key
from cachedaemon.cache.reservation import ReservationGuard
from cachedaemon.cache.service import (
    CacheEntry,
    CacheService,
    CacheStats,
    CacheStatus,
    start_cache,
    stop_cache,
)
from cachedaemon.cache.staging import StagingFile

__all__ = [
    "CacheCoordinator",
    "CacheEntry",
    "CacheMetrics",
    "CacheService",
    "CacheStats",
    "CacheStatus",
    "KeyTable",
    "ReservationGuard",
    "StagingFile",
    "TrimResult",
    "checked_relpath",
    "key_relpath",
    "start_cache",
    "stop_cache",
    "validate_key",
]
