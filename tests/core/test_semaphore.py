"""Named semaphore: FIFO, deadlines, cancellation, broken(), units."""

import asyncio

import pytest

from cachedaemon.clock import deadline_after
from cachedaemon.core.semaphore import Semaphore
from cachedaemon.errors import SemaphoreBroken, SemaphoreTimedOut


async def test_fifo_large_request_not_starved() -> None:
    sem = Semaphore(0, "fifo")
    got: list[str] = []

    async def take(name: str, n: int) -> None:
        await sem.wait(n)
        got.append(name)

    big = asyncio.create_task(take("big", 3))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 1))
    await asyncio.sleep(0)
    sem.signal(1)  # enough for "small", but "big" is first in line
    await asyncio.sleep(0.01)
    assert got == []
    sem.signal(2)
    await asyncio.sleep(0.01)
    assert got == ["big"]
    sem.signal(1)
    await asyncio.wait_for(asyncio.gather(big, small), 1)
    assert got == ["big", "small"]
    assert sem.available_units == 0


async def test_deadline_raises_naming_semaphore_and_leaves_it_consistent() -> None:
    sem = Semaphore(1, "trim")
    assert sem.try_wait(1)
    with pytest.raises(SemaphoreTimedOut, match="semaphore trim"):
        await sem.wait(1, deadline_after(0.02))
    assert sem.waiters == 0
    assert sem.statistics().timeouts == 1
    sem.signal(1)
    assert sem.try_wait(1)


async def test_cancelled_waiter_leaves_no_trace() -> None:
    sem = Semaphore(0, "c")
    waiter = asyncio.create_task(sem.wait(2))
    behind = asyncio.create_task(sem.wait(1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sem.waiters == 1
    sem.signal(1)
    await asyncio.wait_for(behind, 1)  # the cancelled head no longer blocks the queue
    assert sem.available_units == 0


async def test_cancel_racing_grant_returns_units() -> None:
    sem = Semaphore(0, "race")
    waiter = asyncio.create_task(sem.wait(1))
    await asyncio.sleep(0)
    sem.signal(1)  # grants to the waiter (future resolved) ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sem.available_units == 1


async def test_broken_fails_current_and_future_waiters() -> None:
    sem = Semaphore(0, "b")
    waiter = asyncio.create_task(sem.wait(1))
    await asyncio.sleep(0)
    sem.broken()
    with pytest.raises(SemaphoreBroken, match="semaphore b"):
        await waiter
    with pytest.raises(SemaphoreBroken):
        await sem.wait(1)


async def test_units_return_on_exit() -> None:
    sem = Semaphore(3, "u")
    async with await sem.get_units(2) as units:
        assert units.count == 2
        assert sem.available_units == 1
        units.return_units(1)
        assert sem.available_units == 2
    assert sem.available_units == 3
    assert sem.try_get_units(4) is None
