"""The access-time tracker: format round trip, corruption detection, atomic periodic saves,
LRU order surviving a restart, and rebuild from a walk when the file is damaged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.cache.keys import TRACKER_NAME, TRACKER_TMP_NAME, key_relpath
from cachedaemon.cache.tracker import AccessTimeTracker, decode, encode, load_file, save_file
from cachedaemon.clock import ManualClock, deadline_after
from cachedaemon.errors import Corruption
from tests.cache.conftest import KiB, OpenCache


async def put(svc: CacheService, key: str, data: bytes) -> None:
    guard = await svc.reserve_space(len(data), 1, deadline_after(1.0, svc.clock))
    await svc.put(key, data, guard)


def test_format_round_trip_and_corruption(tmp_path: Path) -> None:
    items = [("a", 1.5, 10), ("b%d/c", 2.25, 0), ("ü", 3.0, 1 << 40)]
    data = encode(items)
    assert decode(data) == items
    for bad in (
        data[:10],
        b"XXXXXXXX" + data[8:],
        data[:-1],
        data[:-1] + bytes([data[-1] ^ 1]),
        data[:8] + b"\x03" + data[9:],  # an unknown version (1 and 2 are read)
    ):
        with pytest.raises(Corruption):
            decode(bad)
    path = tmp_path / TRACKER_NAME
    assert load_file(path) is None
    save_file(path, tmp_path / TRACKER_TMP_NAME, items)
    assert load_file(path) == items
    assert not (tmp_path / TRACKER_TMP_NAME).exists()


def test_tracker_totals_and_lru_order() -> None:
    t = AccessTimeTracker()
    t.add("a", 1.0, 10)
    t.add("b", 2.0, 20)
    t.add("c", 3.0, 30)
    assert (len(t), t.total_bytes) == (3, 60)
    assert t.touch("a", 4.0)
    assert not t.touch("zz", 4.0)
    assert [p for p, _ in t.lru()] == ["b", "c", "a"]
    assert t.add("b", 5.0, 5) == (2.0, 20)
    assert (len(t), t.total_bytes) == (3, 45)
    assert t.remove("c") == (3.0, 30)
    assert t.remove("c") is None
    assert (len(t), t.total_bytes) == (2, 15)


async def test_saved_every_interval_when_dirty_and_at_stop(open_cache: OpenCache) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, tracker_save_interval=60.0)
    tracker_file = svc.root / TRACKER_NAME
    await put(svc, "a", b"1")
    assert not tracker_file.exists()
    clock.advance(60.0)
    for _ in range(400):
        if svc.coordinator.metrics.tracker_saves:
            break
        await asyncio.sleep(0.005)
    assert load_file(tracker_file) is not None
    assert [p for p, _, _ in load_file(tracker_file) or []] == ["a"]
    saves = svc.coordinator.metrics.tracker_saves
    clock.advance(60.0)  # not dirty: no save
    await asyncio.sleep(0.02)
    assert svc.coordinator.metrics.tracker_saves == saves
    await put(svc, "b", b"2")
    await svc.stop()
    assert [p for p, _, _ in load_file(tracker_file) or []] == ["a", "b"]


async def test_access_order_survives_restart(open_cache: OpenCache, tmp_path: Path) -> None:
    root = tmp_path / "c"
    clock = ManualClock()
    svc = await open_cache(root, clock=clock, max_bytes=10 * KiB)
    for i in range(10):
        await put(svc, f"k{i}", b"x" * KiB)
        clock.advance(1.0)
    assert await svc.get("k0") is not None  # k0 is now the most recent
    clock.advance(1.0)
    await svc.stop()
    svc2 = await open_cache(root, clock=clock, max_bytes=10 * KiB)
    await svc2.trim()  # to 8 KiB: the two least recent go, k1 and k2
    assert await svc2.get("k0") is not None
    assert await svc2.get("k1") is None and await svc2.get("k2") is None
    assert await svc2.get("k3") is not None


async def test_corrupt_tracker_is_rebuilt_with_a_warning(
    open_cache: OpenCache, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "c"
    svc = await open_cache(root)
    await put(svc, "a/b", b"12345")
    await put(svc, "c", b"678")
    await svc.stop()
    tracker_file = root / TRACKER_NAME
    data = bytearray(tracker_file.read_bytes())
    data[-1] ^= 0xFF
    tracker_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="cachedaemon.cache"):
        svc2 = await open_cache(root)
    assert any("tracker" in r.getMessage() and "rebuilding" in r.getMessage()
               for r in caplog.records)
    s = await svc2.stats()
    assert (s.bytes_used, s.objects) == (8, 2)
    assert sorted(p for p, _ in svc2.coordinator.tracker.lru()) == sorted(
        [key_relpath("a/b"), key_relpath("c")])
    await svc2.stop()
    assert load_file(tracker_file) is not None  # rewritten, valid again


async def test_missing_tracker_is_rebuilt(open_cache: OpenCache, tmp_path: Path) -> None:
    root = tmp_path / "c"
    svc = await open_cache(root)
    await put(svc, "x", b"1" * 100)
    await svc.stop()
    (root / TRACKER_NAME).unlink()
    svc2 = await open_cache(root)
    s = await svc2.stats()
    assert (s.bytes_used, s.objects) == (100, 1)
