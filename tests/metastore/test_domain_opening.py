"""Opening domains under concurrency (``docs/concurrency.md``, the in-flight rule).

Callers that find a domain being opened wait for that opening and, when they wake, look the
domain up again: they share the one opening (one epoch claimed), and after a reopen (a broken
domain) they get the new domain, never the closed one and never a second reopen. The opening
is held open with a manifest read that waits on a manual clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.clock import ManualClock
from cachedaemon.errors import IOFailure
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.faulty import FaultInjectingObjectStore, FaultRule
from cachedaemon.remote.memory import MemoryObjectStore


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[DomainService, FaultInjectingObjectStore,
                                                        ManualClock]]:
    clock = ManualClock()
    inner = MemoryObjectStore()
    store = FaultInjectingObjectStore(inner, clock=clock)
    cache = await CacheService.open_single(tmp_path / "cache")
    svc = DomainService(0, 1, store, cache, DomainConfig(
        data_dir=tmp_path, flush_interval_s=3600.0, gc_interval_s=3600.0,
        memtable_bytes=1 << 20, lsm={"max_open_files": 2, "block_cache_bytes": 1024}))
    await svc.start()
    try:
        yield svc, store, clock
    finally:
        await svc.stop()
        await cache.stop()


async def parked(rule: FaultRule, fired: int) -> None:
    """Yield until ``rule`` has fired ``fired`` times (its caller now sleeps on the clock)."""
    for _ in range(10_000):
        if rule.fired >= fired:
            return
        await asyncio.sleep(0)
    raise AssertionError("the opening never reached the paused manifest read")


async def test_concurrent_callers_share_one_opening(
        setup: tuple[DomainService, FaultInjectingObjectStore, ManualClock]) -> None:
    svc, store, clock = setup
    rule = store.delay("get", seconds=1.0, key=lambda k: k.endswith("/MANIFEST"))
    callers = [asyncio.create_task(svc.domain("d", create=True)) for _ in range(20)]
    await parked(rule, 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(c.done() for c in callers)
    clock.advance(1.0)
    domains = await asyncio.gather(*callers)
    assert len({id(d) for d in domains}) == 1
    assert rule.fired == 1  # one opening read the manifest
    assert domains[0].epoch == 1 and await svc.registry.newest_epoch(domains[0].record) == 1


async def test_waiters_of_a_reopen_get_the_new_domain(
        setup: tuple[DomainService, FaultInjectingObjectStore, ManualClock]) -> None:
    svc, store, clock = setup
    await svc.put("d", b"k", b"v")
    old = await svc.domain("d", create=False)
    old.broken = IOFailure("injected: the log failed")
    rule = store.delay("get", seconds=1.0, key=lambda k: k.endswith("/MANIFEST"))
    callers = [asyncio.create_task(svc.get("d", b"k")) for _ in range(10)]
    callers += [asyncio.create_task(svc.domain("d", create=False)) for _ in range(10)]
    await parked(rule, 1)
    clock.advance(1.0)
    results = await asyncio.gather(*callers)
    assert results[:10] == [b"v"] * 10
    new = results[10]
    assert all(d is new for d in results[10:])
    assert new is not old and old.closed and not new.closed
    assert new.epoch == old.epoch + 1 and rule.fired == 1  # exactly one reopen
    assert await svc.registry.newest_epoch(new.record) == new.epoch
