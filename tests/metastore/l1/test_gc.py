"""The L1 object GC: deletes dead objects from the bucket after the delay, only once their
death is persisted, never while referenced; expires preregistrations (rewritten as zero-size
objects, collected after a further delay); bucket first, row after; legacy-key rows never
delete the shared key; a corrupt row is reported and left alone. End to end against the moto
S3 server; fault cases over the in-memory bucket."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from cachedaemon.clock import ManualClock
from cachedaemon.lsm import Database, WriteBatch
from cachedaemon.metastore.l1 import L1Metastore, ObjectGC, keys, values
from cachedaemon.remote.faulty import FaultInjectingObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from cachedaemon.remote.s3 import S3ObjectStore
from tests.metastore.l1.helpers import P0, P1, T1, add, ext, obj, term

DELAY_S = 600.0
TTL_S = 300.0


@pytest.fixture
async def s3_store(moto_endpoint: str, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    store = S3ObjectStore(s3_bucket, endpoint_url=moto_endpoint)
    try:
        yield store
    finally:
        await store.close()


def metric(name: str, domain: str) -> float:
    return REGISTRY.get_sample_value(name, {"domain": domain}) or 0.0


def key(oid: uuid.UUID) -> str:
    """The bucket key of an object of the fixture's metastore (its default domain)."""
    return keys.object_bucket_key("l1", oid)


async def upload(store: S3ObjectStore | MemoryObjectStore, oid: uuid.UUID, size: int) -> None:
    await store.put(key(oid), b"x" * size)


@pytest.mark.s3
async def test_gc_end_to_end_on_s3(l1: L1Metastore, db: Database, clock: ManualClock,
                                   s3_store: S3ObjectStore) -> None:
    domain = f"gc-{uuid.uuid4().hex[:8]}"
    gc = ObjectGC(l1, s3_store, deletion_delay_s=DELAY_S, preregistration_ttl_s=TTL_S,
                  domain=domain)
    o1 = obj(ext(P0, 0, 9))
    o2 = obj(ext(P0, 10, 19), ext(P1, 0, 4, length=50))
    for o in (o1, o2):
        await upload(s3_store, o.oid, o.object_size)
    await add(l1, [o1, o2])
    await db.flush()

    async def exists(oid: uuid.UUID) -> bool:
        return await s3_store.head(key(oid)) is not None

    # o1 dies; not deleted before the delay, nor after it while the death is not persisted
    await l1.set_start_offset(P0, 10)
    assert (await gc.collect()).objects_deleted == 0
    clock.advance(DELAY_S + 1)
    assert (await gc.collect()).objects_deleted == 0
    assert await exists(o1.oid) and await l1.get_object(o1.oid) is not None
    await db.flush()
    got = await gc.collect()
    assert (got.objects_deleted, got.bytes_deleted) == (1, o1.object_size)
    assert not await exists(o1.oid) and await l1.get_object(o1.oid) is None
    assert metric("cachedaemon_l1_gc_objects_deleted_total", domain) == 1
    assert metric("cachedaemon_l1_gc_bytes_deleted_total", domain) == o1.object_size

    # o2 loses P0's extent but P1 still references it: never deleted
    await l1.set_start_offset(P0, 20)
    await db.flush()
    clock.advance(DELAY_S + 1)
    assert (await gc.collect()).objects_deleted == 0
    assert await exists(o2.oid)
    info = await l1.get_object(o2.oid)
    assert info is not None and info.removed_data_size == 100 < info.total_data_size

    # removing the topic kills it; the delay starts again from that update
    clock.advance(DELAY_S * 3)
    await l1.remove_topics([T1])
    await db.flush()
    clock.advance(DELAY_S - 1)
    assert (await gc.collect()).objects_deleted == 0
    clock.advance(2)
    assert (await gc.collect()).objects_deleted == 1
    assert not await exists(o2.oid) and await l1.list_objects() == []


@pytest.mark.s3
async def test_gc_expires_preregistrations_on_s3(l1: L1Metastore, db: Database,
                                                 clock: ManualClock,
                                                 s3_store: S3ObjectStore) -> None:
    domain = f"gc-{uuid.uuid4().hex[:8]}"
    gc = ObjectGC(l1, s3_store, deletion_delay_s=DELAY_S, preregistration_ttl_s=TTL_S,
                  domain=domain)
    stale, used = await l1.preregister_objects(2)
    await upload(s3_store, stale, 10)  # an upload that was never added
    await upload(s3_store, used, 116)
    await l1.add_objects([obj(ext(P0, 0, 9), oid=used)], [term(P0, 1, 0)])
    clock.advance(TTL_S / 2)
    (fresh,) = await l1.preregister_objects(1)
    await db.flush()
    clock.advance(TTL_S / 2 + 1)
    got = await gc.collect()
    assert (got.preregistrations_expired, got.objects_deleted) == (1, 0)
    # expired, not deleted: the upload stays until the deletion delay has passed too
    info = await l1.get_object(stale)
    assert info is not None and not info.is_preregistration and info.total_data_size == 0
    assert await s3_store.head(key(stale)) is not None
    assert await l1.get_object(used) is not None and await l1.get_object(fresh) is not None
    assert metric("cachedaemon_l1_gc_preregistrations_expired_total", domain) == 1
    await db.flush()
    clock.advance(DELAY_S + 1)
    got = await gc.collect()
    assert (got.preregistrations_expired, got.objects_deleted) == (1, 1)  # fresh expires now
    assert await s3_store.head(key(stale)) is None and await l1.get_object(stale) is None
    assert await s3_store.head(key(used)) is not None


async def test_failed_bucket_delete_keeps_the_row(l1: L1Metastore, db: Database,
                                                  clock: ManualClock) -> None:
    bucket = FaultInjectingObjectStore(MemoryObjectStore(), clock=clock)
    domain = f"gc-{uuid.uuid4().hex[:8]}"
    gc = ObjectGC(l1, bucket, deletion_delay_s=DELAY_S, domain=domain)
    objects = [obj(ext(P0, i * 10, i * 10 + 9)) for i in range(3)]
    for o in objects:
        await upload(bucket, o.oid, o.object_size)
    await add(l1, objects)
    await l1.set_start_offset(P0, 30)
    await db.flush()
    clock.advance(DELAY_S)
    bucket.fail("delete", nth=2, times=1)
    got = await gc.collect()
    assert (got.objects_deleted, got.errors) == (2, 1)
    assert len(await l1.list_objects()) == 1
    assert metric("cachedaemon_l1_gc_errors_total", domain) == 1
    got = await gc.collect()
    assert (got.objects_deleted, got.errors) == (1, 0)
    assert await l1.list_objects() == []
    assert [i async for i in bucket.list_all("l1/")] == []


async def test_legacy_key_rows_never_delete_the_shared_key(
        l1: L1Metastore, db: Database, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    """A row written before per-domain keys names an object at the shared ``l1/objects/<oid>``,
    which another domain may use too: its row goes, the bucket object stays, and that is
    logged."""
    bucket = MemoryObjectStore()
    o = obj(ext(P0, 0, 9))
    await add(l1, [o])
    info = await l1.get_object(o.oid)
    assert info is not None and info.object_key == key(o.oid)
    row = values.ObjectEntry(100, 100, o.footer_pos, o.object_size, 0, False, legacy_key=True)
    assert values.encode_object(row)[0] == 1  # the version of rows from before
    await db.apply(WriteBatch().put(keys.object_key(o.oid), values.encode_object(row)))
    legacy = keys.legacy_object_bucket_key(o.oid)
    await bucket.put(legacy, b"shared")
    info = await l1.get_object(o.oid)
    assert info is not None and info.object_key == legacy == f"l1/objects/{o.oid}"
    await db.flush()
    got = await ObjectGC(l1, bucket, deletion_delay_s=0).collect()
    assert (got.objects_deleted, got.errors) == (1, 0)
    assert await l1.get_object(o.oid) is None
    assert await bucket.head(legacy) is not None
    assert any(legacy in r.getMessage() for r in caplog.records)


async def test_a_row_with_more_removed_than_total_is_reported_not_deleted(
        l1: L1Metastore, db: Database) -> None:
    bucket = MemoryObjectStore()
    o = obj(ext(P0, 0, 9))
    await add(l1, [o])
    await upload(bucket, o.oid, o.object_size)
    await db.apply(WriteBatch().put(keys.object_key(o.oid), values.encode_object(
        values.ObjectEntry(100, 150, o.footer_pos, o.object_size, 0, False))))
    await db.flush()
    before = metric("cachedaemon_l1_corruption_total", l1.domain)
    got = await ObjectGC(l1, bucket, deletion_delay_s=0).collect()
    assert (got.objects_deleted, got.errors) == (0, 1)
    assert metric("cachedaemon_l1_corruption_total", l1.domain) == before + 1
    assert await bucket.head(key(o.oid)) is not None and await l1.get_object(o.oid) is not None


async def test_gc_walks_every_batch(l1: L1Metastore, db: Database, clock: ManualClock) -> None:
    bucket = MemoryObjectStore()
    gc = ObjectGC(l1, bucket, deletion_delay_s=0, batch_size=3)
    objects = [obj(ext(P0, i * 10, i * 10 + 9)) for i in range(10)]
    await add(l1, objects)
    await l1.set_start_offset(P0, 70)  # 7 of 10 dead
    await db.flush()
    assert (await gc.collect()).objects_deleted == 7
    assert {o.oid for o in await l1.list_objects()} == {o.oid for o in objects[7:]}


async def test_gc_loop_runs_every_interval_and_stops(l1: L1Metastore, db: Database,
                                                     clock: ManualClock) -> None:
    gc = ObjectGC(l1, MemoryObjectStore(), interval_s=10, deletion_delay_s=0)
    await add(l1, [obj(ext(P0, 0, 9)), obj(ext(P0, 10, 19))])
    await l1.set_start_offset(P0, 10)
    await db.flush()
    gc.start()
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        assert gc.rounds == 0
        clock.advance(10)
        for _ in range(100):
            if gc.rounds:
                break
            await asyncio.sleep(0.001)
        assert gc.rounds == 1 and gc.last_result.objects_deleted == 1
    finally:
        await gc.stop()
    clock.advance(100)
    await asyncio.sleep(0.01)
    assert gc.rounds == 1
