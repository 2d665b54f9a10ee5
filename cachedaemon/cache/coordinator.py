"""CacheCoordinator: the cache's accounting, limits, reservations, trims and index (shard 0).

One coordinator per cache, owned by shard 0's :class:`~cachedaemon.cache.service.CacheService`
and touched only from shard 0's loop. Other shards reach it through their own CacheService,
which sends messages to shard 0's (``docs/shards.md``), always with plain data (names, paths,
numbers):

* awaited calls (``reserve``, ``trim``, ``stats``, ``stage_begin``);
* fire-and-forget *posts* (``release_reservation``, ``merge_reservations``, ``commit_entry``,
  ``forget``, ``touch_batch``, ``stage_end``). Posts from one shard run in order, before any
  later call from that shard.

**Reservations** are kept by id with the shard that holds them (:meth:`reserve_id`); a
:class:`~cachedaemon.cache.reservation.ReservationGuard` names its id. :meth:`release_shard`
releases every reservation of a shard that died, and deletes its staging files.

**Accounting.** ``current`` = committed entries: the index's totals (plus usage reported
through a bare ``ReservationGuard.wrote_data``, until the next walk recounts). ``reserved`` =
the sum over live guards. ``pending`` = what queued reservation requests ask for. A request is
granted when ``current + reserved + request <= limit`` in both bytes and objects, or, bytes
only, by an over-commit (below).

**Limits and pressure** (:mod:`cachedaemon.cache.pressure`). ``max_bytes`` (lowered to the
usable disk) or ``max_bytes_percent`` of it, ``max_objects``, ``min_free_bytes``. Free space is
polled off the loop every ``disk_poll_interval``. Below ``min_free_bytes``, or after a write
hit ENOSPC, the disk is *degraded*: new reservations wait (``puts_blocked``) until a poll finds
room again, and trims go further (to ``current - min_free_bytes``).

**Reservation.** Fast path when nothing is queued, puts are not blocked and the request fits.
Otherwise the request joins a FIFO queue (``pending`` grows), one *trimmer* task (which takes
the named ``cache-trim`` semaphore per trim: one trim at a time) trims and grants from the
head as space appears, and the requester waits until granted or its deadline passes (then
``CacheFull``, naming the request and the cache state or the disk; a waiter that gives up
leaves no pending units). When a trim has done all it could and the head still does not fit,
the head may **over-commit** (Redpanda's ``may_exceed``: bytes over ``max_bytes`` while the
disk has room), and later requests may too without waiting for the walk throttle, until a trim
makes room again.

**Trim** to the target (:func:`~cachedaemon.cache.pressure.trim_target`: the limit minus
pending units, times the low watermark on each dimension over it):

1. LRU: evict from the index's least-recently-used end. In memory, **never throttled**.
2. Walk (throttled by ``trim_interval`` unless manual): a directory walk that re-syncs the
   index with the disk (drops vanished entries, adopts untracked files, corrects sizes and
   ``current``), then LRU again.
3. Exhaustive: if still above the goal, delete from the walk's listing in access-time order,
   whatever the index says.

Phases 2 and 3 wait until the walk after a start from the index has checked it: until then a
trim never deletes anything the index does not know. ``.part`` files and the index's files are
never deleted by trim; empty parent directories are removed. Directory work runs in worker
threads, one job per walk or per delete batch; the loop stays free for other requests
meanwhile. Entries that change while a job runs (a commit of a path being deleted, say) are
re-checked after it.

**Index.** :class:`~cachedaemon.cache.index_store.IndexStore` keeps it on disk (snapshot and
journal, written by its own thread). A start reads it and serves at once; a background walk
(:meth:`sync_walk`, paced to ``walk_rate``) then corrects it, and again every
``sync_interval``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachedaemon.cache.classes import ReservationClass, WaiterQueue
from cachedaemon.cache.evictions import EvictionLog, EvictionReason
from cachedaemon.cache.index import CacheIndex
from cachedaemon.cache.index_store import IndexStore
from cachedaemon.cache.mrc import CurveSnapshot, MissRatioCurve, curve_sizes
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
from cachedaemon.cache.walker import (
    Pacer,
    WalkAborted,
    WalkResult,
    delete_entries,
    remove_empty_parents,
    sync_walk,
    walk_and_diff,
)
from cachedaemon.clock import Clock, Deadline, expired, remaining
from cachedaemon.config import CacheSettings
from cachedaemon.core.failpoints import failpoint
from cachedaemon.core.semaphore import Semaphore
from cachedaemon.errors import CacheFull, GateClosed, InvalidArgument

log = logging.getLogger("cachedaemon.cache")

#: Entries deleted per thread job in a trim.
DELETE_BATCH = 4096
#: Paths remembered as unlinked by a trim (``_deleted_lately``): a commit's accounting that
#: arrives this many deletions later is not checked against the disk.
DELETED_LATELY_MAX = 4096
#: How long shard 0's own reads wait in a queue before the curve takes them in one loop.
MRC_BATCH_S = 0.05


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
    sync_walk_seconds: float = 0.0
    reconcile_seconds: float = 0.0
    stale_parts_deleted: int = 0
    recovered_from_index: int = 0
    recovery_seconds: float = 0.0
    leftover_parts_deleted: int = 0
    index_snapshots: int = 0
    index_journal_records: int = 0
    index_journal_bytes: int = 0
    index_journal_failures: int = 0
    overcommits: int = 0
    bytes_overcommitted: int = 0
    puts_blocked_events: int = 0

    def as_dict(self) -> dict[str, int | float]:
        return asdict(self)


@dataclass(frozen=True)
class DiskStatus:
    total_bytes: int
    free_bytes: int


def delete_parts(root: Path, parts: list[str]) -> None:
    """Blocking: delete staging files (paths relative to ``root``) and their empty parents."""
    for rel in parts:
        path = root / rel
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        remove_empty_parents(root, path)


def disk_status(path: Path) -> DiskStatus:
    """Blocking ``statvfs`` of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return DiskStatus(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


class _Waiter:
    __slots__ = ("deadline", "future", "klass", "nbytes", "nobjects", "owner", "shard", "since")

    def __init__(self, nbytes: int, nobjects: int, shard: int, future: asyncio.Future[int],
                 klass: ReservationClass, owner: str, since: float,
                 deadline: Deadline) -> None:
        self.nbytes = nbytes
        self.nobjects = nobjects
        self.shard = shard
        self.future = future
        self.klass = klass
        self.owner = owner
        self.since = since
        self.deadline = deadline


class _Owner:
    """Who holds a reservation: its class, owner (the route and key, or the domain and SST),
    since when (monotonic seconds) and whether it was reported stale."""

    __slots__ = ("klass", "owner", "since", "warned")

    def __init__(self, klass: ReservationClass, owner: str, since: float) -> None:
        self.klass = klass
        self.owner = owner
        self.since = since
        self.warned = False


class CacheCoordinator:
    """See the module docstring. Create, then ``await start()`` on shard 0's loop."""

    def __init__(self, root: Path, settings: CacheSettings, clock: Clock) -> None:
        self.root = root
        self.settings = settings
        self.clock = clock
        self.store = IndexStore(root, self.on_disk_full)
        self.index: CacheIndex = self.store.index
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
        self._waiters: WaiterQueue[_Waiter] = WaiterQueue()
        self._trim_sem = Semaphore(1, "cache-trim", clock)
        self._trimmer: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._last_walk = -math.inf
        self._generation = 0  # bumped on every change of usage or reservations
        self._watches: list[set[str]] = []  # one per walk or delete batch: paths changed since
        # Paths a trim has dropped from the index whose files are still being deleted: a walk
        # that starts meanwhile may still see them, and must not adopt them.
        self._deleting: collections.Counter[str] = collections.Counter()
        # Paths a trim's thread has unlinked lately: a commit of one whose new file landed
        # before the unlink but whose accounting arrives after the trim's re-check must look at
        # the disk before it is indexed (bounded: the race is a thread switch wide).
        self._deleted_lately: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._reconciling = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: list[asyncio.Task[Any]] = []
        self._syncing: asyncio.Future[None] | None = None
        self._walk_abort = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Live reservations: id -> [shard, bytes, objects]; and the staging file (``.part``,
        # relative to the root) a reservation pays for, so a dead shard's can be deleted.
        self._held: dict[int, list[int]] = {}
        self._owners: dict[int, _Owner] = {}
        self._parts: dict[int, str] = {}
        # Issue 18: why entries left (explain), the miss-ratio curve, stale reservations.
        self.evictions = EvictionLog(settings.eviction_log_entries)
        self.mrc: MissRatioCurve | None = (
            MissRatioCurve(settings.mrc_sample_rate, settings.mrc_max_keys)
            if settings.mrc_sample_rate > 0 else None)
        self.stale_reservations = 0
        # When the most recently read entries were last read (unix seconds), oldest first, at
        # most eviction_log_entries of them: explain's "last access" (the index keeps order,
        # not times).
        self.accesses: dict[str, float] = {}
        self._mrc_queue: list[tuple[str, int]] = []  # shard 0's reads not yet in the curve
        self._mrc_scheduled = False
        self._ids = itertools.count(1)
        self._running = False
        self._stopped = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the root, compute limits, read the index (or walk), arm the timers; with
        an index read, the background walk that checks it starts (see :meth:`sync_walk`)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        self.disk = await asyncio.to_thread(disk_status, self.root)
        self._compute_limits()
        await self.recover()
        self._running = True
        self._arm_timers()
        self._check_disk()
        if self._reconciling:
            self._spawn(self._reconcile())
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            self._spawn_background_trim(self.settings.low_watermark)

    def _arm_timers(self) -> None:
        for task in self._timers:
            task.cancel()
        self._timers = [self._spawn(self._touch_loop()), self._spawn(self._disk_poll_loop()),
                        self._spawn(self._stale_loop())]
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
        old_settings = self.settings
        intervals = (self.settings.tracker_save_interval, self.settings.disk_poll_interval,
                     self.settings.sync_interval)
        self.settings = settings
        self.evictions.resize(settings.eviction_log_entries)
        while len(self.accesses) > settings.eviction_log_entries:
            del self.accesses[next(iter(self.accesses))]
        if settings.mrc_sample_rate <= 0:
            self.mrc, self._mrc_queue = None, []
        elif self.mrc is None or (settings.mrc_sample_rate, settings.mrc_max_keys) != (
                old_settings.mrc_sample_rate, old_settings.mrc_max_keys):
            # A new curve, from nothing: the old one's samples were taken at another rate.
            self.mrc = MissRatioCurve(settings.mrc_sample_rate, settings.mrc_max_keys)
            self._mrc_queue = []
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
        """Read the index (or, without a usable one, walk the directory); see
        :class:`~cachedaemon.cache.index_store.IndexStore`."""
        await self.store.open()
        self._extra_bytes = self._extra_objects = 0
        self._reconciling = self.store.needs_reconcile
        self._copy_index_figures()

    def _copy_index_figures(self) -> None:
        f, m = self.store.figures, self.metrics
        m.recovered_from_index = f.recovered_from_index
        m.recovery_seconds = f.recovery_seconds
        m.leftover_parts_deleted = f.leftover_parts_deleted
        m.index_snapshots = f.snapshots
        m.index_journal_records = f.journal_records
        m.index_journal_bytes = f.journal_bytes
        m.index_journal_failures = f.journal_failures
        journal = self.store.journal
        if journal is not None:  # live figures
            m.index_snapshots = journal.snapshots
            m.index_journal_records = journal.records
            m.index_journal_bytes = journal.journal_bytes
            m.index_journal_failures = journal.failures

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
        """Fail waiters, stop timers, trims and walks, write the index out. Idempotent."""
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
        await self.store.close()
        self._copy_index_figures()

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

    # --- accounting (shard 0 only) ---------------------------------------------------------

    @property
    def current_bytes(self) -> int:
        return self.index.total_bytes + self._extra_bytes

    @property
    def current_objects(self) -> int:
        return len(self.index) + self._extra_objects

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

    def _begin_watch(self) -> set[str]:
        """A new set of the paths that change from now on (and of those whose deletion is in
        flight): a walk or delete skips them when it applies what it saw. End with
        :meth:`_end_watch`."""
        watch = set(self._deleting)
        self._watches.append(watch)
        return watch

    def _end_watch(self, watch: set[str]) -> None:
        # By identity: list.remove compares sets by value and would take another walk's equal
        # set, which would then miss the changes it must skip.
        for i, w in enumerate(self._watches):
            if w is watch:
                del self._watches[i]
                return

    def _hold(self, nbytes: int, nobjects: int, shard: int,
              klass: ReservationClass = ReservationClass.write, owner: str = "") -> int:
        rid = next(self._ids)
        self._held[rid] = [shard, nbytes, nobjects]
        self._owners[rid] = _Owner(klass, owner, self.clock.monotonic())
        self.reserved_bytes += nbytes
        self.reserved_objects += nobjects
        return rid

    def _drop(self, rid: int) -> None:
        self._parts.pop(rid, None)
        self._owners.pop(rid, None)
        held = self._held.pop(rid, None)
        if held is not None:
            self._unreserve(held[1], held[2])

    def release_reservation(self, rid: int, wrote_b: int, wrote_o: int) -> None:
        """Give back reservation ``rid``'s units; account what it wrote (without a tracked
        path)."""
        self._drop(rid)
        self._extra_bytes += wrote_b
        self._extra_objects += wrote_o
        self._after_change()

    def note_part(self, rid: int, part: str) -> None:
        """Reservation ``rid`` pays for the staging file ``part`` (relative to the root)."""
        if rid in self._held:
            self._parts[rid] = part

    def merge_reservations(self, into: int, frm: int) -> None:
        """Reservation ``frm``'s units now belong to ``into`` (one guard holds both)."""
        part = self._parts.pop(frm, None)
        if part is not None and into in self._held:
            self._parts.setdefault(into, part)
        held = self._held.pop(frm, None)
        self._owners.pop(frm, None)
        if held is None:
            return
        target = self._held.get(into)
        if target is None:  # ``into`` is gone already: give ``frm``'s units back
            self._unreserve(held[1], held[2])
            self._after_change()
            return
        target[1] += held[1]
        target[2] += held[2]

    def release_shard(self, shard: int) -> tuple[int, int]:
        """Release every reservation held by ``shard`` (it died) and delete its staging files
        (in the background; every one it announced, whether a reservation names it or not) and
        end them in the index journal; return the units freed."""
        freed_b = freed_o = 0
        parts: list[str] = []
        for rid in [rid for rid, h in self._held.items() if h[0] == shard]:
            part = self._parts.pop(rid, None)
            if part is not None:
                parts.append(part)
            _, b, o = self._held.pop(rid)
            self._owners.pop(rid, None)
            self._unreserve(b, o)
            freed_b += b
            freed_o += o
        for part in self.store.shard_parts(shard):
            if part not in parts:
                parts.append(part)
        if freed_b or freed_o or parts:
            log.warning("cache: released %d bytes and %d objects reserved by shard %d, and "
                        "%d staging file(s)", freed_b, freed_o, shard, len(parts))
            self._after_change()
        if parts:
            task = self._spawn(asyncio.to_thread(delete_parts, self.root, parts))

            def ended(_: asyncio.Task[Any]) -> None:
                for part in parts:
                    self.store.stage_end(part)

            task.add_done_callback(ended)
        return freed_b, freed_o

    @property
    def reservations(self) -> int:
        """Live reservations."""
        return len(self._held)

    def _unreserve(self, held_b: int, held_o: int) -> None:
        self.reserved_bytes -= held_b
        self.reserved_objects -= held_o
        if self.reserved_bytes < 0 or self.reserved_objects < 0:
            log.error("cache: reservation accounting went negative (%d bytes, %d objects)",
                      self.reserved_bytes, self.reserved_objects)
            self.reserved_bytes = max(0, self.reserved_bytes)
            self.reserved_objects = max(0, self.reserved_objects)

    def commit_entry(self, path: str, size: int, rid: int) -> None:
        """A file landed at ``path``: release reservation ``rid``'s units and track it
        (replacing any previous entry at that path, whose size and object leave the counters)."""
        self._drop(rid)
        trimmed = path in self._deleting or path in self._deleted_lately
        self._deleted_lately.pop(path, None)
        if trimmed and not os.path.lexists(self.root / path):
            # A trim deleting this path unlinked the new file too (after its rename, before
            # this accounting): nothing is there to index.
            self._after_change()
            return
        old = self.index.add(path, size)
        if old is not None:
            self.evictions.record(path, EvictionReason.replaced, old, self.clock.time())
        if self.mrc is not None:
            self._feed_mrc()  # the reads queued before it go first
            self.mrc.access(path, size, 0)  # most recent now; not a read
        self._watch(path)
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            log.info("cache: over its limit after a commit (an over-commit, or a replace "
                     "larger than its reservation): %s", self.describe())
            self._spawn_background_trim(self.settings.low_watermark)
        self._after_change()

    def forget(self, path: str, reason: EvictionReason = EvictionReason.deleted) -> None:
        """The entry at ``path`` was deleted (a write of its key, a drop, an invalidate), for
        ``reason``."""
        size = self.index.remove(path)
        if size is not None:
            self.evictions.record(path, reason, size, self.clock.time())
        if self.mrc is not None:
            self._feed_mrc()
            self.mrc.forget(path)
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
        """Entries read (hits), in order: each moves to the most-recent end. The order reaches
        the journal every ``tracker_save_interval``."""
        touch = self.index.touch
        for path, at in items:
            touch(path)
            self._accessed(path, at)

    def _accessed(self, path: str, at: float) -> None:
        accesses = self.accesses
        accesses.pop(path, None)
        accesses[path] = at
        if len(accesses) > self.evictions.capacity:
            del accesses[next(iter(accesses))]

    def hit(self, path: str) -> None:
        """Shard 0's own hit of ``path``: touched, and a reference for the curve, queued (one
        append on the hit path; :meth:`_feed_mrc` filters the queue in one loop every
        ``MRC_BATCH_S``)."""
        size = self.index.touch_size(path)
        self._accessed(path, self.clock.time())
        if size is not None and self.mrc is not None:
            self._mrc_queue.append((path, size))
            if not self._mrc_scheduled:
                self._schedule_mrc()

    def _schedule_mrc(self) -> None:
        self._mrc_scheduled = True
        asyncio.get_running_loop().call_later(MRC_BATCH_S, self._feed_mrc)

    def _feed_mrc(self) -> None:
        """The queued reads of shard 0 into the curve, in order."""
        self._mrc_scheduled = False
        if self._mrc_queue and self.mrc is not None:
            queue, self._mrc_queue = self._mrc_queue, []
            self.mrc.access_many(queue)

    def reads(self, refs: list[tuple[str, int]]) -> None:
        """Another shard's reads, in the order it served them: ``(path, -1)`` a hit (touched;
        its size is the index's), ``(path, size)`` a miss of an object of ``size`` bytes.
        Sent instead of :meth:`touch_batch` while the curve is on (every reference counts)."""
        touch = self.index.touch_size
        mrc = self.mrc
        now = self.clock.time()
        self._feed_mrc()  # shard 0's own reads so far go first
        for path, size in refs:
            if size < 0:
                found = touch(path)
                self._accessed(path, now)
                if found is None:
                    continue
                size = found
            if mrc is not None:
                mrc.access(path, size)

    def miss(self, path: str, size: int) -> None:
        """Shard 0's own miss of an object of ``size`` bytes: a reference for the curve
        (queued behind shard 0's hits)."""
        if self.mrc is not None:
            self._mrc_queue.append((path, size))
            if not self._mrc_scheduled:
                self._schedule_mrc()

    async def stage_begin(self, part: str, shard: int) -> None:
        """``shard`` is about to create the staging file ``part`` (relative to the root): once
        this returns, its BEGIN record is in the index journal, so a restart finds the file
        if it is left behind. Awaited (``invoke_on(0, ...)`` from other shards)."""
        self._check_running()
        await self.store.stage_begin(part, shard)

    def stage_end(self, part: str) -> None:
        """The staging file ``part`` was committed or aborted (posted)."""
        self.store.stage_end(part)

    def staging_of(self, shard: int) -> list[str]:
        """The live staging files of ``shard``: what to delete if that shard dies."""
        return self.store.shard_parts(shard)

    def _after_change(self) -> None:
        self._generation += 1
        self._grant()
        if self._changed is not None:
            self._changed.set()

    def _grant(self, overcommit: bool = False) -> None:
        """Grant queued requests in order while they fit; with ``overcommit`` (the trimmer,
        after a failed trim), also those that may exceed the byte limit."""
        while self._waiters:
            head = self._waiters.head()
            assert head is not None
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
            head.future.set_result(self._hold(head.nbytes, head.nobjects, head.shard,
                                              head.klass, head.owner))

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

    async def reserve(
        self, nbytes: int, nobjects: int, deadline: Deadline, what: str = "",
        klass: ReservationClass | str = ReservationClass.write, owner: str = "",
    ) -> ReservationGuard:
        """Reserve space on shard 0 itself; a guard over :meth:`reserve_id`."""
        rid = await self.reserve_id(nbytes, nobjects, deadline, what, 0, klass, owner)
        return ReservationGuard(rid, nbytes, nobjects, self)

    async def reserve_id(
        self, nbytes: int, nobjects: int, deadline: Deadline, what: str = "", shard: int = 0,
        klass: ReservationClass | str | int = ReservationClass.write, owner: str = "",
    ) -> int:
        """Reserve space for ``shard`` as a request of class ``klass`` (see
        :mod:`cachedaemon.cache.classes`) made by ``owner``; wait (trimming) until
        ``deadline``, then raise :class:`CacheFull`. Returns the reservation's id."""
        self._check_running()
        cls = ReservationClass(klass) if isinstance(klass, int) else ReservationClass.parse(klass)
        if nbytes < 0 or nobjects < 0:
            raise InvalidArgument(f"cannot reserve {nbytes} bytes and {nobjects} objects")
        request = (f"{cls.name} reservation of {nbytes} bytes and {nobjects} objects{what}"
                   + (f" for {owner}" if owner else ""))
        self._maybe_background_trim()
        if (nbytes == 0 and nobjects == 0) or (
                not self._waiters.blocks(cls) and not self.puts_blocked
                and self.fits(nbytes, nobjects)):
            # (A request for nothing takes nothing: granted even while the cache is over its
            # limit or others queue, instead of waiting out its deadline.)
            return self._hold(nbytes, nobjects, shard, cls, owner)
        if nobjects > self.max_objects or (nbytes > self.max_bytes and not (
                self.settings.may_exceed and could_ever_exceed(
                    self.limits, self.disk.free_bytes if self.disk else None, nbytes))):
            self.metrics.cache_full += 1
            raise CacheFull(f"{request} can never fit: {self.describe()}")
        if expired(deadline, self.clock):
            raise self._refusal(request, "timed out before it could wait")
        assert self._loop is not None
        waiter = _Waiter(nbytes, nobjects, shard, self._loop.create_future(), cls, owner,
                         self.clock.monotonic(), deadline)
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
        return waiter.future.result()

    def _abandon(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            fut = waiter.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted just as it gave up: give the units back.
                self._drop(fut.result())
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
            freed_b, freed_o = await self._trim_lru(goal, EvictionReason.lru_trim)
        goal = goal_now()
        # Until the walk after a start from the index has checked it, a trim deletes nothing
        # the index does not know: no walk phase, no exhaustive phase.
        if not self._reconciling and (
                manual or (self._over(goal) and self._walk_throttle_left() == 0.0)):
            # Phase 2: walk, correct drift, LRU again.
            walk = await self._walk_and_sync()
            goal = goal_now()
            b, o = await self._trim_lru(goal, EvictionReason.walk_trim)
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

    async def _trim_lru(self, goal: tuple[int, int], reason: EvictionReason
                        ) -> tuple[int, int]:
        victims: list[str] = []
        cur_b, cur_o = self.current_bytes, self.current_objects
        for path, size in self.index.lru():
            if cur_b <= goal[0] and cur_o <= goal[1]:
                break
            victims.append(path)
            cur_b -= size
            cur_o -= 1
        return await self._delete(victims, reason)

    async def _delete(self, victims: list[str], reason: EvictionReason) -> tuple[int, int]:
        """Drop ``victims`` from the index and delete their files (thread jobs)."""
        freed_b = freed_o = 0
        now = self.clock.time()
        for i in range(0, len(victims), DELETE_BATCH):
            batch = victims[i : i + DELETE_BATCH]
            watch = self._begin_watch()
            for path in batch:
                size = self.index.remove(path)
                if size is not None:
                    freed_b += size
                    freed_o += 1
                    self.evictions.record(path, reason, size, now)
                self._watch(path)
            self._deleting.update(batch)
            try:
                await asyncio.to_thread(delete_entries, self.root, batch)
            finally:
                self._deleting.subtract(batch)
                lately = self._deleted_lately
                for path in batch:
                    if self._deleting[path] <= 0:
                        del self._deleting[path]
                    lately[path] = None
                    lately.move_to_end(path)
                while len(lately) > DELETED_LATELY_MAX:
                    lately.popitem(last=False)
                self._end_watch(watch)
            # A path committed again while its old file was being deleted may have lost the new
            # file too: re-check those against the disk.
            for path in watch:
                if path in self.index and not os.path.lexists(self.root / path):
                    self.index.remove(path)
            self._after_change()
        return freed_b, freed_o

    async def _walk_and_sync(self) -> WalkResult:
        """Phase 2: walk the directory and make the index and counters match it. The walk
        and the comparison with a copy of the index run in one thread job; the loop only
        applies the differences (and skips paths that changed meanwhile)."""
        watch = self._begin_watch()
        indexed = self.index.copy()
        try:
            walk, diff = await asyncio.to_thread(walk_and_diff, self.root, indexed)
        finally:
            self._end_watch(watch)
        self._last_walk = self.clock.monotonic()
        self.metrics.walks += 1
        self._apply_walk(diff.vanished, diff.resized, diff.untracked, watch, "trim walk")
        return walk

    def _apply_walk(self, vanished: list[str], resized: list[tuple[str, int]],
                    untracked: list[tuple[str, float, int]], watch: set[str], what: str) -> None:
        """Correct the index from a walk: forget vanished entries, fix sizes, adopt untracked
        files (oldest first, at the least-recently-used end), skipping every path that changed
        while the walk ran (``watch``); then recount. Bulk changes: the next snapshot carries
        them."""
        before = (self.current_bytes, self.current_objects)
        now = self.clock.time()
        gone = [p for p in vanished if p not in watch]
        for p in gone:
            size = self.index.get(p)
            if size is not None:
                self.evictions.record(p, EvictionReason.vanished, size, now)
        forgotten = self.index.forget(gone)
        for path, size in resized:
            if path not in watch:
                self.index.set_size(path, size)
        adopted = self.index.adopt([f for f in untracked if f[0] not in watch])
        self._extra_bytes = self._extra_objects = 0
        if forgotten or adopted:
            log.info("cache: %s adopted %d untracked files and forgot %d missing ones", what,
                     adopted, forgotten)
        if self.index.bulk_dirty:
            self.store.compact()
        if (self.current_bytes, self.current_objects) != before:
            log.info("cache: walk corrected usage from %d bytes, %d objects to %d bytes, %d "
                     "objects", *before, self.current_bytes, self.current_objects)
            self._after_change()

    async def sync_walk(self) -> None:
        """A background walk, paced to ``walk_rate``, that corrects the index and the counters
        from the disk (adopts untracked files, forgets vanished ones, fixes sizes) and deletes
        ``.part`` files no shard has in flight. The one after a start from the index, and the
        periodic one (every ``sync_interval``). One at a time: a second call waits for the
        first. Shard 0."""
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
        watch = self._begin_watch()
        indexed = self.index.copy()  # the walk consumes it
        pacer = Pacer(self.settings.walk_rate, self._walk_abort)
        try:
            diff = await asyncio.to_thread(sync_walk, self.root, indexed, pacer)
        except WalkAborted:
            return
        finally:
            self._end_watch(watch)
        self.metrics.sync_walks += 1
        self.metrics.sync_walk_seconds = diff.seconds
        self._apply_walk(diff.vanished, diff.resized, diff.untracked, watch, "sync walk")
        # A .part no shard has in flight is a leftover (its BEGIN record was lost, or its
        # commit could not remove it): every live one is in the staging set, since a shard
        # announces a staging file before creating it.
        stale = [p for p in diff.parts if p not in self.store.staging]
        if stale:
            results = await asyncio.to_thread(delete_entries, self.root, stale)
            gone = sum(1 for _, size in results if size is not None)
            self.metrics.stale_parts_deleted += gone
            log.info("cache: sync walk deleted %d .part leftovers", gone)
        log.info("cache: sync walk of %d files in %.1fs (%.1fs of it paced to %d files/s); "
                 "usage %d bytes, %d objects", diff.files, diff.seconds, pacer.slept_s,
                 self.settings.walk_rate, self.current_bytes, self.current_objects)
        if self.current_bytes > self.max_bytes or self.current_objects > self.max_objects:
            self._spawn_background_trim(self.settings.low_watermark)

    async def _reconcile(self) -> None:
        """After a start from the index: the background walk that checks it against the disk.
        Until it ends, trims work from the index alone (never deleting what it does not know).
        A walk that fails is tried again after ``trim_interval``."""
        started = time.monotonic()
        while self._running:
            try:
                await failpoint("cache.reconcile.walk")
                await self.sync_walk()
            except Exception as exc:
                log.warning("cache: the walk that checks the index failed (%s); trying again "
                            "in %.1fs", exc, self.settings.trim_interval)
                await self.clock.sleep(max(self.settings.trim_interval, 0.1))
                continue
            break
        self._reconciling = False
        self.metrics.reconcile_seconds = time.monotonic() - started

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

    @property
    def reconciling(self) -> bool:
        """True from a start from the index until its background walk has checked it."""
        return self._reconciling

    async def wait_reconciled(self) -> None:
        """Wait until no background walk is correcting the index (for tests and tools)."""
        while self._reconciling or (self._syncing is not None and not self._syncing.done()):
            if self._syncing is not None and not self._syncing.done():
                await asyncio.wait([self._syncing])
            else:
                await asyncio.sleep(0.01)

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
            now = self.clock.time()
            for path, deleted in results:
                known = self.index.remove(path)
                if deleted is not None or known is not None:
                    self.evictions.record(path, EvictionReason.exhaustive_trim,
                                          deleted if deleted is not None else known or 0, now)
                if deleted is not None:
                    freed_b += deleted
                    freed_o += 1
                elif known is not None:
                    freed_b += known
                    freed_o += 1
            self._after_change()
        return freed_b, freed_o

    # --- timers ----------------------------------------------------------------------------

    async def save_tracker(self) -> None:
        """Write the index out now: the access order gathered so far, a snapshot if one is due,
        and the journal synced. (The name is the tracker's, which the index replaced.)"""
        await self.store.flush()
        self._copy_index_figures()

    async def _touch_loop(self) -> None:
        """Every ``tracker_save_interval``: the access order of hits goes to the journal, and
        a snapshot is taken if bulk changes or a failed write call for one."""
        while True:
            await self.clock.sleep(self.settings.tracker_save_interval)
            self.store.push_touches()
            if self.store.wants_snapshot:
                self.store.compact()
            self._copy_index_figures()

    async def _disk_poll_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.disk_poll_interval)
            await self._poll_disk()
            self._maybe_background_trim()

    # --- seeing into the cache (issue 18; plain data out, it crosses shards) ----------------

    async def _stale_loop(self) -> None:
        """Every quarter of ``reservation_warn_age``, at least every 10 s: :meth:`check_stale`."""
        while True:
            await self.clock.sleep(min(10.0, max(0.05, self.settings.reservation_warn_age / 4)))
            self.check_stale()

    def check_stale(self) -> int:
        """Count the reservations held longer than ``reservation_warn_age`` (the gauge
        ``cachedaemon_cache_stale_reservations``); log each once, with its owner."""
        warn_age = self.settings.reservation_warn_age
        now = self.clock.monotonic()
        stale = 0
        for rid, who in self._owners.items():
            age = now - who.since
            if age < warn_age:
                continue
            stale += 1
            if not who.warned:
                who.warned = True
                held = self._held.get(rid, [0, 0, 0])
                log.warning("cache: reservation %d (%s, %d bytes, %d objects, shard %d) held "
                            "for %.0fs, more than reservation_warn_age (%.0fs): owner %s", rid,
                            who.klass.name, held[1], held[2], held[0], age, warn_age,
                            who.owner or "(unnamed)")
        self.stale_reservations = stale
        return stale

    def reservations_listing(self) -> dict[str, Any]:
        """``GET /v1/cache/reservations``: every live reservation and every queued request."""
        now = self.clock.monotonic()
        warn_age = self.settings.reservation_warn_age
        rows = []
        for rid, (shard, nbytes, nobjects) in self._held.items():
            who = self._owners.get(rid)
            age = now - who.since if who is not None else 0.0
            rows.append({"id": rid, "shard": shard,
                         "class": who.klass.name if who is not None else "write",
                         "bytes": nbytes, "objects": nobjects, "age_s": age,
                         "owner": who.owner if who is not None else "",
                         "stale": age >= warn_age, "part": self._parts.get(rid)})
        rows.sort(key=lambda r: -r["age_s"])  # type: ignore[operator]
        waiters = []
        for w in self._waiters:
            if w.future.done():
                continue
            waiters.append({"shard": w.shard, "class": w.klass.name, "bytes": w.nbytes,
                            "objects": w.nobjects, "age_s": now - w.since,
                            "deadline_s": (None if w.deadline == math.inf
                                           else max(0.0, w.deadline - now)),
                            "owner": w.owner})
        stale = sum(1 for r in rows if r["stale"])
        return {"reservations": rows, "waiters": waiters, "warn_age_s": warn_age,
                "stale": stale, "queued_by_class": self._waiters.counts()}

    def explain_entry(self, path: str) -> dict[str, Any]:
        """What shard 0 knows of ``path``: its entry (size, when last used as far as the index
        knows, its place in the LRU order: the bytes that go before it, and that as a fraction
        0.0 = next to go, 1.0 = most recent), its latest eviction record. O(entries) for the LRU place: an operator's question, not a hot
        path."""
        cached = None
        size = self.index.get(path)
        if size is not None:
            before = 0
            for p, s in self.index.lru():
                if p == path:
                    break
                before += s
            others = self.current_bytes - size
            cached = {"size": size, "bytes_before": before,
                      "last_access": self.accesses.get(path),
                      "lru_position": before / others if others > 0 else 1.0,
                      "entries": len(self.index)}
        ev = self.evictions.lookup(path)
        evicted = None if ev is None else {
            "at": ev.at, "reason": ev.reason.value, "description": ev.reason.description,
            "size": ev.size}
        return {"cached": cached, "evicted": evicted,
                "log_since": self.evictions.oldest(), "log_entries": len(self.evictions)}

    def mrc_snapshot(self) -> CurveSnapshot | None:
        """The curve at :func:`~cachedaemon.cache.mrc.curve_sizes` of the byte limit."""
        if self.mrc is None:
            return None
        self._feed_mrc()
        return self.mrc.snapshot(curve_sizes(self.max_bytes))

    def hot_entries(self, limit: int) -> list[tuple[str, int]]:
        """At most ``limit`` entries ``(path, size)``, most recently used first."""
        out: list[tuple[str, int]] = []
        for item in reversed(self.index.copy().items()):
            if len(out) >= limit:
                break
            out.append(item)
        return out

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
            "reconciling": int(self._reconciling),
        }
