"""CacheCoordinator: the cache's accounting, limits, reservations, trims and tracker (shard 0).

One coordinator per cache, owned by shard 0's :class:`~cachedaemon.cache.service.CacheService`
and touched only from shard 0's loop. Other shards reach it in two ways:

* awaited calls (``reserve``, ``trim``, ``stats``) through ``Sharded.invoke_on(0, ...)``;
* fire-and-forget *posts* (``release``, ``commit_entry``, ``forget``, ``touch_batch``) through
  :meth:`post`, which is a direct call on shard 0 and ``loop.call_soon_threadsafe`` elsewhere.
  Posts from one shard run in order, before any later ``invoke_on`` from that shard.

**Accounting.** ``current`` = committed entries: the tracker's totals (plus usage reported
through a bare ``ReservationGuard.wrote_data``, until the next walk recounts). ``reserved`` =
the sum over live guards. ``pending`` = what queued reservation requests ask for. A request is
granted when ``current + reserved + request <= limit`` in both bytes and objects; the limits are
never exceeded by a grant (a request larger than a limit fails at once with ``CacheFull``).
``current`` alone can pass a limit only when a replace commit lands a bigger file than was
reserved, or a concurrent writer outside the cache's knowledge adds files; the next trim fixes
it.

**Limits.** ``max_bytes`` if set, else ``max_bytes_percent`` of the disk's usable size, where
usable = total * (1 - ``disk_reservation_percent``/100); ``max_objects``. Free space is polled
off the loop every ``disk_poll_interval``; when it drops below ``min_free_bytes`` trims go
further (down to ``current - shortfall``) and a background trim starts.

**Reservation.** Fast path when nothing is queued and the request fits. Otherwise the request
joins a FIFO queue (``pending`` grows), one *trimmer* task (which takes the named
``cache-trim`` semaphore per trim: one trim at a time) trims and grants from the head as space
appears, and the requester waits until granted or its deadline passes (then ``CacheFull``,
naming the request and the cache state; a waiter that gives up leaves no pending units).

**Trim** to the low watermark (``low_watermark`` x limit, minus reserved and pending units):

1. LRU: evict from the tracker's least-recently-used end. In memory, **never throttled**.
2. Walk (throttled by ``trim_interval`` unless manual): a directory walk that re-syncs the
   tracker with the disk (drops vanished entries, adopts untracked files, corrects sizes and
   ``current``), then LRU again.
3. Exhaustive: if still above the goal, delete from the walk's listing in access-time order,
   whatever the tracker says.

``.part`` files and the tracker's files are never deleted by trim (the walk does not list them
as entries); empty parent directories are removed. Directory work runs in worker threads, one
job per walk or per delete batch; the loop stays free for other requests meanwhile. Entries
that change while a job runs (a commit of a path being deleted, say) are re-checked after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachedaemon.cache.keys import TRACKER_NAME, TRACKER_TMP_NAME
from cachedaemon.cache.pressure import (
    Limits,
    Usage,
    compute_limits,
    could_ever_exceed,
    disk_degraded,
    may_exceed,
    over_target,
    trim_target,
)
from cachedaemon.cache.reservation import ReservationGuard
from cachedaemon.cache.tracker import AccessTimeTracker, load_file, reconcile, save_file
from cachedaemon.cache.walker import (
    Pacer,
    WalkAborted,
    WalkResult,
    delete_entries,
    sync_walk,
    walk_and_diff,
    walk_cache,
)
from cachedaemon.clock import Clock, Deadline, expired, remaining
from cachedaemon.config import CacheSettings
from cachedaemon.core.semaphore import Semaphore
from cachedaemon.errors import CacheFull, Corruption, GateClosed, InvalidArgument

log = logging.getLogger("cachedaemon.cache")

#: Entries deleted per thread job in a trim.
DELETE_BATCH = 4096


@dataclass(frozen=True)
class TrimResult:
    bytes_freed: int
    objects_freed: int


@dataclass
class CacheMetrics:
    """Counters for Prometheus (shard 0's view; hits/misses live on each shard)."""

    reservation_waits: int = 0
    cache_full: int = 0
    trims: int = 0
    trim_seconds_total: float = 0.0
    trim_seconds_max: float = 0.0
    bytes_trimmed: int = 0
    objects_trimmed: int = 0
    walks: int = 0
    sync_walks: int = 0
    tracker_saves: int = 0
    tracker_save_failures: int = 0
    overcommits: int = 0
    bytes_overcommitted: int = 0
    puts_blocked_events: int = 0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass(frozen=True)
class DiskStatus:
    total_bytes: int
    free_bytes: int


def disk_status(path: Path) -> DiskStatus:
    """Blocking ``statvfs`` of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return DiskStatus(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


class _Waiter:
    __slots__ = ("future", "nbytes", "nobjects")

    def __init__(self, nbytes: int, nobjects: int, future: asyncio.Future[None]) -> None:
        self.nbytes = nbytes
        self.nobjects = nobjects
        self.future = future


class CacheCoordinator:
    """See the module docstring. Create, then ``await start()`` on shard 0's loop."""

    def __init__(self, root: Path, settings: CacheSettings, clock: Clock) -> None:
        self.root = root
        self.settings = settings
        self.clock = clock
        self.tracker = AccessTimeTracker()
        self.metrics = CacheMetrics()
        self.max_bytes = settings.max_bytes or 0
        self.max_objects = settings.max_objects
        self.min_free_bytes = settings.min_free_bytes or 0
        self.limits = Limits(self.max_bytes, self.max_objects, self.min_free_bytes, 0, False)
        self.disk: DiskStatus | None = None
        self.puts_blocked = False
        self._enospc = False  # a write hit ENOSPC; blocked until the disk reports room again
        self._last_trim_failed = False
        self._trim_settled = False  # the last trim reached its goal (a walk would not help)
        self.reserved_bytes = 0
        self.reserved_objects = 0
        self.pending_bytes = 0
        self.pending_objects = 0
        self._extra_bytes = 0  # bare wrote_data() usage, until a walk recounts
        self._extra_objects = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._trim_sem = Semaphore(1, "cache-trim", clock)
        self._trimmer: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._last_walk = -math.inf
        self._generation = 0  # bumped on every change of usage or reservations
        self._watches: list[set[str]] = []
        self._saving: asyncio.Future[int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.Task[Any]] = []
        self._syncing: asyncio.Future[None] | None = None
        self._walk_abort = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._running = False
        self._stopped = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the root, compute limits, recover from the directory, arm the timers."""
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._changed = asyncio.Event()
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        self.disk = await asyncio.to_thread(disk_status, self.root)
        self._compute_limits()
        await self.recover()
        self._running = True
        self._arm_timers()
        self._check_disk()
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            self._spawn_background_trim(self.settings.low_watermark)

    def _arm_timers(self) -> None:
        for task in self._timers:
            task.cancel()
        self._timers = [self._spawn(self._tracker_save_loop()), self._spawn(self._disk_poll_loop())]
        if self.settings.sync_interval > 0:
            self._timers.append(self._spawn(self._sync_loop()))

    def _compute_limits(self) -> None:
        assert self.disk is not None
        limits = compute_limits(self.settings, self.disk.total_bytes)
        if limits.clamped and limits != self.limits:
            log.info("cache: max_bytes %d is more than the usable %d bytes of the disk "
                     "(disk_reservation_percent %.1f): using %d", self.settings.max_bytes,
                     limits.usable_bytes, self.settings.disk_reservation_percent,
                     limits.max_bytes)
        self.limits = limits
        self.max_bytes = limits.max_bytes
        self.max_objects = limits.max_objects
        self.min_free_bytes = limits.min_free_bytes

    async def apply_settings(self, settings: CacheSettings) -> None:
        """Take new settings (a reload): recompute the limits, re-arm the timers with their
        intervals, trim if now over a limit, and grant waiters if now under. Shard 0."""
        old = (self.max_bytes, self.max_objects, self.min_free_bytes)
        intervals = (self.settings.tracker_save_interval, self.settings.disk_poll_interval,
                     self.settings.sync_interval)
        self.settings = settings
        if self.disk is not None:
            self._compute_limits()
        new = (self.max_bytes, self.max_objects, self.min_free_bytes)
        if new != old:
            log.info("cache: limits are now %d bytes, %d objects, %d bytes kept free (were %d, "
                     "%d, %d)", *new, *old)
        if self._running and intervals != (settings.tracker_save_interval,
                                           settings.disk_poll_interval, settings.sync_interval):
            self._arm_timers()
        self._check_disk()
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            self._spawn_background_trim(self.settings.low_watermark)
        self._after_change()

    async def recover(self) -> None:
        """Load the tracker and walk the directory (deleting ``.part`` leftovers and empty
        dirs) in two concurrent thread jobs, then reconcile in a third: every walked file is an
        entry, with its saved access time if the tracker knew it."""
        started = time.monotonic()
        loading = asyncio.ensure_future(asyncio.to_thread(load_file, self.root / TRACKER_NAME))
        walk = await asyncio.to_thread(walk_cache, self.root, delete_parts=True)
        saved: list[tuple[str, float, int]] | None
        try:
            saved = await loading
        except (Corruption, OSError) as exc:
            log.warning("cache: access-time tracker %s is unusable (%s); rebuilding it from a "
                        "directory walk", self.root / TRACKER_NAME, exc)
            saved = None
        entries, total = await asyncio.to_thread(reconcile, saved or [], walk.files)
        self.tracker.install(entries, total)
        self.tracker.dirty = saved is None or len(saved) != len(entries)
        self._extra_bytes = self._extra_objects = 0
        log.info(
            "cache: recovered %d entries, %d bytes in %.2fs (%d .part leftovers and %d empty "
            "directories deleted)", len(entries), total, time.monotonic() - started,
            walk.parts_deleted, walk.empty_dirs_removed,
        )

    def begin_stop(self) -> None:
        """Refuse new reservations and fail the queued ones (GateClosed), so that gates holding
        them can drain. The first step of stopping any shard's service. Idempotent."""
        self._running = False
        while self._waiters:
            w = self._waiters.popleft()
            self.pending_bytes -= w.nbytes
            self.pending_objects -= w.nobjects
            if not w.future.done():
                w.future.set_exception(GateClosed("the cache is stopping"))

    async def stop(self) -> None:
        """Fail waiters, stop timers and trims, save the tracker. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.begin_stop()
        self._walk_abort.set()
        tasks = list(self._tasks)
        if self._trimmer is not None:
            tasks.append(self._trimmer)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        try:
            await self.save_tracker()
        except OSError:
            pass  # logged by _saved

    @property
    def running(self) -> bool:
        return self._running

    async def wait_idle(self) -> None:
        """Wait until no trim is running (counters then match the disk). For tests and tools."""
        while True:
            if self._trimmer is not None and not self._trimmer.done():
                await asyncio.wait([self._trimmer])
                continue
            async with await self._trim_sem.get_units(1):
                pass
            if self._trimmer is None or self._trimmer.done():
                return

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("cache: background task failed: %r", exc, exc_info=exc)

    # --- posting from any shard ------------------------------------------------------------

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on shard 0's loop: now if called there, else soon (in order)."""
        if threading.get_ident() == self._thread_id:
            fn(*args)
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the cache coordinator's loop is not running")
        loop.call_soon_threadsafe(fn, *args)

    def post_release(self, held_b: int, held_o: int, wrote_b: int, wrote_o: int) -> None:
        """A guard's release function: safe from any thread."""
        self.post(self.release, held_b, held_o, wrote_b, wrote_o)

    # --- accounting (shard 0 only) ---------------------------------------------------------

    @property
    def current_bytes(self) -> int:
        return self.tracker.total_bytes + self._extra_bytes

    @property
    def current_objects(self) -> int:
        return len(self.tracker) + self._extra_objects

    def fits(self, nbytes: int, nobjects: int) -> bool:
        return (
            self.current_bytes + self.reserved_bytes + nbytes <= self.max_bytes
            and self.current_objects + self.reserved_objects + nobjects <= self.max_objects
        )

    def describe(self) -> str:
        return (
            f"cache holds {self.current_bytes}/{self.max_bytes} bytes and "
            f"{self.current_objects}/{self.max_objects} objects, {self.reserved_bytes} bytes and "
            f"{self.reserved_objects} objects reserved, {self.pending_bytes} bytes and "
            f"{self.pending_objects} objects requested by {len(self._waiters)} waiter(s)"
        )

    def _watch(self, path: str) -> None:
        for w in self._watches:
            w.add(path)

    def release(self, held_b: int, held_o: int, wrote_b: int, wrote_o: int) -> None:
        """Give back a guard's units; account what it wrote (without a tracked path)."""
        self._unreserve(held_b, held_o)
        self._extra_bytes += wrote_b
        self._extra_objects += wrote_o
        self._after_change()

    def _unreserve(self, held_b: int, held_o: int) -> None:
        self.reserved_bytes -= held_b
        self.reserved_objects -= held_o
        if self.reserved_bytes < 0 or self.reserved_objects < 0:
            log.error("cache: reservation accounting went negative (%d bytes, %d objects)",
                      self.reserved_bytes, self.reserved_objects)
            self.reserved_bytes = max(0, self.reserved_bytes)
            self.reserved_objects = max(0, self.reserved_objects)

    def commit_entry(self, path: str, size: int, held_b: int, held_o: int) -> None:
        """A file landed at ``path``: release the guard's units and track it (replacing any
        previous entry at that path, whose size and object leave the counters)."""
        self._unreserve(held_b, held_o)
        self.tracker.add(path, self.clock.time(), size)
        self._watch(path)
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            log.warning("cache: over its limit after a commit: %s", self.describe())
            self._spawn_background_trim(self.settings.low_watermark)
        self._after_change()

    def forget(self, path: str) -> None:
        """The entry at ``path`` was deleted (invalidate, or found missing)."""
        self.tracker.remove(path)
        self._watch(path)
        self._after_change()

    def on_disk_full(self) -> None:
        """A write failed with ENOSPC: block new reservations, re-read the disk, trim (as far
        as a degraded disk asks), and unblock once the disk reports room again."""
        if not self._running:
            return
        self._enospc = True
        self._set_blocked(True, "a write failed: the data disk is full")

        async def run() -> None:
            await self._poll_disk()
            async with await self._trim_sem.get_units(1):
                await self._trim_once(manual=False, fraction=self.settings.low_watermark)
            await self._poll_disk()
            self._grant()

        self._spawn(run())

    async def _poll_disk(self) -> None:
        try:
            self.disk = await asyncio.to_thread(disk_status, self.root)
        except OSError as exc:
            log.warning("cache: cannot read free disk space: %s", exc)
            return
        self._compute_limits()
        if self._enospc and self.disk.free_bytes > 0 and not disk_degraded(
                self.disk.free_bytes, self.min_free_bytes):
            self._enospc = False
        self._check_disk()

    def _check_disk(self) -> None:
        """Block or unblock new reservations from the last disk figures."""
        free = self.disk.free_bytes if self.disk is not None else None
        if disk_degraded(free, self.min_free_bytes):
            self._set_blocked(True, f"the data disk has {free} bytes free, less than "
                                    f"min_free_bytes ({self.min_free_bytes})")
        elif not self._enospc:
            self._set_blocked(False, "")

    def _set_blocked(self, blocked: bool, why: str) -> None:
        if blocked == self.puts_blocked:
            return
        self.puts_blocked = blocked
        if blocked:
            self.metrics.puts_blocked_events += 1
            log.warning("cache: new writes wait: %s; trimming", why)
            self._maybe_background_trim()
        else:
            log.info("cache: the data disk has room again: new writes go on")
            self._after_change()

    def touch_batch(self, items: list[tuple[str, float]]) -> None:
        for path, atime in items:
            self.tracker.touch(path, atime)

    def _after_change(self) -> None:
        self._generation += 1
        self._grant()
        if self._changed is not None:
            self._changed.set()

    def _grant(self, overcommit: bool = False) -> None:
        """Grant queued requests in order while they fit; with ``overcommit`` (the trimmer,
        after a failed trim), also those that may exceed the byte limit."""
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():
                self._waiters.popleft()
                self.pending_bytes -= head.nbytes
                self.pending_objects -= head.nobjects
                continue
            if self.puts_blocked:
                return
            if not self.fits(head.nbytes, head.nobjects):
                if not (overcommit and self._may_exceed(head.nbytes, head.nobjects)):
                    return
                self._overcommit(head.nbytes)
            self._waiters.popleft()
            self.pending_bytes -= head.nbytes
            self.pending_objects -= head.nobjects
            self.reserved_bytes += head.nbytes
            self.reserved_objects += head.nobjects
            head.future.set_result(None)

    # --- reservation -----------------------------------------------------------------------

    def _usage(self) -> Usage:
        return Usage(self.current_bytes, self.current_objects, self.reserved_bytes,
                     self.reserved_objects, self.pending_bytes, self.pending_objects)

    def _may_exceed(self, nbytes: int, nobjects: int) -> bool:
        return (
            self.settings.may_exceed and not self.puts_blocked
            and may_exceed(self._usage(), self.limits,
                           self.disk.free_bytes if self.disk else None, nbytes, nobjects)
        )

    def _overcommit(self, nbytes: int) -> None:
        """Grant ``nbytes`` over ``max_bytes``: count it, and take it off the free-space
        estimate until the next poll (so that many requests cannot all skip the limit on the
        strength of one figure), as Redpanda does."""
        if self.disk is not None:
            self.disk = DiskStatus(self.disk.total_bytes, self.disk.free_bytes - nbytes)
        self.metrics.overcommits += 1
        self.metrics.bytes_overcommitted += nbytes
        log.info("cache: a trim could not free enough: %d bytes go over the %d-byte limit "
                 "(%s)", nbytes, self.max_bytes, self.describe())

    def _refusal(self, request: str, how: str) -> CacheFull:
        self.metrics.cache_full += 1
        if self.puts_blocked:
            free = self.disk.free_bytes if self.disk is not None else 0
            return CacheFull(f"{request} {how}: the data disk is low on space ({free} bytes "
                             f"free, min_free_bytes {self.min_free_bytes}); writes wait until "
                             f"trims or the disk recover: {self.describe()}")
        return CacheFull(f"{request} {how}: {self.describe()}")

    def _check_running(self) -> None:
        if not self._running:
            raise GateClosed("the cache is not running")

    def _guard(self, nbytes: int, nobjects: int) -> ReservationGuard:
        return ReservationGuard(nbytes, nobjects, self.post_release)

    async def reserve(
        self, nbytes: int, nobjects: int, deadline: Deadline, what: str = ""
    ) -> ReservationGuard:
        """Reserve space; wait (trimming) until ``deadline``, then raise :class:`CacheFull`."""
        self._check_running()
        if nbytes < 0 or nobjects < 0:
            raise InvalidArgument(f"cannot reserve {nbytes} bytes and {nobjects} objects")
        request = f"reservation of {nbytes} bytes and {nobjects} objects{what}"
        self._maybe_background_trim()
        if not self._waiters and not self.puts_blocked and self.fits(nbytes, nobjects):
            self.reserved_bytes += nbytes
            self.reserved_objects += nobjects
            return self._guard(nbytes, nobjects)
        if nobjects > self.max_objects or (nbytes > self.max_bytes and not (
                self.settings.may_exceed and could_ever_exceed(
                    self.limits, self.disk.free_bytes if self.disk else None, nbytes))):
            self.metrics.cache_full += 1
            raise CacheFull(f"{request} can never fit: {self.describe()}")
        if expired(deadline, self.clock):
            raise self._refusal(request, "timed out before it could wait")
        assert self._loop is not None
        waiter = _Waiter(nbytes, nobjects, self._loop.create_future())
        self._waiters.append(waiter)
        self.pending_bytes += nbytes
        self.pending_objects += nobjects
        self.metrics.reservation_waits += 1
        self._ensure_trimmer()
        timeout = remaining(deadline, self.clock)
        try:
            if timeout == math.inf:
                await waiter.future
            else:
                async with asyncio.timeout(timeout):
                    await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            raise self._refusal(request, "ran out of time") from None
        except BaseException:
            self._abandon(waiter)
            raise
        return self._guard(nbytes, nobjects)

    def _abandon(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted just as it gave up: give the units back.
                self._unreserve(waiter.nbytes, waiter.nobjects)
        else:
            self.pending_bytes -= waiter.nbytes
            self.pending_objects -= waiter.nobjects
        self._after_change()

    def _ensure_trimmer(self) -> None:
        if self._trimmer is None or self._trimmer.done():
            assert self._loop is not None
            self._trimmer = self._loop.create_task(self._run_trimmer())

    async def _run_trimmer(self) -> None:
        """Trim and grant while requests are queued; sleep when nothing can be freed yet."""
        assert self._changed is not None
        while self._waiters and self._running:
            self._grant()
            if not self._waiters:
                return
            generation = self._generation
            walks = self.metrics.walks
            async with await self._trim_sem.get_units(1):
                freed = await self._trim_once(manual=False, fraction=self.settings.low_watermark)
            self._grant()
            if not self._waiters:
                self._last_trim_failed = False  # the trim made room
                return
            if self.metrics.walks != walks or self._trim_settled:
                # The trim did all it could (it walked, or reached its goal, and the head
                # still does not fit): the head may over-commit (may_exceed), and so may later
                # requests without waiting for the next walk, until a trim makes room again
                # (Redpanda's _last_trim_failed).
                self._last_trim_failed = True
            self._grant(overcommit=self._last_trim_failed)
            if not self._waiters:
                return
            if freed.bytes_freed or freed.objects_freed or self._generation != generation:
                continue
            # Nothing could be freed: wait for a release/commit, or for walks to be allowed.
            self._changed.clear()
            wait_s = self._walk_throttle_left()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._changed.wait())]
            if 0 < wait_s < math.inf:
                waits.append(asyncio.ensure_future(self.clock.sleep(wait_s)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    # --- trim ------------------------------------------------------------------------------

    def _walk_throttle_left(self) -> float:
        return max(0.0, self._last_walk + self.settings.trim_interval - self.clock.monotonic())

    def _goal(self, fraction: float, scale: float = 1.0,
              over: tuple[bool, bool] | None = None) -> tuple[int, int]:
        """What committed usage must come down to (see :func:`pressure.trim_target`); the
        watermark applies to the dimensions over their target now, unless ``over`` says."""
        usage = self._usage()
        return trim_target(usage, self.limits,
                           self.disk.free_bytes if self.disk is not None else None,
                           watermark=fraction, scale=scale,
                           over=over_target(usage, self.limits, scale) if over is None else over)

    def _over(self, goal: tuple[int, int]) -> bool:
        return self.current_bytes > goal[0] or self.current_objects > goal[1]

    async def trim(self) -> TrimResult:
        """Manual trim (admin): unthrottled, both dimensions to the low watermark."""
        self._check_running()
        async with await self._trim_sem.get_units(1):
            result = await self._trim_once(manual=True, fraction=self.settings.low_watermark)
            await self._poll_disk()
        self._grant()
        return result

    def _maybe_background_trim(self) -> None:
        pct = self.settings.background_trim_threshold_percent
        low_disk = disk_degraded(self.disk.free_bytes if self.disk else None,
                                 self.min_free_bytes)
        if pct is None and not low_disk:
            return
        if pct is not None:
            frac = pct / 100.0
            over = (
                self.current_bytes + self.reserved_bytes > frac * self.max_bytes
                or self.current_objects + self.reserved_objects > frac * self.max_objects
            )
            if over:
                self._spawn_background_trim(self.settings.low_watermark, scale=frac)
                return
        if low_disk:
            self._spawn_background_trim(self.settings.low_watermark)

    def _spawn_background_trim(self, fraction: float, scale: float = 1.0) -> None:
        if not self._running or not self._trim_sem.try_wait(1):
            return  # a trim is running already

        async def run() -> None:
            try:
                await self._trim_once(manual=False, fraction=fraction, scale=scale)
            finally:
                self._trim_sem.signal(1)
            if self.puts_blocked:
                await self._poll_disk()
            self._grant()

        self._spawn(run())

    async def _trim_once(self, *, manual: bool, fraction: float, scale: float = 1.0,
                         all_dims: bool | None = None) -> TrimResult:
        """One trim, all phases as needed. A manual trim always walks (to recount) and applies
        the watermark to both dimensions (``all_dims``, default: ``manual``).
        REQUIRES: the caller holds ``cache-trim``."""
        both = manual if all_dims is None else all_dims
        # Which dimensions the watermark applies to is decided once, from the state now.
        over = (True, True) if both else over_target(self._usage(), self.limits, scale)

        def goal_now() -> tuple[int, int]:
            return self._goal(fraction, scale, over)

        goal = goal_now()
        self._trim_settled = not self._over(goal)
        if not manual and not self._over(goal):
            return TrimResult(0, 0)
        started = time.monotonic()
        walks_before = self.metrics.walks
        freed_b = freed_o = 0
        # Phase 1: LRU from memory, never throttled.
        if self._over(goal):
            freed_b, freed_o = await self._trim_lru(goal)
        goal = goal_now()
        if manual or (self._over(goal) and self._walk_throttle_left() == 0.0):
            # Phase 2: walk, correct drift, LRU again.
            walk = await self._walk_and_sync()
            goal = goal_now()
            b, o = await self._trim_lru(goal)
            freed_b, freed_o = freed_b + b, freed_o + o
            goal = goal_now()
            if self._over(goal):
                # Phase 3: exhaustive, from the walk's listing, whatever the tracker says.
                b, o = await self._trim_exhaustive(walk, goal)
                freed_b, freed_o = freed_b + b, freed_o + o
        self._trim_settled = not self._over(goal_now())
        elapsed = time.monotonic() - started
        if not (manual or freed_b or freed_o or self.metrics.walks != walks_before):
            return TrimResult(0, 0)  # nothing could be done (a waiter retries): not a trim
        m = self.metrics
        m.trims += 1
        m.trim_seconds_total += elapsed
        m.trim_seconds_max = max(m.trim_seconds_max, elapsed)
        m.bytes_trimmed += freed_b
        m.objects_trimmed += freed_o
        log.debug("cache: trim freed %d bytes, %d objects in %.3fs", freed_b, freed_o, elapsed)
        return TrimResult(freed_b, freed_o)

    async def _trim_lru(self, goal: tuple[int, int]) -> tuple[int, int]:
        victims: list[str] = []
        cur_b, cur_o = self.current_bytes, self.current_objects
        for path, (_, size) in self.tracker.lru():
            if cur_b <= goal[0] and cur_o <= goal[1]:
                break
            victims.append(path)
            cur_b -= size
            cur_o -= 1
        return await self._delete(victims)

    async def _delete(self, victims: list[str]) -> tuple[int, int]:
        """Drop ``victims`` from the tracker and delete their files (thread jobs)."""
        freed_b = freed_o = 0
        for i in range(0, len(victims), DELETE_BATCH):
            batch = victims[i : i + DELETE_BATCH]
            for path in batch:
                entry = self.tracker.remove(path)
                if entry is not None:
                    freed_b += entry[1]
                    freed_o += 1
            watch: set[str] = set()
            self._watches.append(watch)
            try:
                await asyncio.to_thread(delete_entries, self.root, batch)
            finally:
                self._watches.remove(watch)
            # A path committed again while its old file was being deleted may have lost the new
            # file too: re-check those against the disk.
            for path in watch:
                if path in self.tracker and not os.path.lexists(self.root / path):
                    self.tracker.remove(path)
            self._after_change()
        return freed_b, freed_o

    async def _walk_and_sync(self) -> WalkResult:
        """Phase 2: walk the directory and make the tracker and counters match it. The walk
        and the comparison with a snapshot of the tracker run in one thread job; the loop only
        applies the differences (and skips paths that changed meanwhile)."""
        watch: set[str] = set()
        self._watches.append(watch)
        snapshot = self.tracker.copy_entries()
        try:
            walk, diff = await asyncio.to_thread(walk_and_diff, self.root, snapshot)
        finally:
            self._watches.remove(watch)
        self._last_walk = self.clock.monotonic()
        self.metrics.walks += 1
        before = (self.current_bytes, self.current_objects)
        for path in diff.vanished:
            if path not in watch:
                self.tracker.remove(path)
        for path, size in diff.resized:
            entry = self.tracker.get(path)
            if path not in watch and entry is not None:
                self.tracker.add(path, entry[0], size)
        adopted = [f for f in diff.untracked if f[0] not in watch and f[0] not in self.tracker]
        if adopted:
            # Untracked files found: rebuild so they take their place in access-time order.
            self.tracker.replace_all(self.tracker.snapshot() + adopted)
            log.info("cache: trim walk adopted %d untracked files", len(adopted))
        self._extra_bytes = self._extra_objects = 0
        if (self.current_bytes, self.current_objects) != before:
            log.info("cache: walk corrected usage from %d bytes, %d objects to %d bytes, %d "
                     "objects", *before, self.current_bytes, self.current_objects)
            self._after_change()
        return walk

    async def sync_walk(self) -> None:
        """A background walk, paced to ``walk_rate``, that corrects the index and the counters
        from the disk: adopts untracked files, forgets vanished ones, fixes sizes. One at a
        time (a second call waits for the first). Shard 0."""
        if self._syncing is not None and not self._syncing.done():
            await asyncio.wait([self._syncing])
            return
        assert self._loop is not None
        self._syncing = done = self._loop.create_future()
        try:
            await self._sync_walk_once()
        finally:
            done.set_result(None)

    async def _sync_walk_once(self) -> None:
        watch: set[str] = set()
        self._watches.append(watch)
        indexed = {p: e[1] for p, e in self.tracker.lru()}
        pacer = Pacer(self.settings.walk_rate, self._walk_abort)
        try:
            diff = await asyncio.to_thread(sync_walk, self.root, indexed, pacer)
        except WalkAborted:
            return
        finally:
            self._watches.remove(watch)
        self.metrics.sync_walks += 1
        before = (self.current_bytes, self.current_objects)
        for path in diff.vanished:
            if path not in watch:
                self.tracker.remove(path)
        for path, size in diff.resized:
            entry = self.tracker.get(path)
            if path not in watch and entry is not None:
                self.tracker.add(path, entry[0], size)
        adopted = [f for f in diff.untracked if f[0] not in watch and f[0] not in self.tracker]
        if adopted:
            self.tracker.replace_all(self.tracker.snapshot() + adopted)
        self._extra_bytes = self._extra_objects = 0
        log.info("cache: sync walk of %d files in %.1fs (%.1fs paced): %d adopted, %d "
                 "forgotten, %d resized; usage %d bytes, %d objects (was %d, %d)", diff.files,
                 diff.seconds, pacer.slept_s, len(adopted), len(diff.vanished),
                 len(diff.resized), self.current_bytes, self.current_objects, *before)
        if (self.current_bytes, self.current_objects) != before:
            self._after_change()
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            self._spawn_background_trim(self.settings.low_watermark)

    async def _sync_loop(self) -> None:
        """Redpanda's tracker sync: every ``sync_interval``, postponed while a trim runs."""
        while True:
            await self.clock.sleep(self.settings.sync_interval)
            while self._trim_sem.available_units < 1:
                await self.clock.sleep(max(self.settings.trim_interval, 0.1))
            try:
                await self.sync_walk()
            except OSError as exc:
                log.warning("cache: the sync walk failed: %s", exc)

    async def wait_reconciled(self) -> None:
        """Wait until no background walk is correcting the index (for tests and tools)."""
        while self._syncing is not None and not self._syncing.done():
            await asyncio.wait([self._syncing])

    async def _trim_exhaustive(self, walk: WalkResult, goal: tuple[int, int]) -> tuple[int, int]:
        candidates = sorted(walk.files, key=lambda f: f[1])
        freed_b = freed_o = 0
        victims: list[str] = []
        cur_b, cur_o = self.current_bytes, self.current_objects
        for path, _, size in candidates:
            if cur_b <= goal[0] and cur_o <= goal[1]:
                break
            victims.append(path)
            cur_b -= size
            cur_o -= 1
        for i in range(0, len(victims), DELETE_BATCH):
            batch = victims[i : i + DELETE_BATCH]
            results = await asyncio.to_thread(delete_entries, self.root, batch)
            for path, deleted in results:
                entry = self.tracker.remove(path)
                if deleted is not None:
                    freed_b += deleted
                    freed_o += 1
                elif entry is not None:
                    freed_b += entry[1]
                    freed_o += 1
            self._after_change()
        return freed_b, freed_o

    # --- timers ----------------------------------------------------------------------------

    async def save_tracker(self) -> None:
        """Save the tracker if it changed (snapshot here, write in a thread). Saves never
        overlap: a save waits for the one in flight, even one whose caller was cancelled."""
        while self._saving is not None and not self._saving.done():
            await asyncio.wait([self._saving])
        if not self.tracker.dirty:
            return
        items = self.tracker.copy_entries()  # C-speed copy; encoded in the thread
        self.tracker.dirty = False
        saving = asyncio.ensure_future(asyncio.to_thread(
            save_file, self.root / TRACKER_NAME, self.root / TRACKER_TMP_NAME, items
        ))
        self._saving = saving
        saving.add_done_callback(self._saved)
        await asyncio.shield(saving)

    def _saved(self, saving: asyncio.Future[int]) -> None:
        exc = saving.exception() if not saving.cancelled() else None
        if exc is None:
            self.metrics.tracker_saves += 1
            return
        self.tracker.dirty = True
        self.metrics.tracker_save_failures += 1
        log.warning("cache: cannot save the access-time tracker: %s", exc)

    async def _tracker_save_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.tracker_save_interval)
            with contextlib.suppress(OSError):
                await self.save_tracker()

    async def _disk_poll_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.disk_poll_interval)
            await self._poll_disk()
            self._maybe_background_trim()

    def state(self) -> dict[str, int]:
        over = self.current_bytes + self.reserved_bytes - self.max_bytes
        return {
            "bytes_over_limit": max(0, over),
            "puts_blocked": int(self.puts_blocked),
            "min_free_bytes": self.min_free_bytes,
            "bytes_used": self.current_bytes,
            "objects": self.current_objects,
            "bytes_reserved": self.reserved_bytes,
            "objects_reserved": self.reserved_objects,
            "bytes_pending": self.pending_bytes,
            "objects_pending": self.pending_objects,
            "max_bytes": self.max_bytes,
            "max_objects": self.max_objects,
            "free_disk_bytes": self.disk.free_bytes if self.disk else 0,
        }
