"""Single flight: concurrent requests for the same key share one in-progress operation.

Used by the object GET path so that concurrent misses of one key on a shard trigger one bucket
download and one cache fill. The first caller becomes the leader with :meth:`SingleFlight.begin`
(synchronous, so no second leader can slip in before the leader's task first runs), does the
work and calls :meth:`SingleFlight.end`; callers that find a flight in the air
(:meth:`SingleFlight.joinable`) ``await`` :meth:`SingleFlight.wait` and then read the result
where the leader left it (the cache). :meth:`SingleFlight.run` wraps the same for a function
whose result every caller gets. Per shard (one loop), no locking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    joinable = in_flight

    def begin(self, key: str) -> asyncio.Future[T]:
        """Lead the flight for ``key`` (which must not be in the air); resolve it via end()."""
        if key in self._flights:
            raise RuntimeError(f"a flight for {key!r} is already in the air")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
        return fut

    def end(self, key: str, fut: asyncio.Future[T], result: T | None = None,
            exc: BaseException | None = None) -> None:
        """Land the flight: followers wake up (with ``exc`` raised to them, if given)."""
        if self._flights.get(key) is fut:
            del self._flights[key]
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
                fut.exception()  # retrieved: followers may all be gone
            else:
                fut.set_result(result)  # type: ignore[arg-type]

    async def wait(self, key: str) -> T | None:
        """Wait for the flight of ``key`` to land (None if there is none). A follower's
        cancellation does not disturb the flight."""
        fut = self._flights.get(key)
        if fut is None:
            return None
        return await asyncio.shield(fut)

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn()`` once for all concurrent callers of ``key``; each gets its result."""
        if key in self._flights:
            result = await self.wait(key)
            return result  # type: ignore[return-value]
        fut = self.begin(key)
        try:
            result = await fn()
        except BaseException as exc:
            self.end(key, fut, exc=exc if not isinstance(exc, asyncio.CancelledError)
                     else ShardFlightAborted(key))
            raise
        self.end(key, fut, result)
        return result


class ShardFlightAborted(Exception):
    """The leader of a flight was cancelled; followers should try on their own."""


