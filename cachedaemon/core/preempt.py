"""TaskQuota: how long a CPU-bound task may hold its shard's event loop before it yields —
Seastar's task quota (0.5 ms), ``need_preempt()`` and ``maybe_yield()``.

A long task (an LSM compaction, a memtable flush) that yields every N items holds the loop for
as long as N items take, and that varies by a factor of a hundred with the items' size and
compression: with 1 KiB values a compaction's 1,024-entry step held the loop for several
milliseconds, and every request the shard served waited that long for each of its loop steps
(issue 18: read fills under a compaction-heavy load). A quota measures the time instead, so no
step holds the loop much longer than :data:`TASK_QUOTA_S`, whatever the items.

Each instance belongs to the one task that made it (no sharing); any shard. Checking costs one
``perf_counter()`` call: hot loops check every few items (:meth:`need_preempt`), then yield
(:meth:`yield_now`).
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from cachedaemon.core.executor import BACKGROUND
from cachedaemon.core.scheduling import scheduler

#: How long a task may run before it lets the loop's other tasks and its I/O go first.
TASK_QUOTA_S = 0.0005


class TaskQuota:
    """See the module docstring."""

    __slots__ = ("_deadline", "_quota", "yields")

    def __init__(self, quota: float = TASK_QUOTA_S) -> None:
        self._quota = quota
        self._deadline = perf_counter() + quota
        self.yields = 0

    def need_preempt(self) -> bool:
        """True once the task has held the loop for its quota since it last yielded."""
        return perf_counter() >= self._deadline

    async def yield_now(self) -> None:
        """Let every other ready task and the loop's I/O run, then start a new quota. Background
        work (``core/executor.BACKGROUND``) reports its slice to the loop's scheduler and takes
        its turn there: it may sleep, while foreground requests wait."""
        if BACKGROUND.get():
            sched = scheduler()
            sched.charge(perf_counter() - (self._deadline - self._quota))
            await sched.turn()
        else:
            await asyncio.sleep(0)
        self.yields += 1
        self._deadline = perf_counter() + self._quota

    async def maybe_yield(self) -> None:
        """:meth:`yield_now` if the quota is used up."""
        if perf_counter() >= self._deadline:
            await self.yield_now()
