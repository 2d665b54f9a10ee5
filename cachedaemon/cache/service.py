"""CacheService: the cache's per-shard front end (Redpanda's ``cache``), and its start/stop.

One instance per shard, in a ``Sharded[CacheService]`` (:func:`start_cache`, run by every
shard for itself), or a single instance for tests and embedded use
(:meth:`CacheService.open_single`). Each instance owns its gate, its ``.part`` counter, its
in-progress set and its hit/miss counters, and runs local file operations (open, stat, staging
writes, commit, invalidate) on its own shard, in worker threads where they may block. Shard 0's
instance also owns the :class:`~cachedaemon.cache.coordinator.CacheCoordinator` (accounting,
reservations, trims, the index); other shards reach it only by message (``docs/shards.md``):
calls for what they wait on (``reserve_space``, ``trim``, ``stats``, announcing a staging file
before creating it) and posts for what they do not (releases, merges and commits of
reservations, forgets, ends of staging files, and access-time touches, gathered for
``TOUCH_BATCH_S``). The ``_coord_*`` methods are that message surface; they run on shard 0.

Shard 0's instance also owns the :class:`~cachedaemon.cache.coherence.KeyTable` that orders
object writes, fills and cache drops per key (``docs/cache.md``, "Per key, reads follow
writes"): :meth:`CacheService.register` and :meth:`CacheService.finish` reach it from any shard
with one ``invoke_on(0, ...)`` each, carrying plain data (key, ticket, staging path); a hit never
does.

Every public operation holds the shard's gate; a staging file holds it until it is committed or
closed. ``stop()`` closes the gate (waiting for those), and on shard 0 stops the coordinator and
writes the index out. Operations after ``stop()`` raise :class:`~cachedaemon.errors.GateClosed`.

Every entry point validates its key with :func:`cachedaemon.cache.keys.checked_relpath` and
refuses paths that would leave the cache directory through a symbolic link: entries are
``lstat``-ed (a link is never an entry) and their parent directory's real path must be inside
the cache root.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import itertools
import logging
import os
import stat
import weakref
from collections.abc import AsyncIterable, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cachedaemon.cache.classes import ReservationClass
from cachedaemon.cache.coherence import KeyTable
from cachedaemon.cache.coordinator import CacheCoordinator, CacheMetrics, TrimResult
from cachedaemon.cache.evictions import EvictionReason
from cachedaemon.cache.keys import checked_relpath, staging_name
from cachedaemon.cache.reservation import ReservationGuard
from cachedaemon.cache.staging import StagingFile
from cachedaemon.cache.walker import delete_entries
from cachedaemon.clock import SYSTEM_CLOCK, Clock, Deadline, deadline_after
from cachedaemon.config import CacheSettings
from cachedaemon.core.gate import Gate
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp
from cachedaemon.errors import InvalidArgument, InvalidKey, InvalidRange, IOFailure, ShardStopped

log = logging.getLogger("cachedaemon.cache")

T = TypeVar("T")

#: Ranges up to this size are read on the loop; larger ones in a worker thread.
INLINE_READ_BYTES = 64 * 1024
#: How long a shard other than 0 gathers access-time touches before posting them to shard 0
#: in one message (a hot key touched a thousand times meanwhile is one entry). Stats and admin
#: trims flush every shard's touches first; automatic trims may see them this much late.
TOUCH_BATCH_S = 0.05
#: While the miss-ratio curve is on, a shard other than 0 sends every read (not one touch per
#: key) to shard 0, where the curve samples them; a batch goes early once it holds this many.
READS_BATCH_MAX = 4096


class CacheStatus(enum.Enum):
    available = "available"
    in_progress = "in_progress"
    not_available = "not_available"


@dataclass(frozen=True)
class CacheEntry:
    """A hit: the entry's file and its size. The file may be trimmed later: open it soon and
    treat ``FileNotFoundError`` as a miss."""

    path: Path
    size: int


@dataclass(frozen=True)
class CacheStats:
    bytes_used: int
    objects: int
    bytes_reserved: int
    objects_reserved: int
    max_bytes: int
    max_objects: int
    hits: int
    misses: int
    trims: int
    shards: int
    bytes_pending: int = 0
    objects_pending: int = 0
    free_disk_bytes: int = 0
    #: Bytes committed and reserved over ``max_bytes`` (over-commit, see ``may_exceed``).
    bytes_over_limit: int = 0
    overcommits: int = 0
    bytes_overcommitted: int = 0
    #: 1 while new reservations wait for the disk (below ``min_free_bytes``, or ENOSPC).
    puts_blocked: int = 0
    min_free_bytes: int = 0
    #: 1 from a start from the index until the background walk has checked it.
    reconciling: int = 0
    metrics: CacheMetrics | None = None

    def as_api(self) -> dict[str, int]:
        """The ``GET /v1/cache`` body."""
        return {
            "bytes_used": self.bytes_used,
            "objects": self.objects,
            "bytes_reserved": self.bytes_reserved,
            "objects_reserved": self.objects_reserved,
            "max_bytes": self.max_bytes,
            "max_objects": self.max_objects,
            "hits": self.hits,
            "misses": self.misses,
            "trims": self.trims,
            "shards": self.shards,
        }


def _default_settings() -> CacheSettings:
    from cachedaemon.config import load_settings

    return load_settings(env={}).cache


class CacheService:
    """One shard's cache front end. See the module docstring."""

    def __init__(
        self,
        shard: int,
        settings: CacheSettings,
        cache_dir: Path | str,
        *,
        sharded: Sharded[CacheService] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        fsync_commits: bool = True,
    ) -> None:
        self.shard = shard
        self.settings = settings
        self.root = Path(cache_dir).absolute()
        self.clock = clock
        self.fsync_commits = fsync_commits
        self._sharded = sharded
        self._gate = Gate(f"cache-shard-{shard}")
        self._counter = itertools.count(1)
        self._in_progress: dict[str, int] = {}
        self._root_real = ""
        self._root_prefix = str(self.root) + os.sep
        self._coordinator: CacheCoordinator | None = None
        self._key_table: KeyTable | None = None
        self._touches: dict[str, float] = {}
        self._touch_scheduled = False
        # With the curve on (cache.mrc_sample_rate > 0): every read, in order, for shard 0:
        # (path, -1) a hit, (path, size) a miss. Replaces ``_touches`` then.
        self._mrc_on = settings.mrc_sample_rate > 0
        self._reads: list[tuple[str, int]] = []
        # Live staging files by entry path, for explain; weak: a file dropped without close()
        # is still collected (its finalizer releases what it holds).
        self._staging: dict[str, weakref.WeakSet[StagingFile]] = {}
        self._started = False
        self._coordinator_ready = asyncio.Event()  # shard 0: the coordinator has recovered
        self._background: set[asyncio.Future[Any]] = set()
        self._max_bytes = 0  # the cache's byte limit, as shard 0 last said
        self.hits = 0
        self.misses = 0

    # --- construction ----------------------------------------------------------------------

    @classmethod
    async def open_single(
        cls,
        cache_dir: Path | str,
        settings: CacheSettings | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        fsync_commits: bool = True,
    ) -> CacheService:
        """A started single-shard cache on the current loop (tests, embedded use)."""
        service = cls(0, settings or _default_settings(), cache_dir, clock=clock,
                      fsync_commits=fsync_commits)
        await service.start()
        return service

    async def start(self) -> None:
        """Shard 0: start the coordinator (recovery). Other shards: learn the limits from
        shard 0 (waiting for its recovery). Idempotent."""
        if self._started:
            return
        if self.shard == 0:
            coordinator = CacheCoordinator(self.root, self.settings, self.clock)
            await coordinator.start()
            self._coordinator = coordinator
            self._key_table = KeyTable(self.root, coordinator.forget)
            self._max_bytes = coordinator.max_bytes
            self._coordinator_ready.set()
        else:
            assert self._sharded is not None
            self._max_bytes = int(await self._sharded.invoke_on(0, CacheService._coord_limits))
        self._root_real = os.path.realpath(self.root)
        self._root_prefix = str(self.root) + os.sep
        self._started = True

    async def stop(self) -> None:
        """Fail queued reservations (the whole cache is stopping), close the gate (waiting for
        operations and staging files); shard 0 then stops the coordinator and writes the
        index out."""
        if self._started and self._coordinator is not None:
            self._coordinator.begin_stop()
        await self._gate.close()
        self._flush_touches()
        if self._coordinator is not None:
            await self._coordinator.stop()

    @property
    def coordinator(self) -> CacheCoordinator:
        """The coordinator: shard 0 only (other shards send messages, see the module doc)."""
        if self._coordinator is None:
            raise RuntimeError("the cache coordinator runs on shard 0 only"
                               if self.shard else "the cache is not started")
        return self._coordinator

    @property
    def metrics(self) -> CacheMetrics:
        return self.coordinator.metrics

    @property
    def key_table(self) -> KeyTable:
        """Shard 0's per-key table. Touch it only on shard 0."""
        if self._key_table is None:
            raise RuntimeError("the key table lives on shard 0's cache service")
        return self._key_table

    def key_table_size(self) -> int:
        """Keys with operations registered (shard 0; tests and metrics)."""
        return len(self.key_table)

    @property
    def max_object_bytes(self) -> int:
        """The largest entry a writer may stage (``max_object_bytes``, else the byte limit)."""
        if self.settings.max_object_bytes is not None:
            return self.settings.max_object_bytes
        if self.settings.max_bytes is not None:
            return self.settings.max_bytes
        return self._max_bytes  # from shard 0 at start

    async def object_limit(self) -> int:
        """The largest object a PUT may store: ``max_object_bytes``, at most the byte limit."""
        limit = self.settings.max_object_bytes
        cache_max = self._max_bytes or (self.settings.max_bytes or 0)
        return cache_max if limit is None else min(limit, cache_max)

    def default_deadline(self) -> Deadline:
        return deadline_after(self.settings.reserve_deadline, self.clock)

    @property
    def _on_coordinator(self) -> bool:
        return self.shard == 0 or self._sharded is None

    # --- paths -----------------------------------------------------------------------------

    def _resolve(self, key: str) -> tuple[str, Path]:
        rel = checked_relpath(key)
        return rel, self.root / rel

    def _contained(self, path: Path) -> bool:
        """True if ``path``'s parent really is inside the cache root (no symlinked dirs)."""
        parent = os.path.realpath(path.parent)
        return parent == self._root_real or parent.startswith(self._root_real + os.sep)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, key: str) -> CacheEntry | None:
        """The entry of ``key`` (a hit, counted and touched), or ``None`` (a miss)."""
        rel, path = self._resolve(key)
        with self._gate.hold():
            st = self._lstat_entry(rel, path)
            if st is None:
                self.misses += 1
                return None
            self.hits += 1
            self._touch(rel)
            return CacheEntry(path, st.st_size)

    def open_entry(self, key: str, *, count: bool = True) -> int | None:
        """A read-only descriptor of ``key``'s entry (a hit: counted and touched unless
        ``count`` is false), or ``None`` (a miss). The caller closes it.

        The hit path's one system call: ``open`` with ``O_NOFOLLOW`` (the entry is never a
        link) and ``O_NONBLOCK`` (a planted FIFO cannot block the loop); a nested key's
        descriptor is checked to be inside the cache root through ``/proc/self/fd`` (one
        ``readlink``, not a walk). The descriptor may be of something other than a regular
        file if the cache directory was tampered with: reading it then fails, and callers
        treat that as a miss."""
        rel = checked_relpath(key)
        with self._gate.hold():
            try:
                fd = os.open(self._root_prefix + rel, _OPEN_ENTRY)
            except (FileNotFoundError, NotADirectoryError):
                if count:
                    self.misses += 1
                return None
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise IOFailure(f"cannot open cache entry {rel}: {exc}") from exc
                log.warning("cache: ignoring symbolic link %s in the cache directory", rel)
                if count:
                    self.misses += 1
                return None
            if "/" in rel and not self._fd_contained(fd, rel):
                os.close(fd)
                log.warning("cache: %s resolves outside the cache directory; ignored", rel)
                if count:
                    self.misses += 1
                return None
            if count:
                self.hits += 1
                self._touch(rel)
            return fd

    def _fd_contained(self, fd: int, rel: str) -> bool:
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the portable (slower) check of the parent's real path
            return self._contained(self.root / rel)
        return real.startswith(self._root_real + os.sep)

    def peek(self, key: str) -> CacheEntry | None:
        """Like :meth:`get`, but neither counted as a hit or miss nor touched (for HEAD)."""
        rel, path = self._resolve(key)
        with self._gate.hold():
            st = self._lstat_entry(rel, path)
            return None if st is None else CacheEntry(path, st.st_size)

    def _lstat_entry(self, rel: str, path: Path) -> os.stat_result | None:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise IOFailure(f"cannot stat cache entry {path}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISLNK(st.st_mode):
                log.warning("cache: ignoring symbolic link %s in the cache directory", path)
            return None
        if "/" in rel and not self._contained(path):
            log.warning("cache: %s resolves outside the cache directory; ignored", path)
            return None
        return st

    async def get_range(self, key: str, first: int, last: int) -> bytes | None:
        """Bytes ``first..last`` (inclusive; ``last`` is clipped to the end) of ``key``'s entry,
        or ``None`` on a miss. :class:`InvalidRange` if ``first`` is past the end."""
        if first < 0 or last < first:
            raise InvalidArgument(f"bad byte range {first}-{last}")
        entry = await self.get(key)
        if entry is None:
            return None
        with self._gate.hold():
            if first >= entry.size:
                raise InvalidRange(f"range {first}-{last} of {entry.size} bytes", entry.size)
            n = min(last, entry.size - 1) - first + 1
            try:
                if n <= INLINE_READ_BYTES:
                    return _read_range(entry.path, first, n)
                return await asyncio.to_thread(_read_range, entry.path, first, n)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise IOFailure(f"cannot read cache entry {entry.path}: {exc}") from exc

    def is_cached(self, key: str) -> CacheStatus:
        rel, path = self._resolve(key)
        with self._gate.hold():
            if rel in self._in_progress:
                return CacheStatus.in_progress
            if self._lstat_entry(rel, path) is not None:
                return CacheStatus.available
            return CacheStatus.not_available

    def _touch(self, rel: str) -> None:
        if self._on_coordinator:
            self.coordinator.hit(rel)
            return
        if self._mrc_on:
            reads = self._reads
            reads.append((rel, -1))
            if len(reads) >= READS_BATCH_MAX:
                self._flush_touches()
                return
        else:
            self._touches[rel] = self.clock.time()
        if not self._touch_scheduled:
            self._touch_scheduled = True
            asyncio.get_running_loop().call_later(TOUCH_BATCH_S, self._flush_touches)

    def note_miss(self, key: str, size: int) -> None:
        """A read of ``key`` missed and its object is ``size`` bytes: a reference for the
        miss-ratio curve (shard 0 samples it; in order with this shard's hits)."""
        if not self._mrc_on:
            return
        rel = checked_relpath(key)
        if self._on_coordinator:
            self.coordinator.miss(rel, size)
            return
        self._reads.append((rel, size))
        if not self._touch_scheduled:
            self._touch_scheduled = True
            asyncio.get_running_loop().call_later(TOUCH_BATCH_S, self._flush_touches)

    def _flush_touches(self) -> None:
        self._touch_scheduled = False
        if self._reads:
            reads, self._reads = self._reads, []
            self._post(CacheService._coord_reads, reads)
        if not self._touches:
            return
        batch, self._touches = list(self._touches.items()), {}
        self._post(CacheService._coord_touch, batch)

    def _post(self, method: Any, *args: Any) -> None:
        """Run a ``_coord_*`` method on shard 0: now if this is shard 0, else by message."""
        if self._on_coordinator:
            method(self, *args)
            return
        assert self._sharded is not None
        try:
            self._sharded.post(0, method, *args)
        except ShardStopped:
            pass  # shard 0 is gone: the daemon is going down

    # --- reservations ----------------------------------------------------------------------

    async def reserve_space(
        self, nbytes: int, nobjects: int, deadline: Deadline | None = None, *,
        klass: ReservationClass | str = ReservationClass.write, owner: str = "",
    ) -> ReservationGuard:
        """Reserve cache space, waiting (trimming) until ``deadline`` (default: the configured
        ``reserve_deadline`` from now); past it, :class:`~cachedaemon.errors.CacheFull`.
        ``klass`` (``read``, ``write``, ``metastore``, ``prefetch``: who goes first when the
        cache is full, :mod:`cachedaemon.cache.classes`) and ``owner`` (the route and key, or
        the domain and SST) are what ``GET /v1/cache/reservations`` shows."""
        cls = ReservationClass.parse(klass)
        if deadline is None:
            deadline = self.default_deadline()
        with self._gate.hold():
            if self._on_coordinator:
                return await self.coordinator.reserve(nbytes, nobjects, deadline, "", cls,
                                                      owner)
            assert self._sharded is not None
            rid = int(await self._sharded.invoke_on(
                0, CacheService._coord_reserve, nbytes, nobjects, deadline, self.shard,
                int(cls), owner))
            return ReservationGuard(rid, nbytes, nobjects, self)

    # ReservationSink: what this shard's guards send to the coordinator.
    def release_reservation(self, rid: int, wrote_b: int, wrote_o: int) -> None:
        self._post(CacheService._coord_release, rid, wrote_b, wrote_o)

    def merge_reservations(self, into: int, frm: int) -> None:
        self._post(CacheService._coord_merge, into, frm)

    def note_disk_full(self) -> None:
        """A write hit ENOSPC: have shard 0 re-read free space and trim in the background."""
        self._post(CacheService._coord_disk_full)

    def account_commit(self, rel: str, size: int, rid: int) -> None:
        """A staging file landed at ``rel``: post the accounting to shard 0."""
        self._post(CacheService._coord_commit, rel, size, rid)

    def release_shard(self, shard: int) -> None:
        """Shard 0: ``shard`` died; release what it held: its reservations and staging files,
        and its tickets in the key table (their keys' copies go: those writes' outcomes are
        unknown)."""
        self.coordinator.release_shard(shard)
        if self._key_table is not None:
            task = asyncio.ensure_future(self._key_table.abandon_shard(shard))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- writes ----------------------------------------------------------------------------

    async def create_staging_file(
        self,
        key: str,
        deadline: Deadline | None = None,
        initial_bytes: int | None = None,
        *,
        guard: ReservationGuard | None = None,
        klass: ReservationClass | str = ReservationClass.write,
        owner: str = "",
    ) -> StagingFile:
        """A new in-flight file for ``key`` holding a reservation of ``initial_bytes``
        (default ``staging_initial_bytes``) and one object, plus ``guard`` if given (it is
        merged in and left empty). Its reservations (and the top-ups as it grows) are of
        class ``klass``, owned by ``owner`` (see :meth:`reserve_space`)."""
        cls = ReservationClass.parse(klass)
        owner = owner or f"staging {key}"
        rel, dest = self._resolve(key)
        holder = self._gate.hold()
        reservation: ReservationGuard | None = None
        try:
            initial = self.settings.staging_initial_bytes if initial_bytes is None else initial_bytes
            initial = min(initial, self.max_object_bytes)  # never more than an object can take
            if guard is not None:
                # The caller reserved already: top up only the object if it lacks one.
                reservation = await self.reserve_space(0, 0 if guard.objects else 1, deadline,
                                                       klass=cls, owner=owner)
                reservation.merge(guard)
            else:
                reservation = await self.reserve_space(initial, 1, deadline, klass=cls,
                                                       owner=owner)
            path, fd = await self._create_part(rel, dest)
            if reservation.rid:
                self._post(CacheService._coord_note_part, reservation.rid,
                           str(path.relative_to(self.root)))
        except BaseException:
            if reservation is not None:
                reservation.close()
            holder.release()
            raise
        self._in_progress[rel] = self._in_progress.get(rel, 0) + 1
        staging = StagingFile(self, key, rel, path, dest, fd, reservation, holder,
                              self._staging_done, klass=cls, owner=owner)
        self._staging.setdefault(rel, weakref.WeakSet()).add(staging)
        return staging

    def _staging_done(self, staging: StagingFile) -> None:
        live = self._staging.get(staging.relpath)
        if live is not None:
            live.discard(staging)
            if not live:
                del self._staging[staging.relpath]
        n = self._in_progress.get(staging.relpath, 0) - 1
        if n > 0:
            self._in_progress[staging.relpath] = n
        else:
            self._in_progress.pop(staging.relpath, None)
        self._stage_end(_part_relpath(staging.relpath, staging.path.name))

    async def _create_part(self, rel: str, dest: Path) -> tuple[Path, int]:
        """Create the ``.part`` file exclusively beside ``dest`` (mkdir -p, containment check,
        retries if the parent vanished or the name is taken). Each name is announced to shard
        0 first (the index journals it before the file exists: a restart finds leftovers
        without walking the tree), and its end announced if the file is not made."""
        for _ in range(16):
            name = staging_name(rel, self.shard, next(self._counter))
            part = _part_relpath(rel, name)
            await self._stage_begin(part)
            try:
                made = self._open_part(rel, dest, name)
            except BaseException:
                self._stage_end(part)
                raise
            if made is not None:
                return made
            self._stage_end(part)
        raise IOFailure(f"cannot create a staging file beside {dest}")

    def _open_part(self, rel: str, dest: Path, name: str) -> tuple[Path, int] | None:
        """One attempt of :meth:`_create_part`; ``None`` to try another name."""
        parent = dest.parent
        path = parent / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if parent != self.root:
                parent.mkdir(parents=True, exist_ok=True)
                if not self._contained(dest):
                    raise InvalidKey(f"key path {rel!r} leads outside the cache directory")
            return path, os.open(path, flags, 0o644)
        except (FileExistsError, FileNotFoundError, NotADirectoryError) as exc:
            # The name is taken (another process?), or a trim removed an empty parent meanwhile
            # (also between mkdir's own steps, which then raises FileExistsError): try again,
            # unless a file or a link stands where a directory of the key's path must be.
            if self._blocked(parent):
                raise InvalidKey(
                    f"key path {rel!r} is blocked by a non-directory in the cache"
                ) from exc
            return None
        except OSError as exc:
            raise IOFailure(f"cannot create staging file {path}: {exc}") from exc

    def _blocked(self, parent: Path) -> bool:
        """Whether a non-directory (a file, a link) stands at ``parent`` or one of its
        ancestors below the root."""
        path = self.root
        for part in parent.relative_to(self.root).parts:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return False  # nothing further down exists either
            except NotADirectoryError:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return True
        return False

    async def _stage_begin(self, part: str) -> None:
        if self._on_coordinator:
            await self.coordinator.stage_begin(part, self.shard)
            return
        assert self._sharded is not None
        begin: Any = CacheService._coord_stage_begin
        await self._sharded.invoke_on(0, begin, part, self.shard)

    def _stage_end(self, part: str) -> None:
        self._post(CacheService._coord_stage_end, part)

    async def put(
        self,
        key: str,
        data: bytes | bytearray | memoryview | AsyncIterable[bytes],
        guard: ReservationGuard,
        deadline: Deadline | None = None,
        *,
        klass: ReservationClass | str = ReservationClass.write,
        owner: str = "",
    ) -> int:
        """Store ``data`` as ``key``'s entry (replacing any previous one) and return its size.
        ``guard`` (from ``reserve_space``) is taken over; if the data outgrows it, more is
        reserved (until ``deadline``, of class ``klass`` for ``owner``). Nothing is left
        behind on failure."""
        staging = await self.create_staging_file(key, deadline, 0, guard=guard, klass=klass,
                                                 owner=owner)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                await staging.append(data, deadline)
            else:
                async for chunk in data:
                    await staging.append(chunk, deadline)
            return await staging.commit(replace=True)
        except BaseException:
            await staging.close()
            raise

    async def invalidate(self, key: str) -> None:
        """Drop ``key``'s local copy, if any."""
        rel, path = self._resolve(key)
        with self._gate.hold():
            if "/" in rel and not self._contained(path):
                raise InvalidKey(f"key path {rel!r} leads outside the cache directory")
            await asyncio.to_thread(delete_entries, self.root, [rel])
            self._post(CacheService._coord_forget, rel, EvictionReason.deleted.value)

    # --- per-key ordering of object writes and fills (docs/cache.md) ------------------------

    async def register(self, key: str, *, write: bool,
                       why: EvictionReason = EvictionReason.replaced) -> tuple[int, bool]:
        """Register a write (object PUT/DELETE) or a fill of ``key`` with shard 0 before it
        touches the bucket. Returns ``(ticket, overlapped)``: ``overlapped`` means a write of
        the key is in flight, so a fill could never publish. Every ticket must be finished
        (:meth:`finish`, or :meth:`StagingFile.publish`), also on failure. ``why``: what the
        eviction log says if this write removes the key's copy (a DELETE says ``deleted``)."""
        checked_relpath(key)
        with self._gate.hold():
            if self._on_coordinator:
                return self.key_table.register(key, self.shard, write, why)
            assert self._sharded is not None
            call: Awaitable[tuple[int, bool]] = self._sharded.invoke_on(
                0, CacheService._register_here, key, self.shard, write, why.value)
            task = asyncio.ensure_future(call)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                # A ticket granted as we were cancelled must not be left registered.
                with contextlib.suppress(BaseException):
                    ticket, _ = await task
                    await self.finish(ticket, remove=write)
                raise

    def _register_here(self, key: str, shard: int, write: bool, why: str = "replaced"
                       ) -> tuple[int, bool]:
        return self.key_table.register(key, shard, write, EvictionReason(why))

    async def register_fill(self, key: str) -> tuple[int, bool, bool]:
        """Register a cache fill of ``key`` with shard 0 (see :meth:`register`), one download
        for the whole daemon: when another shard (or task) is filling the key already, this
        returns only after that fill has finished, with ``followed`` True: look in the cache
        before downloading again. Returns ``(ticket, overlapped, followed)``."""
        checked_relpath(key)
        with self._gate.hold():
            if self._on_coordinator:
                call: Awaitable[Any] = self.key_table.register_fill(key, self.shard)
            else:
                assert self._sharded is not None
                call = self._sharded.invoke_on(0, CacheService._register_fill_here, key,
                                               self.shard)
            task = asyncio.ensure_future(call)
            try:
                ticket, overlapped, followed = await asyncio.shield(task)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    ticket, _, _ = await task
                    await self.finish(ticket)
                raise
            return int(ticket), bool(overlapped), bool(followed)

    async def _register_fill_here(self, key: str, shard: int) -> tuple[int, bool, bool]:
        return await self.key_table.register_fill(key, shard)

    async def finish(self, ticket: int, *, part: Path | None = None, replace: bool = False,
                     remove: bool = False) -> bool:
        """Finish ``ticket`` on shard 0 (see :meth:`KeyTable.finish`): publish ``part`` if the
        operation was not overlapped, else remove the key's copy when ``remove``. True if
        ``part`` is now the entry. Runs to its end even if the caller is cancelled (the
        cancellation is raised afterwards)."""
        path = None if part is None else str(part)
        if self._on_coordinator:
            call = self.key_table.finish(ticket, path, replace, remove)
        else:
            assert self._sharded is not None
            call = self._sharded.invoke_on(0, CacheService._finish_here, ticket, path, replace,
                                           remove)
        return await complete(call)

    async def _finish_here(self, ticket: int, part: str | None, replace: bool, remove: bool
                           ) -> bool:
        return await self.key_table.finish(ticket, part, replace, remove)

    async def drop(self, key: str) -> None:
        """Drop ``key``'s local copy as a write of the key: no fill or PUT in flight may put
        a copy back afterwards (``DELETE /v1/cache/objects/{key}``)."""
        checked_relpath(key)
        with self._gate.hold():
            if self._on_coordinator:
                await complete(self.key_table.drop(key, self.shard))
                return
            assert self._sharded is not None
            call: Awaitable[None] = self._sharded.invoke_on(0, CacheService._drop_here, key,
                                                            self.shard)
            await complete(call)

    async def _drop_here(self, key: str, shard: int) -> None:
        await self.key_table.drop(key, shard)

    # --- administration --------------------------------------------------------------------

    async def trim(self) -> TrimResult:
        """Trim now, unthrottled, to the low watermark (admin), after every shard's touches
        so far have reached shard 0."""
        with self._gate.hold():
            if self._sharded is not None:
                await self._sharded.invoke_on_all(CacheService._hit_counts)
            if self._on_coordinator:
                return await self.coordinator.trim()
            assert self._sharded is not None
            result: TrimResult = await self._sharded.invoke_on(
                0, CacheService._coord_trim, result_type=TrimResult)
            return result

    async def apply_settings(self, settings: CacheSettings) -> None:
        """Take reloaded settings on this shard (staging sizes, deadlines, the object limit);
        shard 0's coordinator also applies the new limits, and the other shards then learn the
        byte limit from it. Each shard is told by the daemon (plain data), shard 0 first."""
        self.settings = settings
        self._mrc_on = settings.mrc_sample_rate > 0
        if self._coordinator is not None:
            await self._coordinator.apply_settings(settings)
            self._max_bytes = self._coordinator.max_bytes
        elif self._sharded is not None:
            self._max_bytes = int(await self._sharded.invoke_on(0, CacheService._coord_limits))

    async def save_tracker(self) -> None:
        """Write the cache index out now (the access order, a snapshot if due, the journal
        synced; on shard 0). The name is the access-time tracker's, which the index replaced."""
        if self._on_coordinator:
            await self.coordinator.save_tracker()
        else:
            assert self._sharded is not None
            await self._sharded.invoke_on(0, CacheService._coord_save_tracker)

    async def stats(self) -> CacheStats:
        """Usage and counters; hits and misses summed over all shards. Every shard first
        sends a call to shard 0 behind its posts, so the figures include every release, commit
        and touch any shard made before this call began."""
        with self._gate.hold():
            self._flush_touches()
            if self._sharded is None:
                hits, misses, shards = self.hits, self.misses, 1
            else:
                counts = await self._sharded.invoke_on_all(CacheService._hit_counts)
                hits = sum(h for h, _ in counts)
                misses = sum(m for _, m in counts)
                shards = self._sharded.count
            if self._on_coordinator:
                state, metrics = self._coord_state()
            else:
                assert self._sharded is not None
                state, metrics = await self._sharded.invoke_on(
                    0, CacheService._coord_state,
                    result_type=tuple[dict[str, int], CacheMetrics])
            return CacheStats(
                bytes_used=state["bytes_used"],
                objects=state["objects"],
                bytes_reserved=state["bytes_reserved"],
                objects_reserved=state["objects_reserved"],
                max_bytes=state["max_bytes"],
                max_objects=state["max_objects"],
                hits=hits,
                misses=misses,
                trims=metrics.trims,
                shards=shards,
                bytes_pending=state["bytes_pending"],
                objects_pending=state["objects_pending"],
                free_disk_bytes=state["free_disk_bytes"],
                bytes_over_limit=state["bytes_over_limit"],
                overcommits=metrics.overcommits,
                bytes_overcommitted=metrics.bytes_overcommitted,
                puts_blocked=state["puts_blocked"],
                min_free_bytes=state["min_free_bytes"],
                reconciling=state["reconciling"],
                metrics=metrics,
            )

    # --- seeing into the cache (issue 18) ----------------------------------------------------

    async def _on_zero(self, method: Any, *args: Any) -> Any:
        """``method`` (a ``_coord_*`` of plain data) run on shard 0, after every shard's
        reads and touches so far have reached it (as :meth:`stats`)."""
        self._flush_touches()
        if self._sharded is not None:
            await self._sharded.invoke_on_all(CacheService._hit_counts)
        if self._on_coordinator:
            return method(self, *args)
        assert self._sharded is not None
        return await self._sharded.invoke_on(0, method, *args)

    async def explain(self, key: str) -> dict[str, Any]:
        """Why ``key`` is or is not in the cache: ``cached`` (size, last access, LRU place),
        ``in_progress`` (every shard's staging files for it: shard, since, bytes, class,
        owner), ``evicted`` (the latest eviction record kept: when, why, size) and ``state``,
        one of ``cached``, ``in_progress``, ``absent``."""
        rel = checked_relpath(key)
        with self._gate.hold():
            if self._sharded is not None:
                per_shard = await self._sharded.invoke_on_all(CacheService._staging_of, rel)
                jobs = [j for shard_jobs in per_shard for j in shard_jobs]
            else:
                jobs = self._staging_of(rel)
            known: dict[str, Any] = await self._on_zero(CacheService._coord_explain, rel)
        cached = known["cached"]
        state = "cached" if cached is not None else "in_progress" if jobs else "absent"
        return {"key": key, "path": rel, "state": state, "cached": cached,
                "in_progress": jobs, "evicted": known["evicted"],
                "log_since": known["log_since"], "log_entries": known["log_entries"]}

    def _staging_of(self, rel: str) -> list[dict[str, Any]]:
        now = self.clock.monotonic()
        wall = self.clock.time()
        return [{"shard": self.shard, "since": wall - (now - f.since), "bytes": f.written,
                 "class": f.klass.name, "owner": f.owner}
                for f in list(self._staging.get(rel, ()))]

    async def reservations(self) -> dict[str, Any]:
        """``GET /v1/cache/reservations``: every live reservation (id, shard, class, bytes,
        objects, age, owner, stale) and every queued request (with its deadline)."""
        with self._gate.hold():
            out: dict[str, Any] = await self._on_zero(CacheService._coord_reservations)
            return out

    async def mrc(self) -> dict[str, Any]:
        """``GET /v1/cache/mrc``: the miss-ratio curve, as hit ratios at sizes from an eighth
        of the byte limit to four times (``enabled`` false, and no points, when it is off)."""
        with self._gate.hold():
            out: dict[str, Any] = await self._on_zero(CacheService._coord_mrc)
            return out

    async def hot_entries(self, limit: int) -> list[tuple[str, int]]:
        """At most ``limit`` entries ``(path, size)``, most recently used first (the hot set
        a node publishes)."""
        with self._gate.hold():
            out: list[tuple[str, int]] = await self._on_zero(CacheService._coord_hot, limit)
            return [(str(p), int(n)) for p, n in out]

    def _coord_explain(self, rel: str) -> dict[str, Any]:
        return self.coordinator.explain_entry(rel)

    def _coord_reservations(self) -> dict[str, Any]:
        return self.coordinator.reservations_listing()

    def _coord_hot(self, limit: int) -> list[tuple[str, int]]:
        return self.coordinator.hot_entries(limit)

    def _coord_mrc(self) -> dict[str, Any]:
        c = self.coordinator
        c.check_stale()
        snap = c.mrc_snapshot()
        base: dict[str, Any] = {"enabled": snap is not None, "max_bytes": c.max_bytes,
                                "evictions": {r.value: n for r, n in c.evictions.counts.items()},
                                "stale_reservations": c.stale_reservations}
        if snap is None:
            return {**base, "sizes": [], "hit_ratios": [], "sample_rate": 0.0,
                    "reference_bytes": 0, "samples": 0, "sampled_keys": 0, "reads": 0,
                    "bytes_read": 0}
        return {**base, "sizes": list(snap.sizes), "hit_ratios": list(snap.hit_ratios),
                "sample_rate": snap.sample_rate, "reference_bytes": snap.reference_bytes,
                "samples": snap.samples, "sampled_keys": snap.sampled_keys,
                "reads": snap.references + (c.mrc.calibration_references if c.mrc else 0),
                "calibrating": snap.reference_bytes == 0,
                "bytes_read": snap.bytes_requested}

    async def _hit_counts(self) -> tuple[int, int]:
        """This shard's hits and misses, once its posts to shard 0 have landed there."""
        self._flush_touches()
        if not self._on_coordinator:
            assert self._sharded is not None
            await self._sharded.invoke_on(0, CacheService._coord_sync)
        return self.hits, self.misses

    def _coord_sync(self) -> None:
        """Nothing: a call that arrives after the caller's earlier posts (see ``stats``)."""

    # --- the coordinator's message surface (shard 0; called or posted by other shards) -------

    async def _coord_limits(self) -> int:
        await self._coordinator_ready.wait()
        return self.coordinator.max_bytes

    async def _coord_reserve(self, nbytes: int, nobjects: int, deadline: Deadline,
                             shard: int, klass: int = int(ReservationClass.write),
                             owner: str = "") -> int:
        await self._coordinator_ready.wait()
        with self._gate.hold():
            return await self.coordinator.reserve_id(nbytes, nobjects, deadline,
                                                      f" from shard {shard}", shard, klass,
                                                      owner)

    def _coord_release(self, rid: int, wrote_b: int, wrote_o: int) -> None:
        self.coordinator.release_reservation(rid, wrote_b, wrote_o)

    def _coord_note_part(self, rid: int, part: str) -> None:
        self.coordinator.note_part(rid, part)

    async def _coord_stage_begin(self, part: str, shard: int) -> None:
        await self._coordinator_ready.wait()
        await self.coordinator.stage_begin(part, shard)

    def _coord_stage_end(self, part: str) -> None:
        self.coordinator.stage_end(part)

    def _coord_merge(self, into: int, frm: int) -> None:
        self.coordinator.merge_reservations(into, frm)

    def _coord_commit(self, rel: str, size: int, rid: int) -> None:
        self.coordinator.commit_entry(rel, size, rid)

    def _coord_forget(self, rel: str, reason: str = "deleted") -> None:
        self.coordinator.forget(rel, EvictionReason(reason))

    def _coord_touch(self, items: list[tuple[str, float]]) -> None:
        self.coordinator.touch_batch(items)

    def _coord_reads(self, reads: list[tuple[str, int]]) -> None:
        self.coordinator.reads(reads)

    def _coord_disk_full(self) -> None:
        self.coordinator.on_disk_full()

    async def _coord_trim(self) -> TrimResult:
        with self._gate.hold():
            return await self.coordinator.trim()

    async def _coord_save_tracker(self) -> None:
        await self.coordinator.save_tracker()

    def _coord_state(self) -> tuple[dict[str, int], CacheMetrics]:
        c = self.coordinator
        return c.state(), CacheMetrics(**c.metrics.as_dict())  # type: ignore[arg-type]


def _part_relpath(rel: str, name: str) -> str:
    """The path, relative to the cache root, of staging file ``name`` beside entry ``rel``."""
    head, sep, _ = rel.rpartition("/")
    return f"{head}/{name}" if sep else name


async def complete(call: Awaitable[T]) -> T:
    """Await ``call`` to its end even if the caller is cancelled meanwhile; then re-raise the
    cancellation. For steps that must not be abandoned halfway (a finish on shard 0)."""
    task = asyncio.ensure_future(call)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
        except BaseException:
            break
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation wins
        raise asyncio.CancelledError()
    return task.result()


_OPEN_ENTRY = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_range(path: Path, first: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, first)
    finally:
        os.close(fd)


async def start_cache(
    smp: Smp,
    settings: CacheSettings,
    cache_dir: Path | str,
    clock: Clock = SYSTEM_CLOCK,
    **kwargs: Any,
) -> Sharded[CacheService]:
    """This shard's started :class:`CacheService` (shard 0's recovers; the others wait for it).
    ``kwargs`` go to the constructor (``fsync_commits``)."""
    sharded: Sharded[CacheService] = Sharded(smp, "cache")
    service = await sharded.start(
        lambda shard: CacheService(shard, settings, cache_dir, sharded=sharded, clock=clock,
                                   **kwargs)
    )
    await service.start()
    return sharded


async def stop_cache(cache: Sharded[CacheService]) -> None:
    """Stop this shard's service (shard 0's writes the cache index out)."""
    await cache.stop()
