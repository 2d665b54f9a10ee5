"""``ObjectGC``: deletes bucket objects whose data the L1 metastore no longer references.

Redpanda's ``db_domain_manager::gc_loop``: every ``interval_s`` it walks the object rows **as
persisted in the domain's manifest** (``RowStore.persisted_snapshot``; a read replica at that
manifest may still be reading an object whose death is not yet persisted), in batches of
``batch_size``, and picks

- objects whose removed data size equals their total data size and whose row was last updated
  at least ``deletion_delay_s`` ago (readers that looked an extent up just before it was
  removed get that long to finish), and
- preregistrations older than ``preregistration_ttl_s`` (an upload that never got added).

For each batch it takes the object locks, re-reads the rows from a fresh snapshot and keeps only
those still due (so an object is never deleted while an extent references it), deletes the
bucket object **first** and the row **after**: a crash in between leaves a row whose object is
gone, which the next round deletes again (a delete of a missing object succeeds); the reverse
order could leak the object forever. A failed bucket delete keeps the row for the next round.

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
from cachedaemon.metastore.l1.metastore import L1Metastore
from cachedaemon.metastore.l1.state import StagedRows
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


def default_object_name(oid: uuid.UUID) -> str:
    """The bucket key of an L1 object: ``l1/objects/<oid>``."""
    return f"l1/objects/{oid}"


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
        object_name: Callable[[uuid.UUID], str] = default_object_name,
        clock: Clock | None = None,
        domain: str = "",
        alive: Callable[[], bool] | None = None,
    ) -> None:
        self.metastore = metastore
        self.deleter = deleter
        self.interval_s = interval_s
        self.deletion_delay_s = deletion_delay_s
        self.preregistration_ttl_s = preregistration_ttl_s
        self.batch_size = batch_size
        self.object_name = object_name
        self.clock = clock or metastore.clock
        self.domain = domain
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

        def due(o: ObjectEntry) -> bool:
            if o.is_preregistration:
                return o.last_updated <= prereg_cutoff
            return o.is_dead and o.last_updated <= dead_cutoff

        result = GcResult()
        start, end = keys.objects_range()
        store = self.metastore.store
        while True:
            async with store.persisted_snapshot() as reader:
                rows = await reader.scan(start, end, limit=self.batch_size)
            candidates = [keys.decode_object_key(k) for k, v in rows
                          if due(values.decode_object(v))]
            if candidates:
                await self._collect_batch(candidates, due, result)
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

    async def _collect_batch(self, candidates: list[uuid.UUID],
                             due: Callable[[ObjectEntry], bool], result: GcResult) -> None:
        ms = self.metastore
        async with (ms.locks.partitions(), ms.locks.objects(candidates),
                    ms.store.snapshot(for_write=True) as reader):
            staged = StagedRows(reader)
            confirmed: list[tuple[uuid.UUID, ObjectEntry]] = []
            for oid in candidates:
                o = await staged.object(oid)
                if o is not None and due(o):
                    confirmed.append((oid, o))
            sem = asyncio.Semaphore(DELETE_CONCURRENCY)

            async def delete(oid: uuid.UUID) -> bool:
                async with sem:
                    try:
                        await self.deleter.delete(self.object_name(oid))
                        return True
                    except CacheDaemonError as exc:
                        GC_ERRORS.labels(self.domain).inc()
                        result.errors += 1
                        log.warning("L1 object GC: deleting object %s failed: %s", oid, exc)
                        return False

            done = await asyncio.gather(*(delete(oid) for oid, _ in confirmed))
            deleted = [(oid, o) for (oid, o), ok in zip(confirmed, done, strict=True) if ok]
            for oid, _ in deleted:
                staged.delete_object(oid)
            if deleted:
                await ms.store.apply(staged.ops())
        for _, o in deleted:
            if o.is_preregistration:
                result.preregistrations_expired += 1
                GC_PREREGISTRATIONS.labels(self.domain).inc()
            else:
                result.objects_deleted += 1
                result.bytes_deleted += o.object_size
                GC_OBJECTS.labels(self.domain).inc()
                GC_BYTES.labels(self.domain).inc(o.object_size)
