"""Space pressure as Redpanda's cache handles it (``shared/reference/redpanda-behaviour.md`` §1):
the low watermark per dimension, over-commit (``may_exceed``), puts blocked on a degraded disk,
the protective defaults, the staging top-up clamped to what can fit, the periodic sync walk and
the reload of limits.

The disk is real; where a test needs the disk to report little free space, it replaces
``disk_status`` (the coordinator's one seam to ``statvfs``) and drives the poll with a
:class:`ManualClock`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService, coordinator
from cachedaemon.cache.coordinator import DiskStatus
from cachedaemon.clock import NO_DEADLINE, ManualClock, deadline_after
from cachedaemon.config import load_settings
from cachedaemon.errors import CacheFull
from tests.cache.conftest import KiB, MiB, OpenCache, disk_entries

GiB = 1024 * MiB


async def put(svc: CacheService, key: str, size: int) -> None:
    guard = await svc.reserve_space(size, 1, deadline_after(2.0, svc.clock))
    await svc.put(key, b"v" * size, guard)


class FakeDisk:
    """Stands in for ``statvfs``: a disk of ``total`` bytes with ``free`` free."""

    def __init__(self, total: int, free: int) -> None:
        self.total = total
        self.free = free
        self.polls = 0

    def __call__(self, path: Path) -> DiskStatus:
        self.polls += 1
        return DiskStatus(self.total, self.free)


@pytest.fixture
def fake_disk(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    disk = FakeDisk(total=100 * GiB, free=50 * GiB)
    monkeypatch.setattr(coordinator, "disk_status", disk)
    return disk


# --- low watermark per dimension -----------------------------------------------------------------


async def test_watermark_applies_only_to_the_dimension_over_its_limit(
    open_cache: OpenCache,
) -> None:
    svc = await open_cache(max_bytes=1000, max_objects=10)
    await put(svc, "big", 500)
    for i in range(8):
        await put(svc, f"small{i}", 10)
    # 580 bytes, 9 objects. A request for 500 bytes and 1 object is over the byte limit only:
    # the byte target goes to 0.8 x (1000 - 500) = 400, the object target stays 10 - 1 = 9.
    guard = await svc.reserve_space(500, 1, deadline_after(2.0))
    guard.close()
    assert await svc.get("big") is None
    for i in range(8):  # trimming "big" was enough: no small entry goes for the object count
        assert await svc.get(f"small{i}") is not None, f"small{i} was trimmed"
    s = await svc.stats()
    assert (s.objects, s.bytes_used) == (8, 80)


async def test_watermark_on_objects_leaves_bytes_alone(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10_000, max_objects=10)
    for i in range(10):
        await put(svc, f"k{i}", 10)
    # Over the object limit only: objects go to 0.8 x (10 - 1) = 7 (3 trimmed), whatever the
    # byte watermark would say.
    guard = await svc.reserve_space(10, 1, deadline_after(2.0))
    guard.close()
    s = await svc.stats()
    assert s.objects == 7
    assert [await svc.get(f"k{i}") is None for i in range(10)] == [True] * 3 + [False] * 7


# --- over-commit ---------------------------------------------------------------------------------


async def test_a_request_larger_than_the_byte_limit_overcommits_when_the_disk_has_room(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=10, min_free_bytes=MiB)
    await put(svc, "old", 4 * KiB)
    t0 = time.monotonic()
    guard = await svc.reserve_space(20 * KiB, 1, deadline_after(5.0))
    assert time.monotonic() - t0 < 1.0  # granted, not waited out
    s = await svc.stats()
    assert await svc.get("old") is None  # the trim ran first and freed what it could
    assert s.bytes_reserved == 20 * KiB
    assert s.overcommits == 1 and s.bytes_overcommitted == 20 * KiB
    assert s.bytes_over_limit == 10 * KiB
    assert s.metrics is not None and s.metrics.overcommits == 1
    # The estimate of free space drops by what was over-committed (until the next poll).
    assert s.free_disk_bytes == 50 * GiB - 20 * KiB
    guard.wrote_data(20 * KiB, 1)
    s = await svc.stats()
    assert s.bytes_used == 20 * KiB and s.bytes_over_limit == 10 * KiB



async def test_an_empty_reservation_never_waits_while_the_cache_is_over_its_limit(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    """Seen in the suite: the metastore's read of an SST larger than the cache over-committed
    its bytes, then asked for a reservation of 0 bytes and 0 objects — which waited out its
    whole 30 s deadline, since nothing "fits" while the cache is over its limit. A request
    for nothing takes nothing, and is granted at once."""
    svc = await open_cache(max_bytes=10 * KiB, max_objects=10, min_free_bytes=MiB)
    big = await svc.reserve_space(20 * KiB, 1, deadline_after(5.0))  # over-committed
    t0 = time.monotonic()
    empty = await svc.reserve_space(0, 0, deadline_after(2.0))
    assert time.monotonic() - t0 < 0.5
    s = await svc.stats()
    assert (s.bytes_reserved, s.objects_reserved) == (20 * KiB, 1)
    empty.close()
    big.close()

async def test_after_a_failed_trim_the_next_request_overcommits_without_waiting(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    """Drift that only a walk can correct makes a request wait for the walk throttle
    (test_reserve.py); but once a trim has failed to make room, requests over-commit at once
    instead of waiting for it (Redpanda's ``_last_trim_failed``), until a trim makes room."""
    clock = ManualClock()  # never advanced: a request waiting for the throttle would time out
    svc = await open_cache(clock=clock, max_bytes=10 * KiB, max_objects=10, min_free_bytes=0,
                           trim_interval=3600.0)
    await svc.coordinator.wait_reconciled()
    await svc.trim()  # a walk just ran: the next one waits an hour
    big = await asyncio.wait_for(svc.reserve_space(20 * KiB, 1, deadline_after(60, clock)), 5)
    big.close()  # a trim failed to make room for it: it over-committed
    g = await svc.reserve_space(0, 0, NO_DEADLINE)
    g.wrote_data(10 * KiB, 0)  # drift: usage no in-memory trim can free
    walks = svc.coordinator.metrics.walks
    g2 = await asyncio.wait_for(svc.reserve_space(KiB, 1, deadline_after(60, clock)), 5)
    assert svc.coordinator.metrics.walks == walks  # it did not wait for a walk
    s = await svc.stats()
    assert (s.overcommits, s.bytes_reserved, s.bytes_over_limit) == (2, KiB, KiB)
    g2.close()


async def test_no_overcommit_when_disabled_or_the_disk_is_short(
    open_cache: OpenCache, fake_disk: FakeDisk, tmp_path: Path,
) -> None:
    svc = await open_cache(tmp_path / "a", max_bytes=10 * KiB, max_objects=10, may_exceed=False)
    with pytest.raises(CacheFull, match="can never fit"):
        await svc.reserve_space(20 * KiB, 1, deadline_after(5.0))
    # Free space must be more than 10x the request, and min_free_bytes must remain after it.
    fake_disk.free = 150 * KiB
    svc = await open_cache(tmp_path / "b", max_bytes=10 * KiB, max_objects=10, min_free_bytes=0)
    with pytest.raises(CacheFull):
        await svc.reserve_space(20 * KiB, 1, deadline_after(0.2))
    fake_disk.free = 300 * KiB
    svc = await open_cache(tmp_path / "c", max_bytes=10 * KiB, max_objects=10,
                           min_free_bytes=290 * KiB)
    with pytest.raises(CacheFull):
        await svc.reserve_space(20 * KiB, 1, deadline_after(0.2))
    s = await svc.stats()
    assert s.overcommits == 0 and s.bytes_reserved == 0 and s.bytes_pending == 0


async def test_the_object_limit_is_never_exceeded(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=2, min_free_bytes=0)
    held = await svc.reserve_space(0, 2, NO_DEADLINE)
    with pytest.raises(CacheFull):
        await svc.reserve_space(20 * KiB, 1, deadline_after(0.2))
    with pytest.raises(CacheFull, match="can never fit"):
        await svc.reserve_space(1, 3, deadline_after(0.2))
    held.close()
    assert (await svc.stats()).overcommits == 0


async def test_reservations_alone_never_cause_an_overcommit(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    """Redpanda over-commits only when committed data leaves no room, not other writers'
    reservations: those come back when the writers finish."""
    svc = await open_cache(max_bytes=10 * KiB, max_objects=10, min_free_bytes=0)
    held = await svc.reserve_space(10 * KiB, 1, NO_DEADLINE)
    with pytest.raises(CacheFull):
        await svc.reserve_space(KiB, 1, deadline_after(0.2))
    held.close()
    assert (await svc.stats()).overcommits == 0


# --- degraded disk -------------------------------------------------------------------------------


async def test_low_free_space_blocks_new_reservations_until_the_disk_recovers(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    clock = ManualClock()
    fake_disk.free = 10 * MiB
    svc = await open_cache(clock=clock, max_bytes=MiB, min_free_bytes=20 * MiB,
                           disk_poll_interval=1.0)
    s = await svc.stats()
    assert s.puts_blocked == 1
    with pytest.raises(CacheFull, match="disk"):
        await svc.reserve_space(KiB, 1, deadline_after(0.0, clock))
    waiting = asyncio.ensure_future(svc.reserve_space(KiB, 1, deadline_after(60.0, clock)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert (await svc.stats()).bytes_pending == KiB
    fake_disk.free = 30 * MiB  # the disk recovers; the next poll sees it
    while not waiting.done():
        clock.advance(1.0)
        await asyncio.sleep(0.01)
    (await waiting).close()
    s = await svc.stats()
    assert s.puts_blocked == 0 and s.bytes_reserved == 0


async def test_enospc_blocks_until_a_trim_and_the_disk_recover(
    open_cache: OpenCache, fake_disk: FakeDisk,
) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, max_bytes=100 * KiB, min_free_bytes=MiB,
                           disk_poll_interval=1.0)
    for i in range(5):
        await put(svc, f"k{i}", 10 * KiB)
    fake_disk.free = 0
    svc.note_disk_full()  # what a staging write that failed with ENOSPC does
    await asyncio.sleep(0.05)
    await svc.coordinator.wait_idle()
    s = await svc.stats()
    assert s.puts_blocked == 1
    assert s.objects == 0  # the trim ENOSPC started went as far as it could
    with pytest.raises(CacheFull, match="disk"):
        await svc.reserve_space(KiB, 1, deadline_after(0.1, clock))
    # Once the disk reports room again, new writes go on.
    fake_disk.free = 100 * MiB
    waiting = asyncio.ensure_future(svc.reserve_space(KiB, 1, deadline_after(60.0, clock)))
    while not waiting.done():
        clock.advance(1.0)
        await asyncio.sleep(0.01)
    (await waiting).close()
    assert (await svc.stats()).puts_blocked == 0


# --- defaults ------------------------------------------------------------------------------------


async def test_protective_defaults(open_cache: OpenCache, fake_disk: FakeDisk,
                                   tmp_path: Path) -> None:
    defaults = load_settings(env={}).cache
    assert defaults.disk_reservation_percent == 25.0
    assert defaults.min_free_bytes is None and defaults.may_exceed is True
    # min_free_bytes: 2 % of the disk, at most 5 GiB.
    svc = await open_cache(tmp_path / "a", min_free_bytes=None)
    assert svc.coordinator.min_free_bytes == 2 * GiB
    fake_disk.total = 1000 * GiB
    svc = await open_cache(tmp_path / "b", min_free_bytes=None)
    assert svc.coordinator.min_free_bytes == 5 * GiB
    # A max_bytes larger than the usable part of the disk is lowered to it.
    svc = await open_cache(tmp_path / "c", max_bytes=2000 * GiB, disk_reservation_percent=25.0)
    assert (await svc.stats()).max_bytes == 750 * GiB


# --- staging top-up ------------------------------------------------------------------------------


@pytest.mark.parametrize("initial", [MiB, 4 * KiB])
async def test_staging_reservations_are_clamped_to_what_can_fit(
    open_cache: OpenCache, initial: int,
) -> None:
    """With max_bytes below the 1 MiB staging chunk, the initial reservation and every top-up
    are clamped to what one object can ever take (they failed as never fitting)."""
    svc = await open_cache(max_bytes=512 * KiB, max_objects=10, may_exceed=False,
                           staging_initial_bytes=initial, staging_chunk_bytes=MiB)
    staging = await svc.create_staging_file("k", deadline_after(2.0))
    assert staging.reserved_bytes <= 512 * KiB
    for _ in range(10):
        await staging.append(b"x" * (10 * KiB), deadline_after(2.0))
    assert staging.reserved_bytes <= 512 * KiB
    await staging.commit()
    s = await svc.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved) == (100 * KiB, 1, 0)


# --- periodic sync walk --------------------------------------------------------------------------


async def test_periodic_sync_walk_corrects_drift(open_cache: OpenCache) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, sync_interval=3600.0)
    await svc.coordinator.wait_reconciled()
    await put(svc, "a", 100)
    (svc.root / "stray").write_bytes(b"s" * 300)  # behind the index's back
    os.unlink(svc.root / "a")
    walks = svc.coordinator.metrics.sync_walks
    clock.advance(3599.0)
    await asyncio.sleep(0.05)
    assert svc.coordinator.metrics.sync_walks == walks
    clock.advance(1.0)
    for _ in range(200):
        if svc.coordinator.metrics.sync_walks > walks:
            break
        await asyncio.sleep(0.01)
    s = await svc.stats()
    assert (s.objects, s.bytes_used) == (1, 300)
    assert disk_entries(svc.root) == {"stray": 300}


async def test_background_walks_are_throttled(open_cache: OpenCache, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    for i in range(300):
        (root / f"f{i}").write_bytes(b"x")
    svc = await open_cache(root, walk_rate=1000, max_objects=1000)
    t0 = time.monotonic()
    await svc.coordinator.sync_walk()
    assert time.monotonic() - t0 >= 0.25  # 300 files at 1000/s
    assert (await svc.stats()).objects == 300


# --- reload --------------------------------------------------------------------------------------


async def test_reload_applies_new_limits(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100)
    for i in range(10):
        await put(svc, f"k{i}", KiB)
    waiting = asyncio.ensure_future(svc.reserve_space(4 * KiB, 1, deadline_after(5.0)))
    lowered = dataclasses.replace(svc.settings, max_bytes=5 * KiB, reserve_deadline=7.0)
    await svc.apply_settings(lowered)
    (await waiting).close()
    await svc.coordinator.wait_idle()
    s = await svc.stats()
    assert s.max_bytes == 5 * KiB and s.bytes_used <= 4 * KiB  # trimmed to 0.8 of the new limit
    assert svc.settings.reserve_deadline == 7.0
    assert sum(disk_entries(svc.root).values()) == s.bytes_used
