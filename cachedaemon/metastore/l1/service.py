"""L1 on the daemon's metastore domains: the row-store adapter over a ``DomainService`` and the
per-shard table of L1 instances (one :class:`L1Domain` per domain name: the metastore, its lock
tables and, on a writer, its object GC loop).

:class:`DomainRowStore` reads through the open :class:`~cachedaemon.metastore.domain.Domain`'s
database at a pinned snapshot and writes with ``DomainService.write`` — durable in the domain's
log before it is visible — so L1 rows inherit the domain's durability, epoch fencing (a fenced
writer answers 409) and read replicas (a read-only daemon serves L1 queries from the newest
manifest it has refreshed to; writes get 409 ``read_only``). The domain is looked up for every
operation, so a domain reopened after a failure is picked up; the lock tables live here, so
they outlive such a reopen. The GC decides from the domain's persisted seqno (its manifest).

**The GC runs from start-up for every L1 domain this node writes.** The first L1 write a
writer daemon serves for a domain leaves a marker file ``<data_dir>/l1-domains/<name>``;
:func:`start_l1`, run on every shard when the daemon starts (``server/services.py``), starts the
GC loop of each marked domain the shard owns, so a restart does not wait for the domain's next
L1 request. (A loop's round opens its domain like any request does; a loop whose domain turned
out fenced by another writer stops.) A read-only daemon runs no GC.

:func:`l1_call` is what the HTTP handlers run on the domain's owner shard (through
``call_domain``); :func:`stop_l1` stops that shard's GC loops (the daemon calls it before it stops
the domains; a loop also ends by itself once its service has stopped).

Everything here lives on the shard that owns the domain; the table is keyed by service, and a
service is only touched from its own shard.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachedaemon.config import Settings
from cachedaemon.errors import CacheDaemonError, InvalidArgument, ReadOnly
from cachedaemon.lsm.db import Database
from cachedaemon.metastore.l1.gc import ObjectGC
from cachedaemon.metastore.l1.metastore import DEFAULT_CACHE_BYTES, L1Metastore
from cachedaemon.metastore.l1.store import (
    RowOp,
    RowReader,
    snapshot_reader,
    write_batch_of,
)
from cachedaemon.metastore.l1.types import GcResult
from cachedaemon.metastore.registry import check_domain_name
from cachedaemon.metastore.service import SERVICES, DomainService

log = logging.getLogger(__name__)

#: Under the data directory: one empty file per L1 domain this node has written.
MARKER_DIR = "l1-domains"
#: The operations that write (a writer that serves one for a domain marks it).
WRITE_OPS = frozenset({"add_objects", "replace_objects", "compact_objects",
                       "commit_compaction_metadata", "set_start_offset", "remove_topics",
                       "preregister_objects", "remove_objects"})


@dataclass(frozen=True)
class L1Config:
    """L1 settings (``[metastore]``: ``gc_interval``, ``file_deletion_delay``,
    ``l1_preregistration_ttl``, ``l1_cache_bytes``)."""

    gc_interval_s: float = 60.0
    deletion_delay_s: float = 3600.0
    preregistration_ttl_s: float = 3600.0
    gc_batch_size: int = 1000
    cache_bytes: int = DEFAULT_CACHE_BYTES


def l1_config(settings: Settings) -> L1Config:
    """The L1 settings of the daemon's ``[metastore]`` section."""
    m = settings.metastore
    return L1Config(gc_interval_s=m.gc_interval, deletion_delay_s=m.file_deletion_delay,
                    preregistration_ttl_s=m.l1_preregistration_ttl,
                    cache_bytes=m.l1_cache_bytes)


class DomainRowStore:
    """:class:`~cachedaemon.metastore.l1.store.RowStore` over one domain of a DomainService."""

    def __init__(self, service: DomainService, name: str) -> None:
        self.service = service
        self.name = name

    @asynccontextmanager
    async def snapshot(self, *, for_write: bool = False) -> AsyncIterator[RowReader]:
        # The domain counts as in use while the snapshot lives: the idle closer and the
        # open-domain cap never close it under a reader (docs/concurrency.md).
        if for_write and self.service.read_only:
            raise ReadOnly(f"domain {self.name}: this daemon is a read-only replica")
        create = for_write and not self.service.read_only
        async with self.service.use(self.name, create=create) as domain, \
                snapshot_reader(domain.db) as reader:
            yield reader

    @asynccontextmanager
    async def persisted_snapshot(self) -> AsyncIterator[RowReader]:
        async with self.service.use(self.name, create=False) as domain, \
                snapshot_reader(domain.db, domain.db.max_persisted_seqno) as reader:
            yield reader

    async def apply(self, ops: Sequence[RowOp]) -> None:
        await self.service.write(self.name, write_batch_of(ops))

    def database(self) -> Database | None:
        # The open domain's database if the service hands it over without waiting (and
        # touches the domain, as a request does); else the query's slow path opens it.
        domain = self.service.try_domain(self.name)
        return None if domain is None else domain.db


class _CachedObjectDeleter:
    """Deletes an object from the bucket as an object DELETE does: registered with the cache's
    per-key ordering first (``docs/cache.md``), so no cached copy of it, and no fill racing the
    delete, outlives it on any shard."""

    def __init__(self, service: DomainService) -> None:
        self.store = service.io.store
        # The shard's CacheService, when the daemon runs one (objects uploaded through the
        # object API are cached under their key).
        self.cache = getattr(service, "_cache", None)

    async def delete(self, key: str) -> None:
        if self.cache is None:
            await self.store.delete(key)
            return
        ticket, _ = await self.cache.register(key, write=True)
        try:
            await self.store.delete(key)
        finally:
            await self.cache.finish(ticket, remove=True)


@dataclass
class L1Domain:
    metastore: L1Metastore
    gc: ObjectGC | None
    #: This process has made sure the domain's marker file exists.
    marked: bool = False


_TABLES: weakref.WeakKeyDictionary[DomainService, dict[str, L1Domain]] = (
    weakref.WeakKeyDictionary())


def _fenced(service: DomainService, name: str) -> bool:
    """Another writer took the domain over from this node."""
    return any(d.name == name and d.fenced is not None for d in service.domains())


def l1_domain(service: DomainService, name: str, config: L1Config) -> L1Domain:
    """This shard's L1 instance of domain ``name`` (created on first use; a writer's GC loop
    starts then)."""
    table = _TABLES.setdefault(service, {})
    found = table.get(name)
    if found is not None:
        return found
    metastore = L1Metastore(DomainRowStore(service, name), clock=service.config.clock,
                            domain=name, cache_bytes=config.cache_bytes)
    gc = None
    if not service.read_only:
        gc = ObjectGC(metastore, _CachedObjectDeleter(service), interval_s=config.gc_interval_s,
                      deletion_delay_s=config.deletion_delay_s,
                      preregistration_ttl_s=config.preregistration_ttl_s,
                      batch_size=config.gc_batch_size, domain=name,
                      alive=lambda: service in SERVICES and not _fenced(service, name))
        gc.start()
    table[name] = found = L1Domain(metastore, gc)
    return found


def _marker_dir(service: DomainService) -> Path:
    return Path(service.config.data_dir) / MARKER_DIR


def _write_marker(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).touch()


def _read_markers(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return []


async def _mark(service: DomainService, d: L1Domain, name: str) -> None:
    """Remember (once per process) that this node writes L1 domain ``name``."""
    if d.marked or service.read_only:
        return
    await asyncio.to_thread(_write_marker, _marker_dir(service), name)
    d.marked = True


async def start_l1(service: DomainService, config: L1Config) -> list[str]:
    """Start the GC loop of every L1 domain this node writes that this shard owns (the marked
    ones); returns their names. Nothing on a read-only daemon."""
    if service.read_only:
        return []
    started = []
    for name in await asyncio.to_thread(_read_markers, _marker_dir(service)):
        try:
            check_domain_name(name)
        except InvalidArgument:
            log.warning("ignoring %s: not a domain name", _marker_dir(service) / name)
            continue
        if service.placement.owner(name) == service.shard:
            l1_domain(service, name, config).marked = True
            started.append(name)
    if started:
        log.info("shard %d: L1 object GC running for %s", service.shard, ", ".join(started))
    return started


async def l1_call(service: DomainService, name: str, config: L1Config, op: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """Run ``L1Metastore.<op>(*args, **kwargs)`` of domain ``name`` (on its owner shard; the
    arguments travel as two values because ``call_domain`` passes positionals only)."""
    kwargs = kwargs or {}
    d = l1_domain(service, name, config)
    if not hasattr(L1Metastore, op) or op.startswith("_"):
        raise CacheDaemonError(f"no L1 operation {op!r}")
    result = await getattr(d.metastore, op)(*args, **kwargs)
    if op in WRITE_OPS:
        await _mark(service, d, name)
    return result


async def l1_collect_garbage(service: DomainService, name: str, config: L1Config) -> GcResult:
    """One object GC round of domain ``name`` now."""
    gc = l1_domain(service, name, config).gc
    if gc is None:
        raise ReadOnly(f"domain {name}: this daemon is a read-only replica")
    return await gc.collect()


async def stop_l1(service: DomainService) -> None:
    """Stop the GC loops of this shard's L1 domains."""
    for d in _TABLES.pop(service, {}).values():
        if d.gc is not None:
            await d.gc.stop()
