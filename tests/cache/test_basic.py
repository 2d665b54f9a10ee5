"""Core behaviour of the cache service: get/put/invalidate, staging files, accounting
(Redpanda's cache_test.cc scenarios), the gate, and restart recovery."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService, CacheStatus
from cachedaemon.cache.keys import key_relpath
from cachedaemon.clock import NO_DEADLINE, deadline_after
from cachedaemon.errors import CacheFull, GateClosed, TooLarge
from tests.cache.conftest import KiB, OpenCache, disk_entries, part_files


async def put(svc: CacheService, key: str, data: bytes) -> int:
    guard = await svc.reserve_space(len(data), 1, deadline_after(1.0))
    return await svc.put(key, data, guard)


async def test_put_get_invalidate(cache: CacheService) -> None:
    assert await cache.get("a") is None
    assert await put(cache, "a", b"hello") == 5
    entry = await cache.get("a")
    assert entry is not None and entry.size == 5
    assert entry.path.read_bytes() == b"hello"
    assert await cache.get_range("a", 1, 3) == b"ell"
    assert await cache.get_range("a", 2, 100) == b"llo"
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (5, 1, 0, 0)
    assert (s.hits, s.misses) == (3, 1)
    await cache.invalidate("a")
    assert await cache.get("a") is None
    s = await cache.stats()
    assert (s.bytes_used, s.objects) == (0, 0)
    await cache.invalidate("a")  # absent: fine


async def test_a_and_a_slash_b_coexist(cache: CacheService) -> None:
    await put(cache, "a", b"1")
    await put(cache, "a/b", b"22")
    await put(cache, "a/b/c", b"333")
    await put(cache, "a%d", b"4444")
    for key, size in (("a", 1), ("a/b", 2), ("a/b/c", 3), ("a%d", 4)):
        entry = await cache.get(key)
        assert entry is not None and entry.size == size, key
        assert entry.path.read_bytes() == str(size).encode() * size
    assert sorted(disk_entries(cache.root).values()) == [1, 2, 3, 4]
    await cache.invalidate("a/b")
    assert await cache.get("a/b/c") is not None
    assert await cache.get("a") is not None


async def test_put_replaces_and_accounts_old_size(cache: CacheService) -> None:
    await put(cache, "k", b"x" * 100)
    await put(cache, "k", b"y" * 30)
    s = await cache.stats()
    assert (s.bytes_used, s.objects) == (30, 1)
    entry = await cache.get("k")
    assert entry is not None and entry.path.read_bytes() == b"y" * 30


async def test_put_async_iterable(cache: CacheService) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(10):
            yield bytes([i]) * 1000

    guard = await cache.reserve_space(0, 1, deadline_after(1.0))
    assert await cache.put("stream", chunks(), guard) == 10_000
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (10_000, 1, 0, 0)


async def test_staging_key_invisible_before_commit_and_size_after(cache: CacheService) -> None:
    staging = await cache.create_staging_file("dir/obj", deadline_after(1.0))
    assert cache.is_cached("dir/obj") is CacheStatus.in_progress
    await staging.append(b"x" * (10 * KiB))
    await staging.flush()
    assert staging.path.read_bytes() == b"x" * (10 * KiB)  # readable before commit
    assert await cache.get("dir/obj") is None
    s = await cache.stats()
    assert s.objects == 0 and s.objects_reserved == 1 and s.bytes_reserved >= 10 * KiB
    assert await staging.commit() == 10 * KiB
    assert cache.is_cached("dir/obj") is CacheStatus.available
    entry = await cache.get("dir/obj")
    assert entry is not None and entry.size == 10 * KiB
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (10 * KiB, 1, 0, 0)
    assert part_files(cache.root) == []


async def test_staging_reservation_grows_in_chunks_into_one_guard(
    open_cache: OpenCache,
) -> None:
    svc = await open_cache(staging_initial_bytes=1000, staging_chunk_bytes=5000)
    staging = await svc.create_staging_file("k", deadline_after(1.0))
    assert staging.reserved_bytes == 1000
    await staging.append(b"a" * 900)
    assert staging.reserved_bytes == 1000
    await staging.append(b"a" * 200)
    assert staging.reserved_bytes == 6000
    await staging.append(b"a" * 7000)  # need 8100: grow by max(2100, 5000)
    assert staging.reserved_bytes == 11000
    assert (await svc.stats()).bytes_reserved == 11000
    await staging.commit()
    s = await svc.stats()
    assert (s.bytes_used, s.bytes_reserved, s.objects_reserved) == (8100, 0, 0)


async def test_part_file_survives_trim(cache: CacheService) -> None:
    for i in range(10):
        await put(cache, f"old{i}", b"z" * 1000)
    staging = await cache.create_staging_file("inflight", deadline_after(1.0))
    await staging.append(b"p" * 5000)
    await staging.flush()
    result = await cache.trim()  # manual: LRU + walk + exhaustive
    assert staging.path.exists()
    assert result.objects_freed >= 0
    # Evict everything that can be evicted: the .part stays.
    await cache.coordinator._trim_once(manual=True, fraction=0.0)
    assert staging.path.exists()
    assert disk_entries(cache.root) == {}
    await staging.commit()
    assert (await cache.get("inflight")) is not None


async def test_double_commit_leaves_one_object(cache: CacheService) -> None:
    s1 = await cache.create_staging_file("same", deadline_after(1.0))
    s2 = await cache.create_staging_file("same", deadline_after(1.0))
    await s1.append(b"1" * 4096)
    await s2.append(b"2" * 4096)
    await s1.commit()
    await s2.commit()  # EEXIST: the first writer won; success
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (4096, 1, 0, 0)
    entry = await cache.get("same")
    assert entry is not None and entry.path.read_bytes() == b"1" * 4096
    assert part_files(cache.root) == []


async def test_commit_replace_overwrites(cache: CacheService) -> None:
    s1 = await cache.create_staging_file("v", deadline_after(1.0))
    await s1.append(b"1" * 100)
    await s1.commit()
    s2 = await cache.create_staging_file("v", deadline_after(1.0))
    await s2.append(b"2" * 300)
    await s2.commit(replace=True)
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (300, 1, 0, 0)
    entry = await cache.get("v")
    assert entry is not None and entry.path.read_bytes() == b"2" * 300


async def test_close_without_commit_restores_counters(cache: CacheService) -> None:
    await put(cache, "keep", b"k" * 10)
    before = await cache.stats()
    staging = await cache.create_staging_file("gone", deadline_after(1.0))
    await staging.append(b"x" * 20_000)
    await staging.flush()
    assert staging.path.exists()
    await staging.close()
    await staging.close()  # idempotent
    assert not staging.path.exists()
    after = await cache.stats()
    assert (after.bytes_used, after.objects, after.bytes_reserved, after.objects_reserved) == (
        before.bytes_used, before.objects, 0, 0)
    assert cache.is_cached("gone") is CacheStatus.not_available
    assert not (cache.root / "gone").exists()


async def test_guard_release_paths(cache: CacheService) -> None:
    g = await cache.reserve_space(100, 1, NO_DEADLINE)
    assert (await cache.stats()).bytes_reserved == 100
    g.close()
    assert (await cache.stats()).bytes_reserved == 0
    with await cache.reserve_space(50, 1, NO_DEADLINE) as g2:
        g3 = await cache.reserve_space(25, 0, NO_DEADLINE)
        g2.merge(g3)
        assert (g2.bytes, g2.objects, g3.bytes) == (75, 1, 0)
        assert (await cache.stats()).bytes_reserved == 75
    assert (await cache.stats()).bytes_reserved == 0
    g4 = await cache.reserve_space(10, 1, NO_DEADLINE)
    del g4  # garbage: released by the finalizer
    assert (await cache.stats()).bytes_reserved == 0
    g5 = await cache.reserve_space(10, 1, NO_DEADLINE)
    g5.wrote_data(7, 1)
    with pytest.raises(RuntimeError):
        g5.wrote_data(7, 1)
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved) == (7, 1, 0)


async def test_request_larger_than_the_limit_fails_at_once(open_cache: OpenCache) -> None:
    """Without over-commit (``may_exceed = false``) a request over the byte limit never fits;
    over the object limit it never does (with over-commit: tests/cache/test_pressure.py)."""
    svc = await open_cache(may_exceed=False)
    with pytest.raises(CacheFull, match="never fit"):
        await svc.reserve_space(svc.coordinator.max_bytes + 1, 1, deadline_after(10.0))
    svc = await open_cache(svc.root.parent / "other")
    with pytest.raises(CacheFull, match="never fit"):
        await svc.reserve_space(1, svc.coordinator.max_objects + 1, deadline_after(10.0))


async def test_too_large_object(open_cache: OpenCache) -> None:
    svc = await open_cache(max_object_bytes=1000)
    staging = await svc.create_staging_file("big", deadline_after(1.0))
    await staging.append(b"x" * 1000)
    with pytest.raises(TooLarge):
        await staging.append(b"x")
    await staging.close()
    assert (await svc.stats()).bytes_reserved == 0


async def test_operations_after_stop_raise_gate_closed(open_cache: OpenCache) -> None:
    svc = await open_cache()
    await put(svc, "a", b"1")
    await svc.stop()
    with pytest.raises(GateClosed):
        await svc.get("a")
    with pytest.raises(GateClosed):
        await svc.reserve_space(1, 1, deadline_after(1.0))
    with pytest.raises(GateClosed):
        await svc.create_staging_file("b", deadline_after(1.0))


async def test_stop_waits_for_staging_files(open_cache: OpenCache) -> None:
    svc = await open_cache()
    staging = await svc.create_staging_file("b", deadline_after(1.0))
    stopping = asyncio.ensure_future(svc.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done()
    await staging.append(b"abc")
    await staging.commit()
    await asyncio.wait_for(stopping, 2)


async def test_restart_recovers_and_deletes_leftovers(open_cache: OpenCache, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    svc = await open_cache(root)
    await put(svc, "x/y", b"1" * 100)
    await put(svc, "z", b"2" * 50)
    staging = await svc.create_staging_file("x/w", deadline_after(1.0))
    await staging.append(b"3" * 10)
    await staging.flush()
    leftover = staging.path
    staging._holder.release()  # simulate a crash: leave the .part
    staging._holder = None  # type: ignore[assignment]
    staging._guard.close()
    await svc.stop()
    (root / "empty%d" / "deeper%d").mkdir(parents=True)
    svc2 = await open_cache(root)
    assert not leftover.exists()  # found in the index's journal: gone before the cache serves
    await svc2.coordinator.wait_reconciled()
    assert not (root / "empty%d").exists()  # the background walk removes empty directories
    s = await svc2.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved) == (150, 2, 0)
    assert sum(disk_entries(root).values()) == 150
    entry = await svc2.get("x/y")
    assert entry is not None and entry.size == 100


async def test_disk_layout_matches_api_statement(cache: CacheService) -> None:
    keys = ["a", "a/b", "%tracker", "100%", "x.part/y", "dir/file.txt"]
    for k in keys:
        await put(cache, k, k.encode())
    await cache.save_tracker()
    entries = disk_entries(cache.root)
    assert sorted(entries) == sorted(key_relpath(k) for k in keys)
    assert os.path.exists(cache.root / "%tracker")
    assert (await cache.stats()).objects == len(keys)


async def test_stop_fails_waiting_reservations(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=1000)
    held = await svc.reserve_space(1000, 1, NO_DEADLINE)
    waiter = asyncio.ensure_future(svc.reserve_space(10, 0, NO_DEADLINE))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(svc.stop(), 2.0)
    with pytest.raises(GateClosed):
        await waiter
    held.close()


async def test_trim_and_invalidate_remove_empty_parents(cache: CacheService) -> None:
    await put(cache, "x/y/z", b"1")
    await put(cache, "x/y/w", b"2")
    await put(cache, "p/q", b"3")
    await cache.invalidate("p/q")
    assert sorted(p.name for p in cache.root.iterdir() if not p.name.startswith("%tracker")) == [
        "x%d"]
    coord = cache.coordinator
    async with await coord._trim_sem.get_units(1):
        result = await coord._trim_once(manual=True, fraction=0.0)
    assert (result.bytes_freed, result.objects_freed) == (2, 2)
    assert [p for p in cache.root.iterdir() if not p.name.startswith("%tracker")] == []


async def test_peek_neither_counts_nor_touches(cache: CacheService) -> None:
    await put(cache, "a", b"abc")
    entry = cache.peek("a")
    assert entry is not None and entry.size == 3
    assert cache.peek("b") is None
    s = await cache.stats()
    assert (s.hits, s.misses) == (0, 0)


async def test_limit_from_disk_percent(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=None, max_bytes_percent=1.0, disk_reservation_percent=50.0)
    st = os.statvfs(svc.root)
    expected = int(st.f_blocks * st.f_frsize * 0.5 * 0.01)
    s = await svc.stats()
    assert s.max_bytes == expected
    assert svc.max_object_bytes == expected


async def test_min_free_bytes_trims_further(open_cache: OpenCache, tmp_path: Path) -> None:
    svc = await open_cache(tmp_path / "c")
    for i in range(5):
        await put(svc, f"k{i}", b"x" * 100)
    await svc.stop()
    svc = await open_cache(tmp_path / "c", min_free_bytes=1 << 60)  # the disk is never that free
    # Low free space: a background trim empties the cache, and new writes wait for the disk.
    with pytest.raises(CacheFull, match="low on space"):
        await svc.reserve_space(1, 0, deadline_after(0.1))
    await svc.coordinator.wait_idle()
    s = await svc.stats()
    assert (s.objects, s.bytes_used, s.puts_blocked) == (0, 0, 1)
    assert disk_entries(svc.root) == {}


def test_a_staging_file_dropped_after_its_loop_closed_is_finalized_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A staging file its owner never closed, collected after the event loop is gone (a test
    harness, or the process ending): its finalizer closes the descriptor and raises nothing,
    and the next start deletes the ``.part`` (its BEGIN record is in the journal)."""
    import gc
    import sys

    from tests.cache.conftest import make_settings

    raised: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: raised.append(u.exc_value))
    loop = asyncio.new_event_loop()
    svc = loop.run_until_complete(CacheService.open_single(tmp_path / "c", make_settings(),
                                                           fsync_commits=False))
    staging = loop.run_until_complete(svc.create_staging_file("dropped", deadline_after(2.0)))
    loop.close()  # never stopped: its owner went away
    assert part_files(tmp_path / "c")
    del staging
    gc.collect()
    assert raised == []
    del svc
    gc.collect()

    async def restart() -> None:
        again = await CacheService.open_single(tmp_path / "c", make_settings(),
                                               fsync_commits=False)
        assert part_files(tmp_path / "c") == []
        await again.stop()

    asyncio.run(restart())
