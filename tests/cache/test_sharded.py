"""The cache across shards: reservations and staging files on shard 1 hop to shard 0's
coordinator by message; releases, commits and hits are posted in order; stats sum every shard;
a dead shard's reservations are released. Two shards in this process, linked by messages as the
daemon's processes are (only plain data crosses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService, start_cache, stop_cache
from cachedaemon.clock import NO_DEADLINE, deadline_after
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import start_local_shards
from cachedaemon.errors import CacheFull
from tests.cache.conftest import KiB, disk_entries, make_settings


class Shards:
    """Shard 0's and shard 1's cache, as seen from each shard."""

    def __init__(self, caches: list[Sharded[CacheService]]) -> None:
        self.caches = caches

    def local(self) -> CacheService:
        return self.caches[0].local()

    def on(self, shard: int) -> CacheService:
        return self.caches[shard].local()


@pytest.fixture
async def sharded_cache(tmp_path: Path) -> AsyncIterator[Shards]:
    smps = await start_local_shards(2)
    settings = make_settings(max_bytes=64 * KiB, max_objects=50)
    caches = list(await asyncio.gather(*(
        start_cache(smp, settings, tmp_path / "cache", fsync_commits=False) for smp in smps)))
    try:
        yield Shards(caches)
    finally:
        for cache in reversed(caches):
            await stop_cache(cache)
        for smp in smps:
            await smp.stop()


async def test_shard1_reserve_staging_commit_hop_to_shard0(sharded_cache: Shards) -> None:
    async def on_shard1(svc: CacheService) -> tuple[int, int, int]:
        assert svc.shard == 1
        guard = await svc.reserve_space(1000, 1, deadline_after(1.0))
        s1 = await svc.stats()
        guard.close()
        s2 = await svc.stats()
        staging = await svc.create_staging_file("from/shard1", deadline_after(1.0))
        assert "_1_" in staging.path.name
        await staging.append(b"q" * 5000)
        size = await staging.commit()
        entry = await svc.get("from/shard1")
        assert entry is not None and entry.size == 5000
        assert await svc.get("missing") is None
        return s1.bytes_reserved, s2.bytes_reserved, size

    reserved, released, size = await on_shard1(sharded_cache.on(1))
    assert (reserved, released, size) == (1000, 0, 5000)
    s = await sharded_cache.local().stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (5000, 1, 0, 0)
    assert (s.hits, s.misses, s.shards) == (1, 1, 2)
    assert sum(disk_entries(sharded_cache.local().root).values()) == 5000


async def test_concurrent_writers_on_both_shards_keep_counters_exact(
    sharded_cache: Shards,
) -> None:
    async def writers(svc: CacheService, n: int) -> int:
        shard = svc.shard

        async def one(i: int) -> int:
            try:
                staging = await svc.create_staging_file(f"s{shard}/{i}", deadline_after(0.5))
            except CacheFull:
                return 0
            try:
                await staging.append(bytes([i % 256]) * (3 * KiB), deadline_after(0.5))
                await staging.commit(replace=True)
                return 1
            except CacheFull:
                await staging.close()
                return 0

        return sum(await asyncio.gather(*(one(i) for i in range(n))))

    done = await asyncio.gather(writers(sharded_cache.on(0), 40),
                                writers(sharded_cache.on(1), 40))
    assert sum(done) > 0
    s = await sharded_cache.local().stats()
    on_disk = disk_entries(sharded_cache.local().root)
    assert (s.bytes_reserved, s.objects_reserved, s.bytes_pending, s.objects_pending) == (
        0, 0, 0, 0)
    assert s.bytes_used == sum(on_disk.values()) <= 64 * KiB
    assert s.objects == len(on_disk) <= 50


async def test_guard_dropped_on_shard1_is_released(sharded_cache: Shards) -> None:
    async def leak(svc: CacheService) -> None:
        guard = await svc.reserve_space(777, 1, NO_DEADLINE)
        del guard  # garbage: the finalizer posts the release to shard 0

    await leak(sharded_cache.on(1))
    await asyncio.sleep(0)  # the finalizer's release runs on the next loop turn
    s = await sharded_cache.on(1).stats()  # a call from shard 1: after its posts
    assert (s.bytes_reserved, s.objects_reserved) == (0, 0)


async def test_a_dead_shards_reservations_are_released(sharded_cache: Shards) -> None:
    held = [await sharded_cache.on(1).reserve_space(1000, 1, NO_DEADLINE) for _ in range(3)]
    staging = await sharded_cache.on(1).create_staging_file("dying/one", NO_DEADLINE, 5000)
    s = await sharded_cache.local().stats()
    assert (s.bytes_reserved, s.objects_reserved) == (8000, 4)
    await staging.append(b"p" * 3000)
    await staging.flush()
    assert staging.path.exists()
    sharded_cache.local().release_shard(1)  # what shard 0 does when shard 1's process dies
    s = await sharded_cache.local().stats()
    assert (s.bytes_reserved, s.objects_reserved) == (0, 0)
    assert sharded_cache.local().coordinator.reservations == 0
    for _ in range(100):  # its staging file goes too (deleted off the loop)
        if not staging.path.exists():
            break
        await asyncio.sleep(0.01)
    assert not staging.path.exists()
    del held, staging


async def test_trim_and_invalidate_from_shard1(sharded_cache: Shards) -> None:
    async def work(svc: CacheService) -> tuple[int, int]:
        for i in range(10):
            g = await svc.reserve_space(KiB, 1, deadline_after(1.0))
            await svc.put(f"k{i}", b"z" * KiB, g)
        await svc.invalidate("k0")
        result = await svc.trim()
        return result.bytes_freed, (await svc.stats()).objects

    freed, objects = await work(sharded_cache.on(1))
    assert freed == 0 and objects == 9  # 9 KiB is under 0.8 * 64 KiB: nothing to trim
    assert len(disk_entries(sharded_cache.local().root)) == 9


async def test_cancelled_cross_shard_waiter_leaves_nothing(sharded_cache: Shards) -> None:
    svc0 = sharded_cache.local()
    held = await svc0.reserve_space(64 * KiB, 0, NO_DEADLINE)  # the whole byte limit

    async def wait_then_cancel(svc: CacheService) -> tuple[int, int]:
        task = asyncio.ensure_future(svc.reserve_space(KiB, 1, NO_DEADLINE))
        await asyncio.sleep(0.02)
        s = await svc.stats()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return s.bytes_pending, s.objects_pending

    pending = await wait_then_cancel(sharded_cache.on(1))
    assert pending == (KiB, 1)
    for _ in range(100):  # the remote cancellation lands on shard 0 asynchronously
        s = await svc0.stats()
        if (s.bytes_pending, s.objects_pending) == (0, 0):
            break
        await asyncio.sleep(0.005)
    assert (s.bytes_pending, s.objects_pending, s.bytes_reserved, s.objects_reserved) == (
        0, 0, 64 * KiB, 0)
    held.close()
    s = await svc0.stats()
    assert (s.bytes_reserved, s.objects_reserved) == (0, 0)


async def test_a_slow_trim_blocks_no_shard(sharded_cache: Shards) -> None:
    from cachedaemon.core import failpoints

    svc0 = sharded_cache.local()
    for i in range(40):
        g = await svc0.reserve_space(KiB, 1, deadline_after(1.0))
        await svc0.put(f"k{i}", b"t" * KiB, g)
    failpoints.arm("cache.trim.delete", "delay:0.5")  # every delete batch takes 0.5 s
    g = await svc0.reserve_space(0, 0, NO_DEADLINE)
    g.wrote_data(50 * KiB, 0)  # push usage over the limit so the trim has work to do
    trim = asyncio.ensure_future(svc0.trim())
    await asyncio.sleep(0.05)
    assert not trim.done()

    async def reads(svc: CacheService) -> float:
        t0 = asyncio.get_running_loop().time()
        for i in range(40):
            await svc.get(f"k{i}")
        staging = await svc.create_staging_file("during/trim", NO_DEADLINE)  # hops to shard 0
        await staging.append(b"x" * 100)
        await staging.commit()
        return asyncio.get_running_loop().time() - t0

    elapsed = await reads(sharded_cache.on(1))
    t0 = asyncio.get_running_loop().time()
    await svc0.stats()
    stats_s = asyncio.get_running_loop().time() - t0
    assert not trim.done()  # the trim was still running all along
    assert elapsed < 0.3 and stats_s < 0.1
    await trim
    failpoints.disarm()
