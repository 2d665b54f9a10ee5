"""Reservations: the fast path, waiting with trims, deadlines, FIFO order, cancellation, the
trim throttle (ManualClock), background and manual trims, many writers at the limit."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService, ReservationGuard
from cachedaemon.clock import NO_DEADLINE, ManualClock, deadline_after
from cachedaemon.errors import CacheFull, DeadlineExceeded
from tests.cache.conftest import KiB, OpenCache, disk_entries, part_files


async def fill(svc: CacheService, n: int, size: int, prefix: str = "f") -> None:
    for i in range(n):
        guard = await svc.reserve_space(size, 1, deadline_after(1.0, svc.clock))
        await svc.put(f"{prefix}{i}", b"x" * size, guard)


async def test_cache_full_is_a_deadline_error_and_leaks_nothing(open_cache: OpenCache) -> None:
    assert issubclass(CacheFull, DeadlineExceeded)
    svc = await open_cache(max_bytes=10_000, max_objects=10)
    held = await svc.reserve_space(10_000, 1, NO_DEADLINE)  # everything reserved: nothing to trim
    t0 = time.monotonic()
    with pytest.raises(CacheFull) as info:
        await svc.reserve_space(100, 1, deadline_after(0.05))
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 0.5
    msg = str(info.value)
    assert "100 bytes" in msg and "0/10000 bytes" in msg and "10000 bytes and 1 objects reserved" in msg
    s = await svc.stats()
    assert (s.bytes_reserved, s.objects_reserved, s.bytes_pending, s.objects_pending) == (
        10_000, 1, 0, 0)
    assert s.metrics is not None and s.metrics.cache_full == 1
    held.close()
    s = await svc.stats()
    assert (s.bytes_reserved, s.objects_reserved) == (0, 0)


async def test_expired_deadline_fails_without_waiting(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=1000)
    held = await svc.reserve_space(1000, 0, NO_DEADLINE)
    with pytest.raises(CacheFull):
        await svc.reserve_space(1, 0, deadline_after(-1.0))
    held.close()


async def test_full_cache_of_evictable_entries_never_waits_for_the_throttle(
    open_cache: OpenCache,
) -> None:
    clock = ManualClock()  # never advanced: a throttled step would hang until the deadline
    svc = await open_cache(clock=clock, max_bytes=10 * KiB, max_objects=100, trim_interval=3600)
    await fill(svc, 10, KiB)
    assert (await svc.stats()).bytes_used == 10 * KiB
    # Use the throttle up, so that only the in-memory LRU phase may run.
    await svc.trim()
    await fill(svc, 10, KiB, prefix="g")
    for i in range(20):
        guard = await asyncio.wait_for(
            svc.reserve_space(KiB, 1, deadline_after(30.0, clock)), 2.0)
        await svc.put(f"new{i}", b"n" * KiB, guard)
    s = await svc.stats()
    assert s.bytes_used <= 10 * KiB and s.bytes_reserved == 0
    assert sum(disk_entries(svc.root).values()) == s.bytes_used
    # LRU: the newest entries survived.
    assert await svc.get("new19") is not None


async def test_lru_evicts_least_recently_used(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100)
    await fill(svc, 10, KiB)
    assert await svc.get("f0") is not None  # f0 becomes the most recent
    guard = await svc.reserve_space(KiB, 1, deadline_after(2.0))
    guard.close()
    # Trimmed to the low watermark: 0.8 * 10 KiB - 1 KiB pending = 7 KiB -> f1..f3 go first.
    assert await svc.get("f0") is not None
    assert await svc.get("f1") is None
    assert await svc.get("f9") is not None


async def test_waiters_are_served_in_order(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=1000, max_objects=100)
    held = await svc.reserve_space(1000, 0, NO_DEADLINE)
    order: list[int] = []

    async def want(i: int, n: int) -> ReservationGuard:
        g = await svc.reserve_space(n, 0, deadline_after(5.0))
        order.append(i)
        return g

    big = asyncio.ensure_future(want(0, 800))
    await asyncio.sleep(0)
    small = asyncio.ensure_future(want(1, 100))
    await asyncio.sleep(0.01)
    assert order == []  # the small one does not overtake the big one at the head
    held.close()
    g0, g1 = await asyncio.gather(big, small)
    assert order == [0, 1]
    g0.close()
    g1.close()


async def test_cancelled_waiter_leaves_no_pending_units(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=1000, max_objects=100)
    held = await svc.reserve_space(1000, 0, NO_DEADLINE)
    task = asyncio.ensure_future(svc.reserve_space(500, 1, NO_DEADLINE))
    await asyncio.sleep(0.01)
    s = await svc.stats()
    assert (s.bytes_pending, s.objects_pending) == (500, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = await svc.stats()
    assert (s.bytes_pending, s.objects_pending, s.bytes_reserved) == (0, 0, 1000)
    held.close()
    assert (await svc.stats()).bytes_reserved == 0


async def test_walk_phase_is_throttled_and_corrects_drift(open_cache: OpenCache) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, max_bytes=10 * KiB, max_objects=100, trim_interval=5.0)
    await fill(svc, 4, KiB)
    # Drift: a file appears behind the tracker's back.
    (svc.root / "stray").write_bytes(b"s" * (5 * KiB))
    coord = svc.coordinator
    await svc.trim()  # manual: walks, adopts the stray file, trims to 8 KiB
    s = await svc.stats()
    assert s.bytes_used == sum(disk_entries(svc.root).values())
    assert s.bytes_used <= 8 * KiB
    walks = coord.metrics.walks
    (svc.root / "stray2").write_bytes(b"s" * (9 * KiB))
    g = await svc.reserve_space(0, 0, NO_DEADLINE)
    g.wrote_data(20 * KiB, 0)  # drift the LRU phase alone cannot fix
    # A throttled trim does not walk within trim_interval ...
    async with await coord._trim_sem.get_units(1):
        await coord._trim_once(manual=False, fraction=0.8)
    assert coord.metrics.walks == walks
    clock.advance(5.0)
    # ... but does after it.
    async with await coord._trim_sem.get_units(1):
        await coord._trim_once(manual=False, fraction=0.8)
    assert coord.metrics.walks == walks + 1
    s = await svc.stats()
    assert s.bytes_used == sum(disk_entries(svc.root).values()) <= 8 * KiB


async def test_waiter_behind_unevictable_space_waits_for_the_walk(open_cache: OpenCache) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, max_bytes=10 * KiB, max_objects=100, trim_interval=5.0)
    await svc.trim()  # sets the walk time: walks are throttled from now
    guard = await svc.reserve_space(0, 0, NO_DEADLINE)
    guard.wrote_data(10 * KiB, 1)  # usage the tracker does not know about (drift)
    task = asyncio.ensure_future(svc.reserve_space(KiB, 1, deadline_after(60.0, clock)))
    await asyncio.sleep(0.02)
    assert not task.done()
    clock.advance(5.0)  # the walk may run: it recounts (nothing on disk) and grants
    g = await asyncio.wait_for(task, 2.0)
    g.close()
    assert (await svc.stats()).bytes_used == 0


async def test_manual_trim_returns_freed_counts(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=10)
    await fill(svc, 10, KiB)
    result = await svc.trim()
    assert result.objects_freed == 2 and result.bytes_freed == 2 * KiB
    s = await svc.stats()
    assert (s.objects, s.trims) == (8, 1)
    assert s.metrics is not None and s.metrics.bytes_trimmed == 2 * KiB


async def test_background_trim_at_threshold(open_cache: OpenCache, tmp_path: Path) -> None:
    svc = await open_cache(tmp_path / "c", max_bytes=100 * KiB, max_objects=100)
    await fill(svc, 60, 10)
    await svc.stop()
    svc = await open_cache(tmp_path / "c", max_bytes=100 * KiB, max_objects=100,
                           background_trim_threshold_percent=50.0)
    assert (await svc.stats()).objects == 60  # 60 objects > 50 % of 100
    g = await svc.reserve_space(1, 0, NO_DEADLINE)  # triggers the background trim
    g.close()
    for _ in range(100):
        if (await svc.stats()).objects <= 40:
            break
        await asyncio.sleep(0.01)
    s = await svc.stats()
    assert s.objects == 40  # down to 0.5 * 0.8 * 100
    assert s.trims == 1


async def test_object_limit_is_a_dimension_too(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=1024 * KiB, max_objects=5)
    await fill(svc, 5, 10)
    guard = await svc.reserve_space(10, 1, deadline_after(2.0))
    await svc.put("sixth", b"y" * 10, guard)
    s = await svc.stats()
    assert s.objects <= 5 and s.objects == len(disk_entries(svc.root))


async def test_many_concurrent_staging_writers_at_the_limit(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=64 * KiB, max_objects=1000, staging_initial_bytes=4 * KiB,
                           staging_chunk_bytes=4 * KiB)
    rng = random.Random(7)
    outcomes: dict[str, int] = {}
    failures = 0

    async def writer(i: int) -> None:
        nonlocal failures
        try:
            staging = await svc.create_staging_file(f"w/{i}", deadline_after(0.3))
        except CacheFull:
            failures += 1
            return
        try:
            size = rng.randrange(1, 20 * KiB)
            for off in range(0, size, 3000):
                await staging.append(b"d" * min(3000, size - off), deadline_after(0.3))
                await asyncio.sleep(0)
            outcomes[f"w/{i}"] = await staging.commit()
        except CacheFull:
            failures += 1
            await staging.close()

    await asyncio.gather(*(writer(i) for i in range(60)))
    s = await svc.stats()
    on_disk = disk_entries(svc.root)
    assert (s.bytes_reserved, s.objects_reserved, s.bytes_pending) == (0, 0, 0)
    assert s.bytes_used == sum(on_disk.values()) <= 64 * KiB
    assert s.objects == len(on_disk)
    assert part_files(svc.root) == []
    assert len(outcomes) + failures == 60 and len(outcomes) > 0
    for rel, size in on_disk.items():
        assert outcomes[rel.replace("%d", "")] == size


async def test_trim_under_concurrent_reads(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=400 * KiB, max_objects=1000)
    await fill(svc, 200, 2 * KiB)
    stop = False
    reads = 0

    async def reader() -> None:
        nonlocal reads
        rng = random.Random()
        while not stop:
            key = f"f{rng.randrange(200)}"
            try:
                data = await svc.get_range(key, 0, 2 * KiB)
            except FileNotFoundError:  # pragma: no cover - must not happen
                raise
            assert data is None or data == b"x" * 2 * KiB
            reads += 1
            await asyncio.sleep(0)

    readers = [asyncio.ensure_future(reader()) for _ in range(4)]
    for _ in range(3):
        g = await svc.reserve_space(150 * KiB, 1, deadline_after(2.0))
        g.close()
    await svc.trim()
    stop = True
    await asyncio.gather(*readers)
    assert reads > 10
    s = await svc.stats()
    assert s.bytes_used == sum(disk_entries(svc.root).values())
