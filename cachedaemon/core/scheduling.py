"""CPU shares between a shard's requests and its background work — a small version of
Seastar's scheduling groups.

A shard's loop runs the requests it serves (object reads and writes: the *foreground*) and the
metastore's work (kv and L1 requests, memtable flushes, compactions: the *background*, marked
by :data:`~cachedaemon.core.executor.BACKGROUND` in its context). An asyncio loop runs ready
tasks in turn, all alike: with a kv load on the shard, every step of a read fill waited behind a
step of each metastore task (issue 18). Here background work pays for the loop time it takes
while foreground requests are in flight: each slice it reports (:meth:`Scheduler.charge`) is
debt, and at its next turn (:meth:`Scheduler.turn`) it sleeps until the loop has had
``(1 - share) / share`` times that long for the foreground. With no foreground request in
flight there is no debt: background work runs at full speed.

One :class:`Scheduler` per loop (:func:`scheduler`); the HTTP handlers mark foreground requests
(:meth:`Scheduler.foreground_begin`/``_end``; "active" also covers :data:`ACTIVE_WINDOW_S` after
the last one ended), kv and L1 requests take a turn before they start and are charged the loop
thread's CPU time from their start to their end (which also counts whatever ran between their
awaits: an over-estimate, so the metastore errs on giving way), and long tasks take turns
through the task quota of ``core/preempt.py``. Any shard; state is the loop's own.

With the metastore in a process of its own (``docs/shards.md``), the object requests it must
give way to run in the other processes: each serving shard's scheduler also writes its
foreground requests to its slot of the shared :class:`~cachedaemon.core.foreground.ForegroundBoard`
(:meth:`Scheduler.publish_to`), and the metastore process's scheduler counts them as its own
(:meth:`Scheduler.watch`) while the CPU is contended (``core/cpu_pressure.py``: with cores to
spare it runs at full speed). The kernel's priorities (``core/priority.py``) decide between the
processes; this keeps the metastore's process to its share when it would otherwise take the
CPU the reads are waiting for.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cachedaemon.core.cpu_pressure import CpuPressure
from cachedaemon.core.foreground import ForegroundBoard

#: The background's share of the loop while foreground requests are in flight.
BACKGROUND_SHARE = 0.2
#: The longest one turn sleeps (the debt left is paid at later turns).
MAX_TURN_S = 0.005
#: Object requests count as waiting for this long after the last one ended: a hit is handled
#: without a pause, and the next request of a busy client is usually still in the socket.
ACTIVE_WINDOW_S = 0.01


class Scheduler:
    """See the module docstring."""

    __slots__ = ("_counts", "_debt", "_ends", "_factor", "_last_foreground", "_pressure",
                 "_slot", "_watched", "charged_s", "foreground_inflight", "share", "slept_s",
                 "turns")

    def __init__(self, share: float = BACKGROUND_SHARE) -> None:
        self.share = share
        self._factor = 0.0
        self.set_share(share)
        self._debt = 0.0
        self._last_foreground = -ACTIVE_WINDOW_S
        self.foreground_inflight = 0
        self.turns = 0  # turns that slept
        self.slept_s = 0.0  # how long they slept (the metastore's pauses, for metrics)
        self.charged_s = 0.0  # background loop time while foreground requests were in flight
        # A serving shard's slot on the foreground board (``publish_to``), and the board the
        # metastore's own process watches (``watch``): core/foreground.
        self._counts: Any = None
        self._ends: Any = None
        self._slot = 0
        self._watched: ForegroundBoard | None = None
        self._pressure: CpuPressure | None = None

    def publish_to(self, board: ForegroundBoard, shard: int) -> None:
        """Show this loop's foreground requests in ``shard``'s slot of ``board``."""
        self._counts, self._ends, self._slot = board.counts, board.ends, 2 * shard

    def watch(self, board: ForegroundBoard, pressure: CpuPressure | None = None) -> None:
        """Count the serving shards' foreground requests on ``board`` as this loop's own (the
        metastore's process, which serves none itself), while the CPU is contended
        (``pressure``, default :class:`~cachedaemon.core.cpu_pressure.CpuPressure`): another
        process's requests wait for this one only when there is no CPU to spare."""
        self._watched = board
        self._pressure = pressure if pressure is not None else CpuPressure()

    def set_share(self, share: float) -> None:
        """The background's share, in (0, 1]; 1: never pause it."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a share is in (0, 1], not {share}")
        self.share = share
        self._factor = (1.0 - share) / share

    def foreground_begin(self) -> None:
        """A foreground request starts (the HTTP layer's hot path: no context manager)."""
        self.foreground_inflight += 1
        if self._counts is not None:
            self._counts[self._slot] = self.foreground_inflight

    def foreground_end(self) -> None:
        """... and ends (always paired with :meth:`foreground_begin`)."""
        self.foreground_inflight -= 1
        self._last_foreground = now = time.perf_counter()
        if self._counts is not None:
            self._counts[self._slot] = self.foreground_inflight
            self._ends[self._slot + 1] = now

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """Around a foreground request."""
        self.foreground_begin()
        try:
            yield
        finally:
            self.foreground_end()

    @property
    def foreground_active(self) -> bool:
        """A foreground request is in flight, or ended less than :data:`ACTIVE_WINDOW_S` ago."""
        return bool(self.foreground_inflight) or (
            time.perf_counter() - self._last_foreground < ACTIVE_WINDOW_S) or (
            self._watched is not None and self._watched.active(ACTIVE_WINDOW_S)
            and self._pressure is not None and self._pressure.contended())

    def charge(self, seconds: float) -> None:
        """Background work held the loop for ``seconds``."""
        if self._factor and self.foreground_active:
            self.charged_s += seconds
            self._debt += seconds * self._factor

    def owes(self) -> bool:
        """Whether background work about to start (a kv or L1 request) must first
        :meth:`turn`: it has debt and foreground requests are active. Cheap, so that a request
        pays nothing when there is nothing to pay."""
        if self._debt <= 0.0:
            return False
        if not self.foreground_active:
            self._debt = 0.0
            return False
        return True

    async def turn(self) -> None:
        """Background work's turn: sleep off its debt while foreground requests are active (at
        most :data:`MAX_TURN_S` at once), else just let the other ready tasks run (and forget
        the debt: nobody waited for it)."""
        debt = self._debt
        if debt <= 0.0 or not self.foreground_active:
            self._debt = 0.0
            await asyncio.sleep(0)
            return
        pause = min(debt, MAX_TURN_S)
        self._debt = debt - pause
        self.turns += 1
        started = time.perf_counter()
        await asyncio.sleep(pause)
        self.slept_s += time.perf_counter() - started


_SCHEDULERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler] = (
    weakref.WeakKeyDictionary())


def all_schedulers() -> list[Scheduler]:
    """Every loop's scheduler in this process (for metrics)."""
    return list(_SCHEDULERS.values())


def scheduler(loop: asyncio.AbstractEventLoop | None = None) -> Scheduler:
    """The running loop's (or ``loop``'s) scheduler."""
    loop = loop or asyncio.get_running_loop()
    s = _SCHEDULERS.get(loop)
    if s is None:
        s = _SCHEDULERS[loop] = Scheduler()
    return s
