"""A memtable flush or a compaction shares its shard's loop: no step of it may hold the loop
much past the task quota (``core/preempt.py``), whatever the size of its entries. Measured as
the loop thread's CPU time between two wake-ups of a task that yields all the time
(``thread_time``: other processes on a busy machine do not count), on the local-disk backend
(its writes go to threads, as the bucket's do) and on the in-memory one (its block reads never
wait, as when the blocks are in the block cache: the merge loop's own yields are all there
is)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cachedaemon.core.preempt import TASK_QUOTA_S, TaskQuota
from cachedaemon.lsm.db import Database
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.lsm.io.persistence import Persistence
from cachedaemon.lsm.options import Options
from cachedaemon.lsm.write_batch import WriteBatch

VALUE = os.urandom(1024)  # 1 KiB values: a step of 1,024 or 2,048 entries held the loop 5-17 ms
KEYS = 12_000
#: Far above the 0.5 ms quota, below the stalls of before.
STALL_S = 0.004
#: Stalls allowed anyway (a garbage collection of the test's own objects, say).
SPARE = 2


async def _fill(db: Database, rounds: int) -> None:
    for _ in range(rounds):
        for start in range(0, KEYS, 500):
            batch = WriteBatch()
            for i in range(start, start + 500):
                batch.put(b"k%08d" % i, VALUE)
            await db.apply(batch)


async def _stalls(work: Callable[[], Awaitable[None]]) -> tuple[int, list[float]]:
    """While ``work`` runs, a task yields in a loop: how often it woke, and the loop thread's
    CPU time between its wake-ups that were over :data:`STALL_S` apart."""
    gaps: list[float] = []
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0)
            now = time.thread_time()
            ticks += 1
            if now - last > STALL_S:
                gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    try:
        await work()
    finally:
        done = True
        await task
    return ticks, gaps


@pytest.fixture(params=["disk", "memory"])
async def persistence(request: pytest.FixtureRequest, tmp_path: Path) -> Persistence:
    if request.param == "disk":
        return await open_disk_persistence(tmp_path)
    return memory_persistence()


async def test_a_memtable_flush_never_holds_the_loop_past_its_quota(
    tmp_path: Path,
) -> None:
    # The disk backend only: the in-memory one copies the whole file on the loop at close.
    db = await Database.open(Options(), await open_disk_persistence(tmp_path))
    try:
        await _fill(db, 1)
        ticks, stalls = await _stalls(db.flush)
        assert ticks > 20 and len(stalls) <= SPARE, (ticks, stalls)
    finally:
        await db.close()


async def test_a_compaction_never_holds_the_loop_past_its_quota(
    persistence: Persistence,
) -> None:
    db = await Database.open(Options(), persistence)
    try:
        await _fill(db, 2)  # every key twice: the compaction has work to drop
        await db.flush()
        ticks, stalls = await _stalls(db.compact_range)
        assert db.compactions >= 1
        assert ticks > 50 and len(stalls) <= SPARE, (ticks, stalls)
    finally:
        await db.close()


async def test_task_quota_yields_only_once_used_up() -> None:
    quota = TaskQuota(0.05)
    await quota.maybe_yield()
    assert quota.yields == 0 and not quota.need_preempt()
    end = time.perf_counter() + TASK_QUOTA_S
    while time.perf_counter() < end:
        pass
    spent = TaskQuota(0.0)
    assert spent.need_preempt()
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    await spent.maybe_yield()  # lets the ready callback run first
    assert ran == [1] and spent.yields == 1
