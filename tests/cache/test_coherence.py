"""The per-key table on shard 0 (``cachedaemon/cache/coherence.py``): registration, the overlap
rule, serialised finishes, bounded memory, cancellation, a dead shard's tickets, and the
cross-shard calls carrying plain data only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache import CacheService, coherence, start_cache, stop_cache
from cachedaemon.cache.keys import key_relpath
from cachedaemon.clock import deadline_after
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import start_local_shards
from tests.cache.conftest import KiB, disk_entries, make_settings, part_files


async def staged(svc: CacheService, key: str, data: bytes) -> Any:
    staging = await svc.create_staging_file(key, deadline_after(2.0))
    await staging.append(data)
    return staging


def cached(svc: CacheService, key: str) -> bytes | None:
    try:
        return (svc.root / key_relpath(key)).read_bytes()
    except FileNotFoundError:
        return None


async def test_a_lone_put_publishes_and_the_table_empties(cache: CacheService) -> None:
    ticket, overlapped = await cache.register("k", write=True)
    assert not overlapped
    assert cache.key_table_size() == 1
    staging = await staged(cache, "k", b"v1")
    assert await staging.publish(ticket, replace=True, remove=True)
    assert cached(cache, "k") == b"v1"
    assert cache.key_table_size() == 0 and cache.key_table.tickets == 0
    stats = await cache.stats()
    assert (stats.bytes_used, stats.objects, stats.bytes_reserved) == (2, 1, 0)


async def test_overlapping_puts_remove_the_copy(cache: CacheService) -> None:
    s0 = await staged(cache, "k", b"old")
    t0, _ = await cache.register("k", write=True)
    assert await s0.publish(t0, replace=True, remove=True)
    t1, o1 = await cache.register("k", write=True)
    t2, o2 = await cache.register("k", write=True)
    assert (o1, o2) == (False, True)  # the second began while the first was in flight
    s1, s2 = await staged(cache, "k", b"one"), await staged(cache, "k", b"two")
    assert not await s2.publish(t2, replace=True, remove=True)
    assert cached(cache, "k") is None  # removed: it cannot know it is the newest
    assert not await s1.publish(t1, replace=True, remove=True)  # overlapped by the second
    assert cached(cache, "k") is None
    assert not part_files(cache.root)
    stats = await cache.stats()
    assert (stats.objects, stats.bytes_used, stats.bytes_reserved, stats.objects_reserved) == (
        0, 0, 0, 0)
    assert cache.key_table_size() == 0


async def test_a_fill_overlapped_by_any_write_is_not_kept(cache: CacheService) -> None:
    # A write in flight when the fill registers.
    w, _ = await cache.register("k", write=True)
    f, overlapped = await cache.register("k", write=False)
    assert overlapped
    await cache.finish(w, remove=True)
    fill = await staged(cache, "k", b"old")
    assert not await fill.publish(f)
    assert cached(cache, "k") is None
    # A write that begins after the fill registered.
    f, overlapped = await cache.register("k", write=False)
    assert not overlapped
    w, _ = await cache.register("k", write=True)
    await cache.finish(w, remove=True)
    fill = await staged(cache, "k", b"old")
    assert not await fill.publish(f)
    assert cached(cache, "k") is None
    # A cache drop overlaps too.
    f, _ = await cache.register("k", write=False)
    await cache.drop("k")
    fill = await staged(cache, "k", b"old")
    assert not await fill.publish(f)
    assert cached(cache, "k") is None
    # Nothing in flight: kept.
    f, _ = await cache.register("k", write=False)
    fill = await staged(cache, "k", b"current")
    assert await fill.publish(f)
    assert cached(cache, "k") == b"current"
    assert cache.key_table_size() == 0 and not part_files(cache.root)


class Held:
    """Wraps a blocking function run in a worker thread: the call waits until released."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any) -> Any:
        self.entered.set()
        assert self.release.wait(10)
        return self.fn(*args)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)


async def test_finishes_of_a_key_are_serialised(cache: CacheService,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal decided after a publish passed its check lands after that publish: the
    check and the link are atomic with respect to the removal."""
    held = Held(coherence._publish)
    monkeypatch.setattr(coherence, "_publish", held)
    f, _ = await cache.register("k", write=False)
    fill = await staged(cache, "k", b"stale soon")
    publishing = asyncio.ensure_future(fill.publish(f))
    await held.wait_entered()  # past its check, in its thread job
    d, _ = await cache.register("k", write=True)  # a DELETE now
    removing = asyncio.ensure_future(cache.finish(d, remove=True))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not removing.done()  # waits for the key's lock
    held.release.set()
    assert await publishing
    await removing
    assert cached(cache, "k") is None  # removed after the link, not before it
    assert cache.key_table_size() == 0


async def test_a_cancelled_caller_still_finishes(cache: CacheService,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    held = Held(coherence.delete_entries)
    monkeypatch.setattr(coherence, "delete_entries", held)
    w, _ = await cache.register("k", write=True)
    task = asyncio.ensure_future(cache.finish(w, remove=True))
    await held.wait_entered()
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the finish runs to its end first
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.key_table_size() == 0
    f, overlapped = await cache.register("k", write=False)
    assert not overlapped  # the write is no longer in flight
    await cache.finish(f)


async def test_a_dead_shards_tickets_are_abandoned(cache: CacheService) -> None:
    s = await staged(cache, "k", b"v")
    t, _ = await cache.register("k", write=True)
    assert await s.publish(t, replace=True, remove=True)
    table = cache.key_table
    table.register("k", 3, write=True)  # shard 3's PUT, in flight when shard 3 died
    table.register("j", 3, write=False)
    mine, _ = table.register("j", 0, write=False)
    assert await table.abandon_shard(3) == 2
    assert cached(cache, "k") is None  # its outcome is unknown: the copy goes
    assert len(table) == 1  # only shard 0's fill of j is left
    await table.finish(mine)
    assert len(table) == 0


async def test_memory_is_bounded_by_the_operations_in_flight(cache: CacheService) -> None:
    tickets = [await cache.register(f"k{i}", write=i % 2 == 0) for i in range(200)]
    assert cache.key_table_size() == 200
    for t, _ in tickets:
        await cache.finish(t, remove=True)
    assert cache.key_table_size() == 0 and cache.key_table.tickets == 0


# --- across shards ---------------------------------------------------------------------------


@pytest.fixture
async def two_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> AsyncIterator[tuple[list[Sharded[CacheService]], list[tuple[Any, ...]]]]:
    smps = await start_local_shards(2)
    settings = make_settings(max_bytes=256 * KiB, max_objects=50)
    caches = [await start_cache(smp, settings, tmp_path / "cache", fsync_commits=False)
              for smp in smps]
    calls: list[tuple[Any, ...]] = []
    real = Sharded.invoke_on

    async def spy(self: Sharded[Any], shard: int, fn: Any, *args: Any, **kw: Any) -> Any:
        calls.append((getattr(fn, "__name__", repr(fn)), *args))
        return await real(self, shard, fn, *args, **kw)

    monkeypatch.setattr(Sharded, "invoke_on", spy)
    try:
        yield caches, calls
    finally:
        monkeypatch.undo()
        for cache in reversed(caches):
            await stop_cache(cache)
        for smp in smps:
            await smp.stop()


async def test_shard1_goes_through_shard0s_table_with_plain_data(
    two_shards: tuple[list[Sharded[CacheService]], list[tuple[Any, ...]]],
) -> None:
    caches, calls = two_shards
    cache = caches[0]

    async def on_shard1(svc: CacheService) -> tuple[bool, bool, bool]:
        assert svc.shard == 1
        t1, _ = await svc.register("x/k", write=True)
        s1 = await staged(svc, "x/k", b"from shard 1")
        first = await s1.publish(t1, replace=True, remove=True)
        f, overlapped = await svc.register("x/k", write=False)
        t2, _ = await svc.register("x/k", write=True)
        fill = await staged(svc, "x/k", b"stale fill")
        kept = await fill.publish(f)
        await svc.finish(t2, remove=True)
        await svc.drop("x/k")
        return first, overlapped, kept

    first, overlapped, kept = await on_shard1(caches[1].local())
    assert (first, overlapped, kept) == (True, False, False)
    svc0 = cache.local()
    assert cached(svc0, "x/k") is None
    assert svc0.key_table_size() == 0
    assert not disk_entries(svc0.root) and not part_files(svc0.root)
    table_calls = [c for c in calls if c[0] in ("_register_here", "_finish_here", "_drop_here")]
    assert {c[0] for c in table_calls} == {"_register_here", "_finish_here", "_drop_here"}
    for call in table_calls:
        assert all(isinstance(a, str | int | bool | type(None)) for a in call[1:]), call
