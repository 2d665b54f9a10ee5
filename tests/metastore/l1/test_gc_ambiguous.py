"""The L1 object GC when a write's answer is lost after it landed (``docs/concurrency.md``).

* A bucket delete that landed but reported failure keeps the row; the next round deletes again
  (a missing object deletes fine) and only then drops the row. It never counts as not deleted
  in a way that could bring the object back, nor as deleted before it is.
* An ``add_objects`` whose log append landed but reported failure (the remote log, every answer
  lost) is unknown, and in fact durable: the GC must not expire the object's preregistration on
  the strength of the in-memory rows that never saw the add. The domain re-reads its log
  (reopens) before the GC's confirming read, so the object survives.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.clock import ManualClock
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm import Database
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.l1 import L1Metastore, ObjectGC, object_bucket_key
from cachedaemon.metastore.l1.service import DomainRowStore
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.faulty import FaultInjectingObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from tests.metastore.l1.helpers import P0, add, ext, obj, terms_for

DELAY_S = 600.0
TTL_S = 300.0


async def test_bucket_delete_that_landed_but_failed_keeps_the_row_until_redone(
        l1: L1Metastore, db: Database, clock: ManualClock) -> None:
    inner = MemoryObjectStore()
    bucket = FaultInjectingObjectStore(inner, clock=clock)
    gc = ObjectGC(l1, bucket, deletion_delay_s=DELAY_S, domain=f"gc-{uuid.uuid4().hex[:8]}")
    objects = [obj(ext(P0, i * 10, i * 10 + 9)) for i in range(3)]
    for o in objects:
        await inner.put(object_bucket_key("l1", o.oid), b"x" * o.object_size)
    await add(l1, objects)
    await l1.set_start_offset(P0, 30)
    await db.flush()
    clock.advance(DELAY_S)
    bucket.land_then_fail("delete", nth=2, times=1)
    got = await gc.collect()
    assert (got.objects_deleted, got.errors) == (2, 1)
    assert [i async for i in inner.list_all("l1/")] == []  # all three are gone from the bucket
    assert len(await l1.list_objects()) == 1  # ... but one row waits for a delete that answers
    got = await gc.collect()
    assert (got.objects_deleted, got.errors) == (1, 0)
    assert await l1.list_objects() == []


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[DomainService, FaultInjectingObjectStore]]:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    cache = await CacheService.open_single(tmp_path / "cache")
    svc = DomainService(0, 1, store, cache, DomainConfig(
        data_dir=tmp_path, wal="remote", flush_interval_s=3600.0, gc_interval_s=3600.0,
        file_deletion_delay_s=0.0, memtable_bytes=1 << 20))
    svc.io.retry_chain_s = 0.3
    await svc.start()
    try:
        yield svc, store
    finally:
        await svc.stop()
        await cache.stop()


async def test_add_whose_log_append_landed_is_not_expired_by_the_gc(
        service: tuple[DomainService, FaultInjectingObjectStore]) -> None:
    svc, store = service
    clock = ManualClock()
    l1 = L1Metastore(DomainRowStore(svc, "l1"), clock=clock)
    gc = ObjectGC(l1, store, deletion_delay_s=DELAY_S, preregistration_ttl_s=TTL_S, clock=clock)
    (oid,) = await l1.preregister_objects(1)
    await store.put(object_bucket_key("l1", oid), b"x" * 116)
    await svc.flush("l1")
    clock.advance(TTL_S + 1)  # the preregistration is due for expiry...
    prefix = (await svc.domain("l1", create=False)).record.prefix
    store.land_then_fail("put", key=f"{prefix}/wal/", nth=1)  # ...when the add lands, unheard
    store.fail("put", key=f"{prefix}/wal/")
    with pytest.raises(CacheDaemonError):
        o = obj(ext(P0, 0, 9), oid=oid)
        await l1.add_objects([o], terms_for([o]))
    store.clear()
    got = await gc.collect()
    assert got.preregistrations_expired == 0 and got.objects_deleted == 0
    assert await store.head(object_bucket_key("l1", oid)) is not None
    info = await l1.get_object(oid)
    assert info is not None and not info.is_preregistration
    assert (await l1.get_offsets(P0)).next_offset == 10
