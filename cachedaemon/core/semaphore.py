"""A named counting semaphore with units, FIFO waiters, deadlines and ``broken()`` (Seastar's).

``await sem.wait(n, deadline)`` takes ``n`` units, waiting in strict arrival order (a large
request at the head is not starved by small ones behind it); past the deadline it raises
:class:`SemaphoreTimedOut` naming the semaphore. ``signal(n)`` returns units. ``broken()`` fails
every current and future waiter with :class:`SemaphoreBroken`. ``get_units`` returns a
:class:`SemaphoreUnits` object that gives its units back when closed or used as a context
manager. A cancelled waiter leaves the semaphore exactly as if it had never waited.

A semaphore belongs to one shard's loop. Deadlines are read from the injected clock.
"""

from __future__ import annotations

import asyncio
import collections
import math
from dataclasses import dataclass
from types import TracebackType

from cachedaemon.clock import NO_DEADLINE, SYSTEM_CLOCK, Clock, Deadline, remaining
from cachedaemon.errors import SemaphoreBroken, SemaphoreTimedOut


@dataclass(frozen=True)
class SemaphoreStatistics:
    available: int
    waiters: int
    timeouts: int
    acquired: int


class _Waiter:
    __slots__ = ("future", "n")

    def __init__(self, n: int, future: asyncio.Future[None]) -> None:
        self.n = n
        self.future = future


class SemaphoreUnits:
    """Units taken from a semaphore; returned on ``return_all()``/exit. Idempotent."""

    __slots__ = ("_n", "_sem")

    def __init__(self, sem: Semaphore, n: int) -> None:
        self._sem = sem
        self._n = n

    @property
    def count(self) -> int:
        return self._n

    def return_units(self, n: int) -> None:
        n = min(n, self._n)
        self._n -= n
        self._sem.signal(n)

    def return_all(self) -> None:
        n, self._n = self._n, 0
        if n:
            self._sem.signal(n)

    def __enter__(self) -> SemaphoreUnits:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.return_all()

    async def __aenter__(self) -> SemaphoreUnits:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.return_all()


class Semaphore:
    """A named counting semaphore. ``count`` may go negative through ``consume``."""

    def __init__(self, count: int, name: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = name
        self._count = count
        self._clock = clock
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._broken: BaseException | None = None
        self._timeouts = 0
        self._acquired = 0

    @property
    def available_units(self) -> int:
        return self._count

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    def statistics(self) -> SemaphoreStatistics:
        return SemaphoreStatistics(self._count, len(self._waiters), self._timeouts, self._acquired)

    def try_wait(self, n: int = 1) -> bool:
        """Take ``n`` units if they are free and nobody is queued; never waits."""
        if self._broken is not None:
            raise self._broken_error()
        if not self._waiters and self._count >= n:
            self._count -= n
            self._acquired += 1
            return True
        return False

    async def wait(self, n: int = 1, deadline: Deadline = NO_DEADLINE) -> None:
        """Take ``n`` units, waiting FIFO until ``deadline``."""
        if self.try_wait(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(n, future)
        self._waiters.append(waiter)
        timeout = remaining(deadline, self._clock)
        try:
            if timeout == math.inf:
                await future
            else:
                async with asyncio.timeout(timeout):
                    await future
        except TimeoutError:
            self._abandon(waiter)
            self._timeouts += 1
            raise SemaphoreTimedOut(
                f"semaphore {self.name}: timed out waiting for {n} unit(s) "
                f"({self._count} available, {len(self._waiters)} waiting)"
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: _Waiter) -> None:
        """Undo a waiter that gave up; give units back if it had been granted just now."""
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            # Granted concurrently with the cancellation/timeout: return the units.
            self._count += waiter.n
            self._acquired -= 1
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        self._wake()

    def signal(self, n: int = 1) -> None:
        """Return ``n`` units and wake waiters in order."""
        self._count += n
        self._wake()

    def consume(self, n: int) -> None:
        """Take ``n`` units unconditionally (the count may go negative)."""
        self._count -= n

    def _wake(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                self._waiters.popleft()
                continue
            if self._count < head.n:
                return
            self._count -= head.n
            self._acquired += 1
            self._waiters.popleft()
            head.future.set_result(None)

    async def get_units(self, n: int = 1, deadline: Deadline = NO_DEADLINE) -> SemaphoreUnits:
        await self.wait(n, deadline)
        return SemaphoreUnits(self, n)

    def try_get_units(self, n: int = 1) -> SemaphoreUnits | None:
        return SemaphoreUnits(self, n) if self.try_wait(n) else None

    def broken(self, exc: BaseException | None = None) -> None:
        """Fail all current and future waiters."""
        self._broken = exc or SemaphoreBroken(f"semaphore {self.name} is broken")
        while self._waiters:
            w = self._waiters.popleft()
            if not w.future.done():
                w.future.set_exception(self._broken_error())

    @property
    def is_broken(self) -> bool:
        return self._broken is not None

    def _broken_error(self) -> BaseException:
        assert self._broken is not None
        if isinstance(self._broken, SemaphoreBroken):
            return SemaphoreBroken(self._broken.message)
        return self._broken
