"""Retry helper: backoff bounded by a deadline, retryable errors only, abort on shutdown."""

import asyncio
import random

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.core.retry import Backoff, retry
from cachedaemon.errors import NotFound, ShuttingDown, TransientUpstreamError


async def test_retries_transient_errors_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise TransientUpstreamError("503")
        return "ok"

    result = await retry(flaky, backoff=Backoff(initial_s=0.001, max_s=0.002))
    assert result == "ok" and calls == 4


async def test_non_retryable_error_is_raised_at_once() -> None:
    calls = 0

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise NotFound("gone")

    with pytest.raises(NotFound):
        await retry(missing, backoff=Backoff(initial_s=0.001))
    assert calls == 1


async def test_gives_up_before_the_deadline_with_manual_clock() -> None:
    clock = ManualClock()
    delays: list[float] = []

    async def always_fails() -> None:
        raise TransientUpstreamError("down")

    deadline = clock.monotonic() + 1.0

    async def drive() -> None:
        await retry(
            always_fails, deadline=deadline, clock=clock, rng=random.Random(1),
            backoff=Backoff(initial_s=0.1, max_s=10, jitter=0),
            on_retry=lambda attempt, exc, delay: delays.append(delay),
        )

    task = asyncio.create_task(drive())
    while not task.done():
        await asyncio.sleep(0)
        clock.advance(0.05)
    with pytest.raises(TransientUpstreamError):
        await task
    assert delays == [0.1, 0.2, 0.4]  # the next, 0.8, would end past the deadline
    assert clock.monotonic() <= deadline + 0.05


async def test_abort_interrupts_backoff() -> None:
    abort = asyncio.Event()

    async def always_fails() -> None:
        raise TransientUpstreamError("down")

    task = asyncio.create_task(
        retry(always_fails, abort=abort, backoff=Backoff(initial_s=30, jitter=0))
    )
    await asyncio.sleep(0.01)
    abort.set()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(task, 1)


def test_backoff_delays_grow_and_cap() -> None:
    b = Backoff(initial_s=0.1, max_s=1.0, multiplier=2, jitter=0)
    rng = random.Random(0)
    assert [b.delay(i, rng) for i in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    j = Backoff(initial_s=1.0, max_s=1.0, jitter=0.5)
    assert all(0.5 <= j.delay(1, rng) <= 1.0 for _ in range(100))
