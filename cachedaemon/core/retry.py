"""One small retry helper: exponential backoff with jitter, bounded by a deadline.

``retry(fn, deadline=...)`` calls ``fn()`` until it returns, raises an error that is not
retryable, or the next backoff would end past the deadline (then the last error is raised).
A shutdown event interrupts the backoff sleep at once with :class:`ShuttingDown`.

Runs on the caller's loop (any shard). Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cachedaemon.clock import NO_DEADLINE, SYSTEM_CLOCK, Clock, Deadline
from cachedaemon.errors import CacheDaemonError, ShuttingDown

T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """The default predicate: cachedaemon errors marked ``retryable``."""
    return isinstance(exc, CacheDaemonError) and exc.retryable


@dataclass(frozen=True)
class Backoff:
    """Backoff shape: ``initial_s`` doubling (``multiplier``) up to ``max_s``, full jitter."""

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of each delay that is randomised
    max_attempts: int | None = None

    def delay(self, attempt: int, rng: random.Random) -> float:
        base: float = min(self.max_s, self.initial_s * (self.multiplier ** max(0, attempt - 1)))
        if self.jitter <= 0:
            return base
        low = base * (1.0 - self.jitter)
        return low + rng.random() * (base - low)


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    deadline: Deadline = NO_DEADLINE,
    backoff: Backoff = Backoff(),
    retryable: Callable[[BaseException], bool] = is_retryable,
    clock: Clock = SYSTEM_CLOCK,
    abort: asyncio.Event | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, retrying retryable errors until ``deadline``.

    REQUIRES: ``fn`` is safe to call again after it raised a retryable error.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        if abort is not None and abort.is_set():
            raise ShuttingDown("retry aborted: shutting down")
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not retryable(exc):
                raise
            if backoff.max_attempts is not None and attempt >= backoff.max_attempts:
                raise
            delay = backoff.delay(attempt, rng)
            if deadline != NO_DEADLINE and clock.monotonic() + delay >= deadline:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await _sleep_or_abort(delay, clock, abort)


async def _sleep_or_abort(delay: float, clock: Clock, abort: asyncio.Event | None) -> None:
    if abort is None:
        await clock.sleep(delay)
        return
    sleeper = asyncio.ensure_future(clock.sleep(delay))
    waiter = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
    if abort.is_set():
        raise ShuttingDown("retry aborted: shutting down")
