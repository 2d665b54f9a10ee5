"""Issue 18 in the cache service (one shard, in-process): reservation classes and the
reservations listing with stale detection, the eviction log behind explain, and the
miss-ratio curve fed by the real hit and miss paths."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.clock import NO_DEADLINE, ManualClock, deadline_after
from cachedaemon.errors import CacheFull
from tests.cache.conftest import KiB, OpenCache


async def put(svc: CacheService, key: str, size: int) -> None:
    guard = await svc.reserve_space(size, 1, deadline_after(2.0, svc.clock))
    await svc.put(key, b"x" * size, guard)


# --- classes ----------------------------------------------------------------------------------


async def test_waiters_are_granted_by_class_then_in_order(open_cache: OpenCache) -> None:
    """A full cache whose space is all reserved (nothing to trim): queued requests are granted
    as space is released, every read before any write, metastore, prefetch, each class first
    come first served."""
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100)
    held = [await svc.reserve_space(KiB, 0, NO_DEADLINE) for _ in range(10)]
    granted: list[str] = []

    async def want(name: str, klass: str) -> None:
        guard = await svc.reserve_space(KiB, 0, deadline_after(10.0), klass=klass, owner=name)
        granted.append(name)
        guard.close()  # hand the space on at once... to the next in line, by class

    order = [("p1", "prefetch"), ("m1", "metastore"), ("w1", "write"), ("r1", "read"),
             ("p2", "prefetch"), ("r2", "read"), ("w2", "write"), ("m2", "metastore")]
    tasks = []
    for name, klass in order:
        tasks.append(asyncio.create_task(want(name, klass)))
        await asyncio.sleep(0)  # queued in this order
    listing = await svc.reservations()
    assert [w["owner"] for w in listing["waiters"]] == [
        "r1", "r2", "w1", "w2", "m1", "m2", "p1", "p2"]
    assert all(0 < w["deadline_s"] <= 10.0 for w in listing["waiters"])
    held[0].close()  # room for one at a time: each grant releases for the next
    await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
    assert granted == ["r1", "r2", "w1", "w2", "m1", "m2", "p1", "p2"]
    for g in held:
        g.close()


async def test_a_request_that_fits_passes_queued_lower_classes(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100)
    held = await svc.reserve_space(8 * KiB, 0, NO_DEADLINE)
    big = asyncio.create_task(svc.reserve_space(4 * KiB, 0, deadline_after(5.0),
                                                klass="prefetch"))
    await asyncio.sleep(0.01)
    # A read that fits goes at once, past the queued prefetch.
    read = await asyncio.wait_for(svc.reserve_space(KiB, 0, deadline_after(5.0), klass="read"),
                                  1.0)
    # A write that fits also goes: it is more urgent than the queued prefetch.
    write = await asyncio.wait_for(
        svc.reserve_space(KiB, 0, deadline_after(5.0), klass="write"), 1.0)
    assert not big.done()
    for g in (read, write, held):
        g.close()
    (await asyncio.wait_for(big, 2.0)).close()


async def test_a_lower_class_waits_for_the_room_a_higher_one_made_and_never_past_its_deadline(
    open_cache: OpenCache,
) -> None:
    """A read and a prefetch queue on a full cache of evictable entries; the read's trim frees
    room, the read is granted first; a prefetch that cannot fit gives up at its deadline with
    CacheFull while reads keep coming."""
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100, low_watermark=0.9)
    for i in range(10):
        await put(svc, f"e{i}", KiB)
    held = await svc.reserve_space(0, 0, NO_DEADLINE)
    t0 = time.monotonic()
    with pytest.raises(CacheFull):
        # Never fits while the reads below keep the room taken.
        await asyncio.gather(
            svc.reserve_space(9 * KiB, 1, deadline_after(0.3), klass="prefetch"),
            *(svc.reserve_space(KiB, 1, deadline_after(2.0), klass="read") for _ in range(3)))
    assert time.monotonic() - t0 < 1.5
    listing = await svc.reservations()
    assert not listing["waiters"]
    held.close()


async def test_unknown_class_is_refused(open_cache: OpenCache) -> None:
    svc = await open_cache()
    with pytest.raises(ValueError, match="read, write, metastore, prefetch"):
        await svc.reserve_space(1, 0, klass="urgent")


# --- the reservations listing and stale reservations ------------------------------------------


async def test_reservations_list_owner_class_age_and_stale_once(
    open_cache: OpenCache, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    svc = await open_cache(clock=clock, reservation_warn_age=60.0)
    a = await svc.reserve_space(1000, 1, klass="write", owner="PUT photos/cat.jpg")
    staging = await svc.create_staging_file("k", klass="read", owner="GET k")
    clock.advance(30.0)
    listing = await svc.reservations()
    rows = {r["owner"]: r for r in listing["reservations"]}
    assert rows["PUT photos/cat.jpg"]["class"] == "write"
    assert rows["PUT photos/cat.jpg"]["bytes"] == 1000
    assert rows["PUT photos/cat.jpg"]["objects"] == 1
    assert rows["PUT photos/cat.jpg"]["age_s"] == pytest.approx(30.0)
    assert rows["GET k"]["class"] == "read" and rows["GET k"]["shard"] == 0
    assert listing["stale"] == 0 and not rows["GET k"]["stale"]
    clock.advance(31.0)
    with caplog.at_level(logging.WARNING, "cachedaemon.cache"):
        assert svc.coordinator.check_stale() == 2
        assert svc.coordinator.check_stale() == 2  # counted each time, logged once
    warnings = [r.getMessage() for r in caplog.records if "held for" in r.getMessage()]
    assert len(warnings) == 2 and any("PUT photos/cat.jpg" in w for w in warnings)
    listing = await svc.reservations()
    assert listing["stale"] == 2 and all(r["stale"] for r in listing["reservations"])
    a.close()
    await staging.close()
    assert (await svc.reservations())["reservations"] == []
    assert svc.coordinator.check_stale() == 0


# --- explain and the eviction log -------------------------------------------------------------


async def test_explain_cached_absent_and_evicted_with_reasons(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100)
    for i in range(10):
        await put(svc, f"k{i}", KiB)
    assert await svc.get("k0") is not None  # k0 becomes the most recent
    e = await svc.explain("k0")
    assert e["state"] == "cached" and e["cached"]["size"] == KiB
    assert e["cached"]["lru_position"] == pytest.approx(1.0)
    assert e["cached"]["bytes_before"] == 9 * KiB
    e1 = await svc.explain("k1")
    assert e1["cached"]["lru_position"] == 0.0 and e1["cached"]["bytes_before"] == 0
    assert (await svc.explain("never"))["state"] == "absent"
    assert (await svc.explain("never"))["evicted"] is None
    # A trim: the oldest go, as lru_trim.
    await put(svc, "new", 2 * KiB)
    gone = await svc.explain("k1")
    assert gone["state"] == "absent"
    assert gone["evicted"]["reason"] == "lru_trim" and gone["evicted"]["size"] == KiB
    assert gone["evicted"]["at"] <= time.time()
    # A manual drop and a replace.
    await svc.drop("k5")
    assert (await svc.explain("k5"))["evicted"]["reason"] == "manual_drop"
    await put(svc, "k6", 2 * KiB)  # a replace of a cached entry
    again = await svc.explain("k6")
    assert again["state"] == "cached" and again["evicted"]["reason"] == "replaced"
    assert again["cached"]["size"] == 2 * KiB and again["evicted"]["size"] == KiB


async def test_explain_in_progress(open_cache: OpenCache) -> None:
    svc = await open_cache()
    staging = await svc.create_staging_file("busy", klass="read", owner="GET busy")
    await staging.append(b"y" * 3000)
    e = await svc.explain("busy")
    assert e["state"] == "in_progress"
    [job] = e["in_progress"]
    assert job["shard"] == 0 and job["bytes"] == 3000 and job["since"] <= time.time()
    await staging.commit()
    assert (await svc.explain("busy"))["state"] == "cached"


async def test_eviction_log_is_bounded(open_cache: OpenCache) -> None:
    svc = await open_cache(max_bytes=10 * KiB, max_objects=100, eviction_log_entries=5)
    for i in range(30):
        await put(svc, f"k{i}", KiB)
    log = svc.coordinator.evictions
    assert len(log) == 5
    assert sum(log.counts.values()) >= 20


# --- the miss-ratio curve ---------------------------------------------------------------------


async def test_curve_is_fed_by_hits_and_misses(open_cache: OpenCache) -> None:
    """Reads of 40 keys of 1 KiB, cycled: with the curve sampling every key, a cache of 40 KiB
    hits every read after the first pass and one of 20 KiB none (a loop)."""
    svc = await open_cache(max_bytes=64 * KiB, max_objects=1000, mrc_sample_rate=1.0)
    svc.coordinator.mrc.reference_bytes = KiB  # no calibration in a test this small
    keys = [f"loop/{i}" for i in range(40)]
    for _ in range(5):
        for key in keys:
            fd = svc.open_entry(key)  # a hit is counted and touched here
            if fd is None:
                svc.note_miss(key, KiB)
                await put(svc, key, KiB)
            else:
                os.close(fd)
    curve = await svc.mrc()
    assert curve["enabled"] and curve["reads"] == 200
    at = dict(zip(curve["sizes"], curve["hit_ratios"], strict=True))
    small = max(s for s in at if s < 39 * KiB)
    big = min(s for s in at if s >= 41 * KiB)
    assert at[small] == pytest.approx(0.0, abs=0.01)
    assert at[big] == pytest.approx(0.8, abs=0.01)


async def test_curve_off(open_cache: OpenCache) -> None:
    svc = await open_cache(mrc_sample_rate=0.0)
    await put(svc, "a", 100)
    fd = svc.open_entry("a")
    assert fd is not None
    os.close(fd)
    curve = await svc.mrc()
    assert curve == {**curve, "enabled": False, "sizes": [], "hit_ratios": []}


async def test_class_order_stress(open_cache: OpenCache) -> None:
    """A bounded stress loop: rounds of 150 requests of random classes, sizes and deadlines
    queue on a cache whose space is all reserved, then the space is handed on as grants are
    released. Whenever a request is granted, no more urgent one is queued; within a class the
    grants follow arrival order; a request whose deadline passes fails with CacheFull and
    leaves nothing pending; at the end nothing is reserved or pending."""
    import random

    from cachedaemon.cache.classes import ReservationClass

    svc = await open_cache(max_bytes=16 * KiB, max_objects=10_000)
    coord = svc.coordinator
    rng = random.Random(18)
    for _ in range(5):
        blocker = await svc.reserve_space(16 * KiB, 0, NO_DEADLINE)
        granted: list[tuple[int, int]] = []  # (class, arrival) in grant order
        failures = 0
        violations: list[str] = []

        async def want(arrival: int, klass: ReservationClass, size: int, wait_s: float,
                       hold: int, granted: list[tuple[int, int]], violations: list[str]
                       ) -> None:
            nonlocal failures
            try:
                guard = await svc.reserve_space(size, 0, deadline_after(wait_s),
                                                klass=klass.name, owner=str(arrival))
            except CacheFull:
                failures += 1
                return
            queued = coord.reservations_listing()["waiters"]
            urgent = [w for w in queued if ReservationClass[w["class"]] < klass]
            if urgent:
                violations.append(f"{klass.name} #{arrival} granted before {urgent}")
            granted.append((int(klass), arrival))
            for _ in range(hold):
                await asyncio.sleep(0)
            guard.close()

        tasks = []
        for arrival in range(150):
            klass = rng.choice(list(ReservationClass))
            wait_s = 0.05 if rng.random() < 0.1 else 20.0
            tasks.append(asyncio.create_task(
                want(arrival, klass, rng.randrange(1, 4) * KiB, wait_s, rng.randrange(0, 4),
                     granted, violations)))
            await asyncio.sleep(0)  # queued in arrival order
        blocker.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30.0)
        assert not violations, violations[:3]
        for c in ReservationClass:
            order = [a for k, a in granted if k == c]
            assert order == sorted(order), (c.name, order)
        assert len(granted) + failures == 150
        assert coord.reserved_bytes == 0 and coord.pending_bytes == 0
        assert not coord.reservations_listing()["waiters"]


async def test_a_reload_applies_the_curve_and_eviction_log_settings(open_cache: OpenCache
                                                                    ) -> None:
    """SIGHUP applies every cache.* setting: the eviction log's bound shrinks at once, and the
    curve turns off (and on again, from nothing)."""
    import dataclasses

    svc = await open_cache(max_bytes=10 * KiB, max_objects=100, eviction_log_entries=100)
    for i in range(30):
        await put(svc, f"k{i}", KiB)
    assert len(svc.coordinator.evictions) >= 20
    await svc.apply_settings(dataclasses.replace(svc.settings, eviction_log_entries=5,
                                                 mrc_sample_rate=0.0))
    assert len(svc.coordinator.evictions) == 5
    assert (await svc.mrc())["enabled"] is False
    await svc.apply_settings(dataclasses.replace(svc.settings, mrc_sample_rate=0.5))
    curve = await svc.mrc()
    assert curve["enabled"] and curve["reads"] == 0
