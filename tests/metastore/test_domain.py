"""Domains in-process: the key-value operations, replay from both log kinds, flush and log
release, epoch fencing between two services on one bucket (local dir and moto), read replicas,
group commit, and garbage collection. Every service here runs on the real cache service and the
cloud-cache persistence; only the HTTP layer is left out (see test_daemon.py for that)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.errors import Fenced, InvalidArgument, NotFound, ReadOnly, TooLarge
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.s3 import S3ObjectStore

LSM = {"block_size": 1024, "max_file_bytes": 64 * 1024, "l1_max_bytes": 256 * 1024}

Maker = Callable[..., Awaitable[DomainService]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Maker]:
    made: list[tuple[DomainService, CacheService]] = []

    async def make(store: ObjectStore, node: str = "a", **overrides: Any) -> DomainService:
        data_dir = tmp_path / node
        cache = await CacheService.open_single(data_dir / "cache")
        options: dict[str, Any] = {
            "data_dir": data_dir, "node": node, "memtable_bytes": 64 * 1024,
            "flush_interval_s": 3600.0, "refresh_interval_s": 0.2, "gc_interval_s": 3600.0,
            "file_deletion_delay_s": 0.0, "lsm": LSM,
        }
        options.update(overrides)
        service = DomainService(0, 1, store, cache, DomainConfig(**options))
        await service.start()
        made.append((service, cache))
        return service

    try:
        yield make
    finally:
        for service, cache in reversed(made):
            await service.stop()
            await cache.stop()


@pytest.fixture
async def closers() -> AsyncIterator[list[ObjectStore]]:
    stores: list[ObjectStore] = []
    yield stores
    for store in stores:
        await store.close()


async def restart(service: DomainService, make: Maker, store: ObjectStore) -> DomainService:
    node = service.config.node
    await service.stop()
    return await make(store, node, wal=service.config.wal)


@pytest.mark.parametrize("wal", ["local", "remote"])
async def test_kv_operations_survive_a_restart_without_flush(
    make_service: Maker, make_object_store: Any, wal: str
) -> None:
    store = await make_object_store("local")
    svc = await make_service(store, wal=wal)
    with pytest.raises(NotFound):
        await svc.get("d1", b"k")
    with pytest.raises(InvalidArgument):
        await svc.put("Bad!", b"k", b"v")
    with pytest.raises(InvalidArgument):
        await svc.put("d1", b"", b"v")
    with pytest.raises(TooLarge):
        await svc.put("d1", b"k", b"x" * (4 * 1024 * 1024 + 1))
    await svc.put("d1", b"k", b"v")
    await svc.put("d1", b"\x00\xff", b"binary")
    await svc.write("d1", WriteBatch().put(b"a", b"1").put(b"b", b"2").delete(b"k"))
    assert await svc.get("d1", b"k") is None
    assert await svc.get("d1", b"\x00\xff") == b"binary"
    info = await svc.info("d1")
    assert info["last_seqno"] == 5 and info["persisted_seqno"] == 0
    assert set(info) == {"name", "uuid", "epoch", "last_seqno", "persisted_seqno", "levels",
                         "read_only"}

    svc = await restart(svc, make_service, store)  # no flush: the log replays everything
    assert await svc.get("d1", b"a") == b"1"
    assert await svc.get("d1", b"k") is None
    assert await svc.get("d1", b"\x00\xff") == b"binary"
    info2 = await svc.info("d1")
    assert info2["uuid"] == info["uuid"] and info2["epoch"] > info["epoch"]
    assert info2["last_seqno"] == 5
    await svc.put("d1", b"c", b"3")
    await svc.flush("d1")
    info3 = await svc.info("d1")
    assert info3["persisted_seqno"] == info3["last_seqno"] == 6
    assert sum(level["files"] for level in info3["levels"]) >= 1
    assert await svc.list_names() == ["d1"]

    svc = await restart(svc, make_service, store)
    assert await svc.scan("d1", None, None, None, 10, False) == (
        [(b"\x00\xff", b"binary"), (b"a", b"1"), (b"b", b"2"), (b"c", b"3")], None)


async def test_scan_pages_forward_and_reverse(make_service: Maker, make_object_store: Any) -> None:
    store = await make_object_store("memory")
    svc = await make_service(store)
    keys = [b"p%03d" % i for i in range(25)] + [b"q1", b"o9"]
    await svc.write("s", _batch(keys))
    await svc.flush("s")
    await svc.put("s", b"p007", b"new")  # memtable over SSTs

    async def walk(reverse: bool, prefix: bytes | None = None) -> list[bytes]:
        out: list[bytes] = []
        start = end = None
        while True:
            items, nxt = await svc.scan("s", start, end, prefix, 4, reverse)
            assert len(items) <= 4
            out += [k for k, _ in items]
            if nxt is None:
                return out
            if reverse:
                end = nxt
            else:
                start = nxt

    assert await walk(False) == sorted(keys)
    assert await walk(True) == sorted(keys, reverse=True)
    assert await walk(False, b"p") == sorted(k for k in keys if k.startswith(b"p"))
    assert await walk(True, b"p") == sorted((k for k in keys if k.startswith(b"p")), reverse=True)
    items, nxt = await svc.scan("s", b"p005", b"p009", None, 100, False)
    assert [k for k, _ in items] == [b"p005", b"p006", b"p007", b"p008"] and nxt is None
    assert dict(items)[b"p007"] == b"new"


def _batch(keys: list[bytes]) -> WriteBatch:
    b = WriteBatch()
    for k in keys:
        b.put(k, b"v-" + k)
    return b


async def test_concurrent_writers_share_log_syncs(make_service: Maker, make_object_store: Any
                                                  ) -> None:
    store = await make_object_store("memory")
    svc = await make_service(store)
    await svc.put("g", b"first", b"x")
    domain = await svc.domain("g", create=False)
    assert domain.log is not None
    before = domain.log.stats.syncs
    n = 100
    await asyncio.gather(*(svc.put("g", b"k%d" % i, b"v") for i in range(n)))
    syncs = domain.log.stats.syncs - before
    assert 1 <= syncs < n, syncs
    assert all([await svc.get("g", b"k%d" % i) == b"v" for i in range(n)])


async def test_flush_releases_local_log_segments(make_service: Maker, make_object_store: Any
                                                 ) -> None:
    store = await make_object_store("memory")
    svc = await make_service(store)
    for i in range(5):
        await svc.put("r", b"k%d" % i, b"v")
        await svc.flush("r")
    domain = await svc.domain("r", create=False)
    wal_dir = svc.config.wal_dir / domain.record.uuid

    def segments() -> int:
        return sum(1 for name in os.listdir(wal_dir) if name.endswith(".log"))

    assert segments() <= 2
    # Big writes make the LSM flush by itself; the log is released after that too.
    for i in range(40):
        await svc.put("r", b"big%d" % i, os.urandom(8 * 1024))
    for _ in range(100):
        if domain.db.max_persisted_seqno > 5 and segments() <= 2:
            break
        await asyncio.sleep(0.02)
    assert domain.db.max_persisted_seqno > 5
    assert segments() <= 2


@pytest.mark.parametrize("bucket", ["local", pytest.param("s3", marks=pytest.mark.s3)])
async def test_two_writers_the_older_is_fenced_and_nothing_acknowledged_is_lost(
    make_service: Maker, make_object_store: Any, bucket: str, closers: list[ObjectStore]
) -> None:
    store_a = await make_object_store(bucket)
    store_b: ObjectStore
    if bucket == "s3":
        # A second client of the same bucket (the fixture would make a new bucket).
        store_b = S3ObjectStore(store_a.bucket, endpoint_url=store_a.endpoint_url)  # type: ignore[attr-defined]
        closers.append(store_b)
    else:
        store_b = await make_object_store("local", root=Path(store_a.url.removeprefix("file://")))
    a = await make_service(store_a, "a", wal="remote")
    b = await make_service(store_b, "b", wal="remote")
    acked: dict[bytes, bytes] = {}
    for i in range(10):
        await a.put("f", b"a%d" % i, b"1")
        acked[b"a%d" % i] = b"1"
    await a.flush("f")
    await a.put("f", b"unflushed", b"a")  # only in a's log
    acked[b"unflushed"] = b"a"

    # b takes over while a keeps writing concurrently.
    async def a_writes() -> int:
        n = 0
        for i in range(60):
            try:
                await a.put("f", b"late%d" % i, b"a")
            except Fenced:
                return n
            acked[b"late%d" % i] = b"a"
            n += 1
            await asyncio.sleep(0.002)
        return n

    writer = asyncio.create_task(a_writes())
    await asyncio.sleep(0.01)
    await b.put("f", b"b0", b"b")
    acked[b"b0"] = b"b"
    await writer
    with pytest.raises(Fenced):
        await a.put("f", b"after", b"x")
    with pytest.raises(Fenced):
        await a.flush("f")
    assert (await a.info("f"))["read_only"] is True
    for k, v in acked.items():
        assert await b.get("f", k) == v, k
    await b.flush("f")
    # a stepped down to a read replica: it now serves what b flushed, and still refuses writes.
    await b.put("f", b"from-b", b"b")
    await b.flush("f")
    for _ in range(100):  # within a's refresh interval (0.2 s)
        if await a.get("f", b"from-b") == b"b":
            break
        await asyncio.sleep(0.02)
    assert await a.get("f", b"from-b") == b"b"
    with pytest.raises(Fenced):
        await a.put("f", b"after2", b"x")
    info = await b.info("f")
    assert info["persisted_seqno"] == info["last_seqno"]
    c = await make_service(store_b, "c", wal="remote")
    for k, v in acked.items():
        assert await c.get("f", k) == v, k


async def test_local_log_writer_is_fenced_at_its_next_manifest_write(
    make_service: Maker, make_object_store: Any
) -> None:
    store = await make_object_store("memory")
    a = await make_service(store, "a")
    b = await make_service(store, "b")
    await a.put("l", b"k", b"a")
    await a.flush("l")
    await b.put("l", b"k2", b"b")
    await a.put("l", b"k3", b"a")  # local log: a learns of b only when it writes a manifest
    with pytest.raises(Fenced):
        await a.flush("l")
    with pytest.raises(Fenced):
        await a.put("l", b"k4", b"a")
    assert await b.get("l", b"k") == b"a"


@pytest.mark.parametrize("bucket", ["local", pytest.param("s3", marks=pytest.mark.s3)])
async def test_read_replica_sees_flushed_writes_within_its_refresh_interval(
    make_service: Maker, make_object_store: Any, bucket: str, closers: list[ObjectStore]
) -> None:
    store = await make_object_store(bucket)
    replica_store: ObjectStore  # the replica is its own client of the same bucket
    if bucket == "s3":
        replica_store = S3ObjectStore(store.bucket, endpoint_url=store.endpoint_url)  # type: ignore[attr-defined]
        closers.append(replica_store)
    else:
        replica_store = await make_object_store(
            "local", root=Path(store.url.removeprefix("file://")))
    w = await make_service(store, "w")
    r = await make_service(replica_store, "r", read_only=True, refresh_interval_s=0.2)
    with pytest.raises(NotFound):
        await r.get("rr", b"k")
    with pytest.raises(ReadOnly):
        await r.put("rr", b"k", b"v")
    await w.put("rr", b"k", b"v1")
    await w.flush("rr")
    assert await r.get("rr", b"k") == b"v1"
    with pytest.raises(ReadOnly):
        await r.put("rr", b"k", b"v")
    with pytest.raises(ReadOnly):
        await r.compact("rr")
    assert (await r.info("rr"))["read_only"] is True
    await w.put("rr", b"k", b"v2")
    await w.flush("rr")
    deadline = asyncio.get_running_loop().time() + 0.2 + 0.5
    while await r.get("rr", b"k") != b"v2":
        assert asyncio.get_running_loop().time() < deadline, "replica did not refresh in time"
        await asyncio.sleep(0.02)
    info_w, info_r = await w.info("rr"), await r.info("rr")
    assert info_r["persisted_seqno"] == info_w["persisted_seqno"]
    assert info_r["epoch"] == info_w["epoch"]
    # An idle replica's refresher stops; the next read refreshes on demand.
    domain = await r.domain("rr", create=False)
    domain.last_access -= 10
    await asyncio.sleep(0.5)
    assert "rr" not in r._tasks
    await w.put("rr", b"k", b"v3")
    await w.flush("rr")
    await asyncio.sleep(0.25)
    assert await r.get("rr", b"k") == b"v3"


async def test_compaction_and_gc_remove_unreferenced_ssts(
    make_service: Maker, make_object_store: Any
) -> None:
    store = await make_object_store("memory")
    svc = await make_service(store)
    for round_ in range(4):
        await svc.write("c", _batch([b"k%03d-%d" % (i, round_) for i in range(50)]))
        await svc.flush("c")
    await svc.compact("c")
    domain = await svc.domain("c", create=False)
    await domain.collect_garbage()
    info = await svc.info("c")
    live = sum(level["files"] for level in info["levels"])
    ssts = [o.key async for o in store.list_all(domain.record.prefix + "/")
            if o.key.endswith(".sst")]
    assert len(ssts) == live
    assert len((await svc.scan("c", None, None, None, 1000, False))[0]) == 200


async def test_a_writer_fenced_by_its_own_memtable_flush_steps_down(
    make_service: Maker, make_object_store: Any
) -> None:
    store = await make_object_store("memory")
    a = await make_service(store, "a", memtable_bytes=4096)
    b = await make_service(store, "b", memtable_bytes=4096)
    await a.put("m", b"k", b"a")
    await b.put("m", b"k", b"b")  # b takes over; a learns of it only at its next manifest
    epoch_b = (await b.info("m"))["epoch"]
    err: BaseException | None = None
    for i in range(500):  # enough to fill a's memtable: the LSM flushes by itself
        try:
            await a.put("m", b"x%d" % i, b"v" * 100)
        except Exception as exc:
            err = exc
            break
        await asyncio.sleep(0)
    assert isinstance(err, Fenced), err
    with pytest.raises(Fenced):  # a stays down: it does not reopen and take the domain back
        await a.put("m", b"again", b"a")
    assert (await b.info("m"))["epoch"] == epoch_b
    await b.put("m", b"still-b", b"b")


async def test_a_local_log_superseded_by_another_writer_is_not_replayed(
    make_service: Maker, make_object_store: Any
) -> None:
    store = await make_object_store("memory")
    a = await make_service(store, "a")
    await a.put("s", b"k", b"a-flushed")
    await a.flush("s")
    await a.put("s", b"k", b"a-stale")  # only in a's local log
    await a.put("s", b"only-a", b"x")
    b = await make_service(store, "b")
    await b.put("s", b"k", b"b-newer")
    await b.put("s", b"k2", b"b")
    await b.flush("s")
    await b.stop()
    a = await restart(a, make_service, store)  # a owns the domain again
    assert await a.get("s", b"k") == b"b-newer"  # a's stale log did not replay over b
    assert await a.get("s", b"k2") == b"b"
    assert await a.get("s", b"only-a") is None  # stranded (kept aside, reported in the log)
    domain = await a.domain("s", create=False)
    wal_dir = a.config.wal_dir / domain.record.uuid
    (aside,) = [p for p in wal_dir.iterdir() if p.name.startswith("stranded-")]
    assert any(p.suffix == ".log" for p in aside.iterdir())
    await a.put("s", b"k3", b"a-again")
    a = await restart(a, make_service, store)  # and its own log replays again afterwards
    assert await a.get("s", b"k3") == b"a-again"
