"""Clocks and absolute deadlines.

Deadlines are the primitive (as in trio/anyio): a *deadline* is an absolute reading of a
clock's ``monotonic()``; durations appear only at the edges and end in ``_s``. Every component
that waits or stamps time takes a :class:`Clock` so tests can use :class:`ManualClock` and
never sleep on the wall clock.

A clock is shared by all shards: ``monotonic()``/``time()`` are thread-safe reads, and
``sleep`` runs on the caller's loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Protocol

#: An absolute point on a clock's ``monotonic()`` scale. ``math.inf`` means "no deadline".
Deadline = float

NO_DEADLINE: Deadline = math.inf


class Clock(Protocol):
    """Where time comes from. ``monotonic`` for deadlines, ``time`` for wall-clock stamps."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`.

    ``sleep`` parks the caller until the clock has been advanced past its wake-up time, so
    code under test that sleeps (trim throttles, retry backoff, flush intervals) runs instantly
    and deterministically. Sleepers must live on one loop (the test's).
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())


SYSTEM_CLOCK = SystemClock()


def deadline_after(seconds: float | None, clock: Clock = SYSTEM_CLOCK) -> Deadline:
    """The deadline ``seconds`` from now; ``None`` means no deadline."""
    if seconds is None:
        return NO_DEADLINE
    return clock.monotonic() + seconds


def remaining(deadline: Deadline, clock: Clock = SYSTEM_CLOCK) -> float:
    """Seconds left until ``deadline`` (never negative; ``inf`` for no deadline)."""
    if deadline == NO_DEADLINE:
        return math.inf
    return max(0.0, deadline - clock.monotonic())


def expired(deadline: Deadline, clock: Clock = SYSTEM_CLOCK) -> bool:
    return deadline != NO_DEADLINE and clock.monotonic() >= deadline
