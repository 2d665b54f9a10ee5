"""Metastore writes whose failure may still have landed: the outcome is *unknown*, never "did
not happen" (``docs/concurrency.md``). Each test lands a write in the bucket and then loses its
answer (``FaultInjectingObjectStore.land_then_fail``), once (the retry must recognise its own
landed write) or for good (every retry refused, so the retry chain gives up although the write
is durable), and checks that nothing is deleted on the strength of the failure, that the domain
re-reads the durable state (reopens) or steps down, and that nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.clock import ManualClock
from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError, IOFailure
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.lsm.manifest import decode_manifest
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.manifest_store import FencedManifestStore
from cachedaemon.metastore.registry import DomainRegistry
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.faulty import FaultInjectingObjectStore
from cachedaemon.remote.memory import MemoryObjectStore

LSM = {"block_size": 512, "max_file_bytes": 8 * 1024, "l1_max_bytes": 32 * 1024}
#: Short retry chains: "every answer lost" gives up in well under a second.
CHAIN_S = 0.3

Maker = Callable[..., Awaitable[DomainService]]


@pytest.fixture(autouse=True)
def _disarm() -> Any:
    yield
    failpoints.disarm()


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Maker]:
    made: list[tuple[DomainService, CacheService]] = []

    async def make(store: Any, node: str = "a", **overrides: Any) -> DomainService:
        data_dir = tmp_path / node
        cache = await CacheService.open_single(data_dir / "cache")
        options: dict[str, Any] = {
            "data_dir": data_dir, "node": node, "memtable_bytes": 1 << 20,
            "flush_interval_s": 3600.0, "refresh_interval_s": 0.2, "gc_interval_s": 3600.0,
            "file_deletion_delay_s": 0.0, "lsm": LSM,
        }
        options.update(overrides)
        service = DomainService(0, 1, store, cache, DomainConfig(**options))
        service.io.retry_chain_s = CHAIN_S
        await service.start()
        made.append((service, cache))
        return service

    try:
        yield make
    finally:
        for service, cache in reversed(made):
            await service.stop()
            await cache.stop()


def batch(keys: list[bytes], tag: bytes = b"v") -> WriteBatch:
    b = WriteBatch()
    for k in keys:
        b.put(k, tag + b"-" + k)
    return b


async def ssts(store: MemoryObjectStore, prefix: str) -> set[str]:
    return {o.key async for o in store.list_all(prefix + "/") if o.key.endswith(".sst")}


async def durable_ssts(store: MemoryObjectStore, prefix: str) -> set[str]:
    """The SSTs the domain's manifest object (as it is in the bucket) references."""
    from cachedaemon.metastore.manifest_store import decode

    data = await store.get_bytes(f"{prefix}/MANIFEST")
    assert data is not None
    _, body = decode(data, "manifest")
    state = decode_manifest(body, "manifest")
    return {f"{prefix}/{f.handle.name}" for files in state.levels for f in files}


# --- the manifest compare-and-swap ------------------------------------------------------------


async def test_manifest_put_whose_answer_was_lost_once_is_recognised(make_service: Maker) -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    svc = await make_service(store)
    await svc.write("d", batch([b"a%03d" % i for i in range(100)]))
    domain = await svc.domain("d", create=False)
    store.land_then_fail("put", key=f"{domain.record.prefix}/MANIFEST", times=1)
    await svc.flush("d")  # the retry meets its own landed write: success, not a fence
    assert domain.fenced is None and domain.broken is None
    await svc.put("d", b"after", b"1")
    await svc.flush("d")
    assert await svc.get("d", b"a042") == b"v-a042"


async def test_manifest_put_that_landed_while_every_answer_was_lost(make_service: Maker) -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    svc = await make_service(store)
    keys = [b"a%03d" % i for i in range(300)]
    await svc.write("d", batch(keys[:150]))
    await svc.flush("d")
    await svc.write("d", batch(keys[150:]))
    domain = await svc.domain("d", create=False)
    prefix = domain.record.prefix
    epoch = domain.epoch
    # The first PUT of the manifest lands and its answer is lost; every retry is refused.
    store.land_then_fail("put", key=f"{prefix}/MANIFEST", nth=1)
    store.fail("put", key=f"{prefix}/MANIFEST")
    with pytest.raises(CacheDaemonError):
        await svc.flush("d")
    store.clear()
    durable = await durable_ssts(inner, prefix)
    assert durable - {f"{prefix}/{f.handle.name}" for f in domain.db.current_version.files()}
    assert await domain.collect_garbage() == 0  # nothing deleted on the strength of the failure
    assert durable <= await ssts(inner, prefix)
    # The next request re-reads the durable manifest: the service reopens the domain.
    assert await svc.get("d", b"a200") == b"v-a200"
    reopened = await svc.domain("d", create=False)
    assert reopened is not domain and reopened.epoch > epoch and reopened.fenced is None
    await svc.put("d", b"b", b"after")
    await svc.flush("d")
    await svc.compact("d")
    await reopened.collect_garbage()
    got, _ = await svc.scan("d", None, None, None, 1000, False)
    assert got == sorted([(k, b"v-" + k) for k in keys] + [(b"b", b"after")])
    assert await ssts(inner, prefix) == await durable_ssts(inner, prefix)


async def test_manifest_store_after_an_unknown_write_refuses_instead_of_crying_fence() -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    io = CloudIO(store, retry_chain_s=CHAIN_S)
    ms = FencedManifestStore(io, "meta/domain/x")
    assert await ms.try_stamp(3, await ms.load())
    await ms.write_manifest(3, b"one")
    store.land_then_fail("put", key=ms.key, nth=1)
    store.fail("put", key=ms.key)
    with pytest.raises(IOFailure):
        await ms.write_manifest(3, b"two")
    store.clear()
    assert (await ms.load()).body == b"two"  # type: ignore[union-attr]  # it landed
    # Our view is stale: a later write must not mistake our own landed write for a newer
    # writer (no other epoch exists), nor overwrite it blindly.
    with pytest.raises(IOFailure, match="unknown"):
        await ms.write_manifest(3, b"three")
    assert ms.fenced is None
    assert (await ms.load()).body == b"two"  # type: ignore[union-attr]


# --- the WAL ----------------------------------------------------------------------------------


async def test_remote_log_segment_that_landed_while_every_answer_was_lost(
    make_service: Maker,
) -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    svc = await make_service(store, wal="remote")
    await svc.put("w", b"k0", b"acknowledged")
    domain = await svc.domain("w", create=False)
    prefix = domain.record.prefix
    store.land_then_fail("put", key=f"{prefix}/wal/", nth=1)
    store.fail("put", key=f"{prefix}/wal/")
    with pytest.raises(CacheDaemonError):
        await svc.put("w", b"k1", b"unknown")
    store.clear()
    # Unknown, and in fact durable: the reopened writer replays it; later writes follow it.
    assert await svc.get("w", b"k1") == b"unknown"
    assert await svc.get("w", b"k0") == b"acknowledged"
    await svc.put("w", b"k2", b"later")
    svc2 = await make_service(store, "b", wal="remote")  # another node takes over
    assert [await svc2.get("w", k) for k in (b"k0", b"k1", b"k2")] == [
        b"acknowledged", b"unknown", b"later"]


async def test_local_log_sync_that_failed_after_the_write(make_service: Maker) -> None:
    store = MemoryObjectStore()
    svc = await make_service(store)
    await svc.put("l", b"k0", b"acknowledged")
    failpoints.arm("metastore.wal.before_sync", "raise@1")
    with pytest.raises(CacheDaemonError):
        await svc.put("l", b"k1", b"unknown")
    failpoints.disarm()
    seen = await svc.get("l", b"k1")  # the domain reopened from its log: whatever it says...
    await svc.put("l", b"k2", b"later")
    await svc.stop()
    svc = await make_service(store)  # ...every later opening says the same
    assert await svc.get("l", b"k1") == seen
    assert await svc.get("l", b"k0") == b"acknowledged"
    assert await svc.get("l", b"k2") == b"later"


# --- the registry and epoch claims --------------------------------------------------------------


async def test_registry_entry_that_landed_while_every_answer_was_lost() -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    registry = DomainRegistry(CloudIO(store, retry_chain_s=CHAIN_S))
    key = DomainRegistry.registry_key("r")
    store.land_then_fail("put", key=key, nth=1)
    store.fail("put", key=key)
    with pytest.raises(IOFailure):
        await registry.create("r")
    store.clear()
    landed = await inner.get_bytes(key)
    assert landed is not None
    record = await DomainRegistry(CloudIO(store)).create("r")  # a fresh view: no cached record
    assert record.uuid in landed.decode()  # the landed entry is the domain: no second uuid
    assert await registry.create("r") == record


async def test_epoch_claim_that_landed_while_every_answer_was_lost() -> None:
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    registry = DomainRegistry(CloudIO(store, retry_chain_s=CHAIN_S))
    record = await registry.create("e")
    assert await registry.claim_epoch(record, "a") == 1
    prefix = f"{record.prefix}/epoch/"
    store.land_then_fail("put", key=prefix, nth=1)
    store.fail("put", key=prefix)
    with pytest.raises(IOFailure):
        await registry.claim_epoch(record, "a")
    store.clear()
    assert await inner.head(DomainRegistry.epoch_key(record, 2)) is not None  # it landed
    # The landed claim is never handed out again (it may be someone's, for all we know).
    assert await registry.claim_epoch(record, "a") == 3
    # A claim whose answer was lost once: the retry finds the id taken and claims the next.
    store.land_then_fail("put", key=prefix, times=1)
    assert await registry.claim_epoch(record, "a") == 5


async def test_flush_loop_that_meets_an_unknown_manifest_write_stops_and_breaks_the_domain(
        make_service: Maker) -> None:
    clock = ManualClock()
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner)
    svc = await make_service(store, clock=clock, flush_interval_s=10.0)
    await svc.write("f", batch([b"f%03d" % i for i in range(50)]))
    domain = await svc.domain("f", create=False)
    prefix = domain.record.prefix
    store.land_then_fail("put", key=f"{prefix}/MANIFEST", nth=1)
    store.fail("put", key=f"{prefix}/MANIFEST")
    for _ in range(500):  # the timed flush runs; its retries back off on the manual clock
        if domain.broken is not None:
            break
        clock.advance(1.0)
        for _ in range(20):
            await asyncio.sleep(0)
    assert domain.broken is not None and domain.fenced is None
    flush_loop = svc._tasks["f"]
    for _ in range(100):
        if flush_loop.done():
            break
        await asyncio.sleep(0)
    assert flush_loop.done()  # the loop stopped instead of retrying a refusing database
    store.clear()
    assert await svc.get("f", b"f007") == b"v-f007"  # served by the reopened domain
    assert (await svc.domain("f", create=False)) is not domain
