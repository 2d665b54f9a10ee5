"""DomainService: one shard's metastore domains (Redpanda's domain supervisor + managers).

The daemon starts a ``Sharded[DomainService]`` after the cache and stops it before the cache.
Each domain is owned by one shard, :class:`~cachedaemon.metastore.registry.Placement`: the
metastore's own process when it has one (``metastore.process``), else the crc32 of the name
modulo the serving shards' count; requests for it from any shard hop there with
:func:`call_domain` (the server forwards each domain request to its owner, see
``server/app.py``). On its shard the service:

* opens domains lazily, one opening at a time per name: as a **writer**
  (:meth:`Domain.open_writer`: claims an epoch, fences older writers, replays the log) or, when
  the daemon is read-only, as a **read replica**. A writer that was fenced steps down to a
  read replica on the next request (its writes keep getting 409 ``fenced``). A write to a domain never written creates it
  (registry entry); a read of one never written is :class:`NotFound`. A domain whose log
  failed (not fenced) is reopened on the next request;
* runs a **flush loop** per writer domain (``flush_interval``) and one **GC loop**
  (``gc_interval``: the LSM's file GC drops unreferenced SSTs after the deletion delay);
* runs a **refresher** per read replica every ``refresh_interval``; a refresher whose domain
  has not been read for two intervals stops, and the next read restarts it (refreshing first
  if the replica is older than one interval);
* keeps descriptors bounded however many domains exist: a domain unused for
  ``idle_timeout_s`` is flushed and closed by the **idle closer**, and opening one more than
  ``max_open_domains`` first closes the least recently used domain that no request is using;
  the next request opens it again. Per-domain metric series go with it (they are read from
  the open domains at scrape time);
* stops (``stop``) by closing its gate, stopping the loops and closing every domain; nothing
  is flushed (the log holds every acknowledged write and is replayed on the next open).

All state is owned by the shard's loop; :func:`call_domain` is the only cross-shard entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from cachedaemon.config import Settings
from cachedaemon.core.executor import BACKGROUND
from cachedaemon.core.gate import Gate, GateHolder
from cachedaemon.core.sharded import Sharded
from cachedaemon.errors import CacheDaemonError, NotFound, ReadOnly
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.domain import Domain, DomainConfig, check_key, check_value
from cachedaemon.metastore.layout import ensure_layout
from cachedaemon.metastore.registry import DomainRegistry, Placement, check_domain_name
from cachedaemon.remote.base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every live service (all shards), for the metrics collector.
SERVICES: weakref.WeakSet[DomainService] = weakref.WeakSet()


class DomainService:
    def __init__(self, shard: int, shards: int, store: ObjectStore, cache: Any,
                 config: DomainConfig) -> None:
        self.shard = shard
        self.shards = shards
        self.placement = config.placement or Placement(shards)
        self.config = config
        self._abort = asyncio.Event()
        self.io = CloudIO(store, clock=config.clock, abort=self._abort)
        self.registry = DomainRegistry(self.io)
        self._cache = cache
        self._domains: dict[str, Domain] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._gc_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._layout_checked = asyncio.Event()
        self._in_use: dict[str, int] = {}  # requests using each open domain now
        self._closing: set[str] = set()  # being flushed and closed
        self.closed_idle = 0  # domains closed for idleness or to make room
        self._gate = Gate(f"metastore-shard-{shard}")
        SERVICES.add(self)

    @property
    def read_only(self) -> bool:
        return self.config.read_only

    def domains(self) -> Iterator[Domain]:
        return iter(list(self._domains.values()))

    # --- life cycle ----------------------------------------------------------------------------

    async def check_layout(self) -> int:
        """Migrate the bucket from the previous layout, or refuse (shard 0, once, at start;
        :mod:`~cachedaemon.metastore.layout`). Returns the domains migrated."""
        migrated = await ensure_layout(self.io, read_only=self.read_only)
        self._layout_checked.set()
        return migrated

    async def layout_checked(self) -> None:
        """Shard 0: until :meth:`check_layout` has passed (other shards wait for it)."""
        await self._layout_checked.wait()

    async def start(self) -> None:
        if self._gc_task is None and not self.read_only:
            self._gc_task = asyncio.create_task(self._gc_loop(), name=f"metastore-gc-{self.shard}")
        if self._idle_task is None and self.config.idle_timeout_s > 0:
            self._idle_task = asyncio.create_task(self._idle_loop(),
                                                  name=f"metastore-idle-{self.shard}")

    async def stop(self) -> None:
        # New requests are refused at once; running ones finish (a write waits for its
        # group commit, which completes or fails); bucket retries stop.
        self._abort.set()
        await self._gate.close()
        tasks = [t for t in [*self._tasks.values(), self._gc_task, self._idle_task]
                 if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for domain in list(self._domains.values()):
            try:
                await domain.close()
            except Exception as exc:
                log.error("closing domain %s failed: %s", domain.name, exc)
        self._domains.clear()
        SERVICES.discard(self)

    # --- domains -------------------------------------------------------------------------------

    async def domain(self, name: str, *, create: bool) -> Domain:
        """The open domain ``name`` (opening it if needed). NotFound if never written and
        ``create`` is false (or the daemon is read-only)."""
        domain = self._domains.get(name)
        if domain is not None and domain.broken is None and not _fenced_writer(domain) \
                and name not in self._closing:
            self._gate.check()  # open and well: the usual case, no await
            return self._touch(domain)
        check_domain_name(name)
        with self._gate.hold():
            lock = self._opening.setdefault(name, asyncio.Lock())
            async with lock:
                domain = self._domains.get(name)
                if domain is not None and _fenced_writer(domain):
                    # Step down to a read replica: reads follow the new writer's manifests,
                    # writes keep getting 409 fenced.
                    # (If the replica cannot open, the fenced writer stays: it must never be
                    # reopened as a writer, which would take the domain back.)
                    log.warning("domain %s: fenced writer steps down to a read replica", name)
                    replica = await Domain.open_reader(domain.record, self.io, self._cache,
                                                       self.config)
                    replica.fenced = domain.fenced
                    await self._forget(domain)
                    self._domains[name] = domain = replica
                elif domain is not None and domain.broken is not None:
                    log.warning("domain %s failed (%s); reopening", name, domain.broken)
                    await self._forget(domain)
                    domain = None
                if domain is None:
                    domain = await self._open(name, create=create)
                return self._touch(domain)

    def try_domain(self, name: str) -> Domain | None:
        """The open domain ``name`` when it can be used right now without waiting — open, not
        broken, not a fenced writer due to step down, not being closed — touched as a request
        touches it (:meth:`domain` would return it at once); ``None`` when :meth:`domain` would
        have to wait, open or reopen it. A caller that reads it must not wait either, or must
        count as in use (:meth:`use`)."""
        domain = self._domains.get(name)
        if domain is None or domain.broken is not None or _fenced_writer(domain) \
                or name in self._closing or self._gate.is_closed:
            return None
        return self._touch(domain)

    async def _forget(self, domain: Domain) -> None:
        self._domains.pop(domain.name, None)
        self._stop_task(domain.name)
        with contextlib.suppress(CacheDaemonError):
            await domain.close()

    async def _open(self, name: str, *, create: bool) -> Domain:
        await self._make_room()
        if create and not self.read_only:
            record = await self.registry.create(name)
        else:
            found = await self.registry.lookup(name)
            if found is None:
                raise NotFound(f"no domain {name!r}")
            record = found
        if self.read_only:
            domain = await Domain.open_reader(record, self.io, self._cache, self.config)
        else:
            domain = await Domain.open_writer(self.registry, record, self.io, self._cache,
                                              self.config)
            self._tasks[name] = asyncio.create_task(domain.run_flush_loop(),
                                                    name=f"metastore-flush-{name}")
        self._domains[name] = domain
        return domain

    def use(self, name: str, *, create: bool) -> DomainUse:
        """``async with service.use(name, create=...) as domain``: the open domain ``name``,
        counted as in use (never closed) while the block runs."""
        return DomainUse(self, name, create)

    def _release_use(self, name: str) -> None:
        left = self._in_use[name] - 1
        if left:
            self._in_use[name] = left
        else:
            del self._in_use[name]

    def _closable(self, domain: Domain) -> bool:
        name = domain.name
        lock = self._opening.get(name)
        return self._domains.get(name) is domain and name not in self._in_use \
            and name not in self._closing and not (lock is not None and lock.locked())

    async def _make_room(self) -> None:
        """Close least recently used idle domains until one more fits under the cap."""
        while len(self._domains) >= self.config.max_open_domains:
            idle = sorted((d for d in self._domains.values() if self._closable(d)),
                          key=lambda d: d.last_access)
            if not idle:
                log.warning("metastore shard %d: %d domains open and all in use (cap %d)",
                            self.shard, len(self._domains), self.config.max_open_domains)
                return
            await self._close_domain(idle[0], "to make room")

    async def _close_domain(self, domain: Domain, why: str) -> None:
        """Flush (a writer) and close ``domain``; requests for it wait, then open it anew."""
        name = domain.name
        lock = self._opening.setdefault(name, asyncio.Lock())
        async with lock:
            if self._domains.get(name) is not domain or name in self._in_use:
                return
            self._closing.add(name)
            try:
                self._stop_task(name)
                if domain.log is not None and domain.broken is None and domain.fenced is None:
                    try:
                        await domain.flush()
                    except CacheDaemonError as exc:  # the log keeps every write: replayed
                        log.warning("domain %s: flush before closing failed: %s", name, exc)
                await self._forget(domain)
                self.closed_idle += 1
                log.info("domain %s closed %s", name, why)
            finally:
                self._closing.discard(name)

    async def _idle_loop(self) -> None:
        clock = self.config.clock
        timeout = self.config.idle_timeout_s
        while True:
            await clock.sleep(min(timeout / 2, 30.0))
            now = clock.monotonic()
            for domain in self.domains():
                if now - domain.last_access >= timeout and self._closable(domain):
                    try:
                        await self._close_domain(domain, f"after {timeout:g}s idle")
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("domain %s: closing it failed: %s", domain.name, exc)

    def _touch(self, domain: Domain) -> Domain:
        domain.last_access = self.config.clock.monotonic()
        if domain.log is None:  # a replica (or a fenced writer that stepped down)
            task = self._tasks.get(domain.name)
            if task is None or task.done():
                self._tasks[domain.name] = asyncio.create_task(
                    self._refresher(domain), name=f"metastore-refresh-{domain.name}")
        return domain

    def _stop_task(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _refresher(self, domain: Domain) -> None:
        """Refresh a replica every interval while it is being read; stop when idle."""
        clock = self.config.clock
        interval = self.config.refresh_interval_s
        try:
            while True:
                if clock.monotonic() - domain.last_refresh >= interval:
                    try:
                        await domain.refresh()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("domain %s: refresh failed: %s", domain.name, exc)
                        await clock.sleep(1.0)
                        continue
                if clock.monotonic() - domain.last_access > 2 * interval:
                    log.debug("domain %s: replica idle; refresher stops", domain.name)
                    return
                await clock.sleep(max(0.0, interval - (clock.monotonic() - domain.last_refresh)))
        finally:
            if self._tasks.get(domain.name) is asyncio.current_task():
                del self._tasks[domain.name]

    async def _fresh_reader(self, domain: Domain) -> None:
        """A replica read after an idle spell refreshes first (on demand)."""
        if (domain.log is None and self.config.clock.monotonic()
                - domain.last_refresh >= self.config.refresh_interval_s):
            await domain.refresh()

    async def _gc_loop(self) -> None:
        clock = self.config.clock
        while True:
            await clock.sleep(self.config.gc_interval_s)
            for domain in self.domains():
                try:
                    await domain.collect_garbage()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("domain %s: garbage collection failed: %s", domain.name, exc)

    # --- operations (run on the owner shard) ---------------------------------------------------

    def _check_write(self, name: str) -> None:
        check_domain_name(name)
        if self.read_only:
            raise ReadOnly(f"domain {name}: this daemon is a read-only replica")

    async def write(self, name: str, batch: WriteBatch) -> int:
        self._check_write(name)
        for _kind, key, value in batch.ops:
            check_key(key)
            check_value(value)
        async with self.use(name, create=True) as domain:
            return await domain.write(batch)

    async def put(self, name: str, key: bytes, value: bytes) -> int:
        return await self.write(name, WriteBatch().put(key, value))

    async def delete(self, name: str, key: bytes) -> int:
        return await self.write(name, WriteBatch().delete(key))

    async def get(self, name: str, key: bytes) -> bytes | None:
        check_key(key)
        domain = self.try_domain(name)
        if domain is None or (domain.log is None and self.config.clock.monotonic()
                              - domain.last_refresh >= self.config.refresh_interval_s):
            async with self.use(name, create=False) as domain:
                await self._fresh_reader(domain)
                return await domain.get(key)
        # The hot path: the domain is open and healthy (touched by try_domain), so skip the
        # opening machinery; it counts as in use while the read may wait, as with use().
        in_use = self._in_use
        in_use[name] = in_use.get(name, 0) + 1
        try:
            with self._gate.hold():
                return await domain.db.get(key)
        finally:
            self._release_use(name)

    async def scan(self, name: str, start: bytes | None, end: bytes | None,
                   prefix: bytes | None, limit: int, reverse: bool
                   ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        async with self.use(name, create=False) as domain:
            await self._fresh_reader(domain)
            return await domain.scan(start, end, prefix, limit, reverse)

    async def flush(self, name: str) -> None:
        async with self.use(name, create=False) as domain:
            await domain.flush()

    async def compact(self, name: str) -> None:
        check_domain_name(name)
        if self.read_only:
            raise ReadOnly(f"domain {name}: this daemon is a read-only replica")
        async with self.use(name, create=False) as domain:
            await domain.compact()

    async def info(self, name: str) -> dict[str, Any]:
        async with self.use(name, create=False) as domain:
            await self._fresh_reader(domain)
            return domain.info()

    async def list_names(self) -> list[str]:
        with self._gate.hold():
            return await self.registry.list_names()


class DomainUse:
    """One use of a domain (see :meth:`DomainService.use`): a plain class rather than a
    generator-based context manager, because every kv and L1 request makes one."""

    __slots__ = ("_create", "_holder", "_name", "_service")

    def __init__(self, service: DomainService, name: str, create: bool) -> None:
        self._service = service
        self._name = name
        self._create = create
        self._holder: GateHolder | None = None

    async def __aenter__(self) -> Domain:
        service, name = self._service, self._name
        domain = await service.domain(name, create=self._create)
        service._in_use[name] = service._in_use.get(name, 0) + 1
        try:
            self._holder = service._gate.hold()
        except BaseException:
            service._release_use(name)
            raise
        return domain

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._holder is not None
        self._holder.release()
        self._service._release_use(self._name)


def _fenced_writer(domain: Domain) -> bool:
    return domain.fenced is not None and domain.log is not None


async def call_domain(domains: Sharded[DomainService], name: str,
                      fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``fn(service, name, *args)`` on the shard that owns domain ``name``: a direct call
    there (the server forwards a domain's requests to its owner first, so this is the usual
    case); from another shard only a method of :class:`DomainService` with plain arguments can
    travel."""
    check_domain_name(name)
    shard = domains.shard if domains.count == 1 else domains.local().placement.owner(name)
    if shard == domains.shard:
        # The domain's thread jobs (WAL syncs, SST reads and writes), and those of the tasks
        # it starts, use the shard's background pool: never ahead of requests' (core/executor).
        if BACKGROUND.get():  # the HTTP layer set it for a kv or L1 request
            return await fn(domains.local(), name, *args)
        token = BACKGROUND.set(True)
        try:
            return await fn(domains.local(), name, *args)
        finally:
            BACKGROUND.reset(token)
    result: T = await domains.invoke_on(shard, fn, name, *args)
    return result


def config_from_settings(settings: Settings, **overrides: Any) -> DomainConfig:
    """The domain configuration of the daemon's ``[metastore]`` and related settings."""
    m = settings.metastore
    values: dict[str, Any] = {
        "wal": m.wal,
        "data_dir": settings.storage.data_dir,
        "flush_interval_s": m.flush_interval,
        "memtable_bytes": m.memtable_bytes,
        "refresh_interval_s": m.refresh_interval,
        "gc_interval_s": m.gc_interval,
        "file_deletion_delay_s": m.file_deletion_delay,
        "read_only": settings.server.read_only,
        "idle_timeout_s": m.domain_idle_timeout,
        "max_open_domains": m.max_open_domains,
        "max_open_files": m.max_open_files,
        "node": f"{socket.gethostname()}:{os.getpid()}",
        "placement": Placement.from_settings(settings),
    }
    values.update(overrides)
    return DomainConfig(**values)


async def start_domains(smp: Any, store: ObjectStore, cache: Sharded[Any] | None,
                        config: DomainConfig) -> Sharded[DomainService]:
    """This shard's started :class:`DomainService` (with this shard's store and cache)."""
    sharded: Sharded[DomainService] = Sharded(smp, "metastore")

    def make(shard: int) -> DomainService:
        local_cache = cache.local() if cache is not None else None
        return DomainService(shard, sharded.count, store, local_cache, config)

    service = await sharded.start(make)
    # The bucket's layout first (shard 0, once, before any domain opens): migrate a previous
    # one, or refuse. Other shards wait for shard 0's answer.
    if service.shard == 0:
        await service.check_layout()
    else:
        await sharded.invoke_on(0, DomainService.layout_checked)
    await service.start()
    return sharded
