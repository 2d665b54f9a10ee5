"""Adapters between the server's wiring and the lower layers' services (remote, cache).

``open_shard_store(settings, shard)`` builds a shard's object store (the configured backend,
wrapped in retries bounded by ``remote.retry_timeout``); ``probe_store`` is the start-up
reachability check; ``start_cache``/``stop_cache`` and ``start_domains``/``stop_domains``
start and stop this shard's cache service and metastore domains. Called by
:mod:`cachedaemon.server.shard` during start-up and shut-down, on the shard they concern.
"""

from __future__ import annotations

from typing import Any

from cachedaemon.cache.service import CacheService
from cachedaemon.cache.service import start_cache as _start_cache
from cachedaemon.cache.service import stop_cache as _stop_cache
from cachedaemon.config import Settings
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.factory import check_bucket, open_object_store
from cachedaemon.remote.retrying import RetryingObjectStore


def open_raw_store(settings: Settings) -> ObjectStore:
    r = settings.remote
    options: dict[str, Any] = {}
    if r.url.startswith("s3://"):
        options = {
            "max_pool_connections": r.max_connections,
            "multipart_threshold": r.multipart_threshold,
            "part_size": r.multipart_part_size,
        }
    return open_object_store(r.url, s3_endpoint=r.s3_endpoint, region=r.region,
                             source=settings.sources.get("remote.url", "config"), **options)


def open_shard_store(settings: Settings, shard: int) -> ObjectStore:
    """The object store of one shard (call on that shard's loop)."""
    return RetryingObjectStore(open_raw_store(settings), deadline_s=settings.remote.retry_timeout)


async def probe_store(store: Any) -> None:
    """One listing of the bucket; raises Unavailable naming the bucket when it fails."""
    inner = getattr(store, "inner", store)
    await check_bucket(inner)


async def check_bucket_identity(store: Any, settings: Settings) -> None:
    """Drop a cache that belongs to another bucket (see :mod:`cachedaemon.server.bucket_identity`);
    on shard 0, before the cache starts."""
    from cachedaemon.server.bucket_identity import check_bucket_identity as _check

    await _check(store, settings.storage.data_dir, settings.remote.url,
                 create=not settings.server.read_only)


async def start_cache(smp: Smp, settings: Settings) -> Sharded[CacheService]:
    """This shard's cache service; shard 0's recovers (tracker, walk, ``.part``)."""
    return await _start_cache(smp, settings.cache, settings.cache_dir)


async def reload_cache(cache: Sharded[CacheService], settings: Settings) -> None:
    """Apply reloaded cache settings on this shard (each shard is told by shard 0); shard 0's
    recomputes the limits, trims if now over them and lets waiting writers in if now under."""
    await cache.local().apply_settings(settings.cache)


async def stop_cache(cache: Sharded[CacheService]) -> None:
    """Stop this shard's cache service (shard 0's saves the tracker)."""
    await _stop_cache(cache)


async def start_domains(smp: Smp, cache: Sharded[CacheService], store: ObjectStore,
                        settings: Settings, *, max_open_domains: int | None = None,
                        max_open_files: int | None = None) -> Sharded[Any]:
    """This shard's metastore DomainService (after the cache; see metastore.service), then
    the L1 object GC loops of the L1 domains this shard writes (from start-up, not from each
    domain's first L1 request). ``max_open_domains``/``max_open_files``: the descriptor
    budget's figures, when it had to lower the configured ones."""
    from cachedaemon.core.executor import background_io
    from cachedaemon.metastore import metrics as metastore_metrics
    from cachedaemon.metastore.l1.service import l1_config, start_l1
    from cachedaemon.metastore.service import config_from_settings
    from cachedaemon.metastore.service import start_domains as _start_domains

    metastore_metrics.register()
    overrides: dict[str, Any] = {}
    if max_open_domains is not None:
        overrides["max_open_domains"] = max_open_domains
    if max_open_files is not None:
        overrides["max_open_files"] = max_open_files
    # Background thread jobs, for the start and for the tasks it starts (core/executor).
    with background_io():
        domains = await _start_domains(smp, store, cache,
                                       config_from_settings(settings, **overrides))
        await start_l1(domains.local(), l1_config(settings))
    return domains


async def stop_domains(domains: Sharded[Any]) -> None:
    """Stop this shard's domains (nothing to flush: the logs hold every acknowledged write)."""
    from cachedaemon.metastore.l1.service import stop_l1

    # The L1 object GC loops first: they use the domains.
    await stop_l1(domains.local())
    await domains.stop()
