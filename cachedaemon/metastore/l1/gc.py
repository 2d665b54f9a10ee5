"""``ObjectGC``: deletes bucket objects whose data the L1 metastore no longer references, and
expires preregistrations that were never added.

Redpanda's ``db_domain_manager::gc_loop``: every ``interval_s`` it walks the object rows **as
persisted in the domain's manifest** (``RowStore.persisted_snapshot``; a read replica at that
manifest may still be reading an object whose death is not yet persisted), in batches of
``batch_size``, and

- **expires** preregistrations last updated at least ``preregistration_ttl_s`` ago (an upload
  that was never added): not by deleting them but by rewriting each as an ordinary zero-size
  object stamped now (:meth:`L1Metastore.expire_preregistrations`). An upload that raced the
  expiry can then never be added (``add_objects`` wants a live preregistration), and its bucket
  object goes only after a further deletion delay, like any dead object's;
- **deletes** dead objects (removed data size equal to the total, not a preregistration) whose
  row was last updated at least ``deletion_delay_s`` ago (readers that looked an extent up just
  before it was removed get that long to finish).

For each batch of deletions it takes the object locks, re-reads the rows from a fresh snapshot
and keeps only those still due (so an object is never deleted while an extent references it),
deletes the bucket object **first** and the row **after**: a crash in between leaves a row whose
object is gone, which the next round deletes again (a delete of a missing object succeeds); the
reverse order could leak the object forever. A failed bucket delete keeps the row for the next
round. The bucket key is the domain's own (``l1/<domain>/objects/<oid>``,
:meth:`L1Metastore.bucket_key`), so one domain's GC never deletes another domain's object
whatever ids they share; a row from before per-domain keys (its object at the shared legacy key)
loses its row but not the bucket object, which may be another domain's, and that is logged.
A row whose removed size is above its total is corruption: reported, counted as an error,
never deleted.

Counters: ``cachedaemon_l1_gc_objects_deleted_total``, ``cachedaemon_l1_gc_bytes_deleted_total``,
``cachedaemon_l1_gc_preregistrations_expired_total``, ``cachedaemon_l1_gc_errors_total``, each by
``domain``.

Runs as one task on the shard that owns the domain; ``start``/``stop`` from that shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter

from cachedaemon.clock import Clock
from cachedaemon.errors import CacheDaemonError
from cachedaemon.metastore.l1 import keys, values
from cachedaemon.metastore.l1.accounting import corruption
from cachedaemon.metastore.l1.metastore import L1Metastore
from cachedaemon.metastore.l1.types import GcResult
from cachedaemon.metastore.l1.values import ObjectEntry

log = logging.getLogger(__name__)

GC_OBJECTS = Counter("cachedaemon_l1_gc_objects_deleted",
                     "L1 objects deleted from the bucket by the object GC.", ["domain"])
GC_BYTES = Counter("cachedaemon_l1_gc_bytes_deleted",
                   "Bytes of L1 objects deleted from the bucket by the object GC.", ["domain"])
GC_PREREGISTRATIONS = Counter("cachedaemon_l1_gc_preregistrations_expired",
                              "L1 preregistrations expired by the object GC.", ["domain"])
GC_ERRORS = Counter("cachedaemon_l1_gc_errors",
                    "L1 object GC failures (bucket deletes that failed, failed rounds).",
                    ["domain"])

#: Bucket deletes in flight at once.
DELETE_CONCURRENCY = 16


class ObjectDeleter(Protocol):
    """What the GC deletes bucket objects through (an ``ObjectStore`` satisfies it; the daemon
    passes one that also drops the cached copy). Deleting a missing object must succeed."""

    async def delete(self, key: str) -> None: ...


class ObjectGC:
    def __init__(
        self,
        metastore: L1Metastore,
        deleter: ObjectDeleter,
        *,
        interval_s: float = 60.0,
        deletion_delay_s: float = 3600.0,
        preregistration_ttl_s: float = 3600.0,
        batch_size: int = 1000,
        clock: Clock | None = None,
        domain: str | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.metastore = metastore
        self.deleter = deleter
        self.interval_s = interval_s
        self.deletion_delay_s = deletion_delay_s
        self.preregistration_ttl_s = preregistration_ttl_s
        self.batch_size = batch_size
        self.clock = clock or metastore.clock
        #: The metrics label (the metastore's domain unless told otherwise).
        self.domain = metastore.domain if domain is None else domain
        #: The loop ends once this says its owner stopped.
        self.alive = alive or (lambda: True)
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.last_result = GcResult()

    # --- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"l1-gc:{self.domain}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while self.alive():
            await self.clock.sleep(self.interval_s)
            if not self.alive():
                return
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                GC_ERRORS.labels(self.domain).inc()
                log.warning("L1 object GC of domain %r failed: %r", self.domain, exc)

    # --- one round ---------------------------------------------------------------------------

    async def collect(self) -> GcResult:
        """One GC round over every object row; returns what it did."""
        now = self.metastore.now_ms()
        dead_cutoff = now - int(self.deletion_delay_s * 1000)
        prereg_cutoff = now - int(self.preregistration_ttl_s * 1000)
        result = GcResult()
        start, end = keys.objects_range()
        store = self.metastore.store
        while True:
            async with store.persisted_snapshot() as reader:
                rows = await reader.scan(start, end, limit=self.batch_size)
            expire, dead = [], []
            for k, v in rows:
                oid, o = keys.decode_object_key(k), values.decode_object(v)
                if o.over_removed:
                    self._error(result)
                    corruption(self.metastore.domain, f"object {oid} counts "
                               f"{o.removed_data_size} bytes removed of its "
                               f"{o.total_data_size}; the GC leaves it alone")
                elif o.is_preregistration and o.last_updated <= prereg_cutoff:
                    expire.append(oid)
                elif o.is_dead and o.last_updated <= dead_cutoff:
                    dead.append(oid)
            if expire:
                expired = await self.metastore.expire_preregistrations(expire, prereg_cutoff)
                result.preregistrations_expired += len(expired)
                GC_PREREGISTRATIONS.labels(self.domain).inc(len(expired))
            if dead:
                await self._collect_batch(dead, dead_cutoff, result)
            if len(rows) < self.batch_size:
                break
            start = rows[-1][0] + b"\x00"
        self.rounds += 1
        self.last_result = result
        if result.objects_deleted or result.preregistrations_expired:
            log.info("L1 object GC of domain %r: %d objects (%d bytes) deleted, %d "
                     "preregistrations expired", self.domain, result.objects_deleted,
                     result.bytes_deleted, result.preregistrations_expired)
        return result

    def _error(self, result: GcResult) -> None:
        GC_ERRORS.labels(self.domain).inc()
        result.errors += 1

    async def _collect_batch(self, candidates: list[uuid.UUID], cutoff_ms: int,
                             result: GcResult) -> None:
        """Delete the bucket objects, then the rows, of the candidates still dead and due."""
        ms = self.metastore

        def due(o: ObjectEntry) -> bool:
            return o.is_dead and o.last_updated <= cutoff_ms

        async with (ms.locks.partitions(), ms.locks.objects(candidates),
                    ms.store.snapshot(for_write=True) as reader):
            staged = ms.staged(reader)
            confirmed: list[tuple[uuid.UUID, ObjectEntry]] = []
            for oid in candidates:
                o = await staged.object(oid)
                if o is not None and due(o):
                    confirmed.append((oid, o))
            sem = asyncio.Semaphore(DELETE_CONCURRENCY)

            async def delete(oid: uuid.UUID, o: ObjectEntry) -> bool:
                key = ms.bucket_key(oid, o)
                if o.legacy_key:
                    log.warning("L1 object GC of domain %r: object %s is dead; its row goes "
                                "but %s stays in the bucket (the shared legacy key may hold "
                                "another domain's object of that id: delete it by hand once "
                                "no domain references it)", self.domain, oid, key)
                    return True
                async with sem:
                    try:
                        await self.deleter.delete(key)
                        return True
                    except CacheDaemonError as exc:
                        self._error(result)
                        log.warning("L1 object GC: deleting object %s (%s) failed: %s", oid,
                                    key, exc)
                        return False

            done = await asyncio.gather(*(delete(oid, o) for oid, o in confirmed))
            deleted = [(oid, o) for (oid, o), ok in zip(confirmed, done, strict=True) if ok]
            for oid, _ in deleted:
                staged.delete_object(oid)
            if deleted:
                await ms.store.apply(staged.ops())
        for _, o in deleted:
            result.objects_deleted += 1
            result.bytes_deleted += o.object_size
            GC_OBJECTS.labels(self.domain).inc()
            GC_BYTES.labels(self.domain).inc(o.object_size)
