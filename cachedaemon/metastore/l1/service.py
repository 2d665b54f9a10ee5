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

:func:`l1_call` is what the HTTP handlers run on the domain's owner shard (through
``call_domain``); :func:`stop_l1` stops that shard's GC loops (the daemon calls it before it stops
the domains; a loop also ends by itself once its service has stopped).

Everything here lives on the shard that owns the domain; the table is keyed by service, and a
service is only touched from its own shard.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cachedaemon.errors import CacheDaemonError, ReadOnly
from cachedaemon.metastore.l1.gc import ObjectGC, default_object_name
from cachedaemon.metastore.l1.metastore import L1Metastore
from cachedaemon.metastore.l1.store import (
    RowOp,
    RowReader,
    snapshot_reader,
    write_batch_of,
)
from cachedaemon.metastore.l1.types import GcResult
from cachedaemon.metastore.service import SERVICES, DomainService


@dataclass(frozen=True)
class L1Config:
    """L1 settings (``[metastore]``: ``gc_interval``, ``file_deletion_delay``,
    ``l1_preregistration_ttl``)."""

    gc_interval_s: float = 60.0
    deletion_delay_s: float = 3600.0
    preregistration_ttl_s: float = 3600.0
    gc_batch_size: int = 1000


class DomainRowStore:
    """:class:`~cachedaemon.metastore.l1.store.RowStore` over one domain of a DomainService."""

    def __init__(self, service: DomainService, name: str) -> None:
        self.service = service
        self.name = name

    async def _domain(self, create: bool) -> Any:
        return await self.service.domain(self.name,
                                         create=create and not self.service.read_only)

    @asynccontextmanager
    async def snapshot(self, *, for_write: bool = False) -> AsyncIterator[RowReader]:
        if for_write and self.service.read_only:
            raise ReadOnly(f"domain {self.name}: this daemon is a read-only replica")
        domain = await self._domain(for_write)
        async with snapshot_reader(domain.db) as reader:
            yield reader

    @asynccontextmanager
    async def persisted_snapshot(self) -> AsyncIterator[RowReader]:
        domain = await self._domain(False)
        async with snapshot_reader(domain.db, domain.db.max_persisted_seqno) as reader:
            yield reader

    async def apply(self, ops: Sequence[RowOp]) -> None:
        await self.service.write(self.name, write_batch_of(ops))


class _CachedObjectDeleter:
    """Deletes an object from the bucket, then drops this node's cached copy of it."""

    def __init__(self, service: DomainService) -> None:
        self.store = service.io.store
        # The shard's CacheService, when the daemon runs one (objects uploaded through the
        # object API are cached under their key).
        self.cache = getattr(service, "_cache", None)

    async def delete(self, key: str) -> None:
        await self.store.delete(key)
        if self.cache is not None:
            await self.cache.invalidate(key)


@dataclass
class L1Domain:
    metastore: L1Metastore
    gc: ObjectGC | None


_TABLES: weakref.WeakKeyDictionary[DomainService, dict[str, L1Domain]] = (
    weakref.WeakKeyDictionary())


def l1_domain(service: DomainService, name: str, config: L1Config) -> L1Domain:
    """This shard's L1 instance of domain ``name`` (created on first use; a writer's GC loop
    starts then)."""
    table = _TABLES.setdefault(service, {})
    found = table.get(name)
    if found is not None:
        return found
    metastore = L1Metastore(DomainRowStore(service, name), clock=service.config.clock)
    gc = None
    if not service.read_only:
        gc = ObjectGC(metastore, _CachedObjectDeleter(service), interval_s=config.gc_interval_s,
                      deletion_delay_s=config.deletion_delay_s,
                      preregistration_ttl_s=config.preregistration_ttl_s,
                      batch_size=config.gc_batch_size, object_name=default_object_name,
                      domain=name, alive=lambda: service in SERVICES)
        gc.start()
    table[name] = found = L1Domain(metastore, gc)
    return found


async def l1_call(service: DomainService, name: str, config: L1Config, op: str,
                  args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Any:
    """Run ``L1Metastore.<op>(*args, **kwargs)`` of domain ``name`` (on its owner shard; the
    arguments travel as two values because ``call_domain`` passes positionals only)."""
    kwargs = kwargs or {}
    metastore = l1_domain(service, name, config).metastore
    if not hasattr(L1Metastore, op) or op.startswith("_"):
        raise CacheDaemonError(f"no L1 operation {op!r}")
    return await getattr(metastore, op)(*args, **kwargs)


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


def object_name(oid: uuid.UUID) -> str:
    """Where an L1 object lives in the bucket (and under which key to upload it)."""
    return default_object_name(oid)
