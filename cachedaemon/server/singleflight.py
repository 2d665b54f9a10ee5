"""Single flight: concurrent callers asking for the same key share one in-progress operation.

Used by the object GET path so that concurrent misses of one key on a shard trigger one bucket
download and one cache fill. ``await flights.run(key, fn)`` starts ``fn()`` as a task if no
flight for ``key`` is in the air, else waits for the running one; every caller gets its result
(or its exception). A caller being cancelled does not cancel the shared task while others still
wait on it. Per shard (one loop), no locking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[str, tuple[asyncio.Task[T], list[int]]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        entry = self._flights.get(key)
        if entry is None:
            async def body() -> T:
                return await fn()

            task = asyncio.ensure_future(body())
            entry = (task, [0])
            self._flights[key] = entry

            def done(_: asyncio.Task[T], k: str = key, e: tuple[asyncio.Task[T], list[int]] = entry
                     ) -> None:
                if self._flights.get(k) is e:
                    del self._flights[k]
                if not _.cancelled():
                    _.exception()  # mark retrieved

            task.add_done_callback(done)
        task, waiters = entry
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                waiters[0] -= 1
                if waiters[0] == 0:
                    task.cancel()
            raise
