"""Version and VersionSet: the live SSTs of a database and the manifest that records them
(LevelDB's ``Version``/``VersionSet``; Redpanda's full-snapshot manifest).

A :class:`Version` is an immutable list of files per level (L0 newest first; deeper levels
sorted by key and non-overlapping). Readers pin the version they started from
(:meth:`Version.ref`/:meth:`Version.unref`) so the file GC keeps its files.

The :class:`VersionSet` holds the current version plus the counters (``next_file_id``,
``last_seqno`` = the newest seqno persisted in SSTs, ``epoch``) and the per-level compaction
pointers. :meth:`VersionSet.log_and_apply` applies an edit to the *current* version, writes the
whole resulting state as a manifest through
:meth:`~cachedaemon.lsm.io.persistence.MetadataPersistence.write_manifest`, and installs the new
version only after that write succeeded. Manifest writes are serialised by a lock.

Owned by one database on its shard.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Iterator

from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import Corruption, IOFailure
from cachedaemon.lsm.io.persistence import FileHandle, MetadataPersistence
from cachedaemon.lsm.manifest import ManifestState, decode_manifest, encode_manifest
from cachedaemon.lsm.options import NUM_LEVELS, Options
from cachedaemon.lsm.version_edit import FileMeta, VersionEdit

FIRST_FILE_ID = 2


def _l0_order(f: FileMeta) -> tuple[int, int]:
    return (-f.newest_seqno, -f.handle.id)


def total_bytes(files: list[FileMeta]) -> int:
    return sum(f.size for f in files)


class Version:
    __slots__ = (
        "_largest_user",
        "_smallest_user",
        "compaction_level",
        "compaction_score",
        "levels",
        "num_files_total",
        "refs",
    )

    def __init__(self, levels: list[list[FileMeta]], options: Options) -> None:
        self.levels = levels
        self.num_files_total = sum(len(files) for files in levels)
        self.refs = 0
        self._largest_user = [[f.largest[:-8] for f in files] for files in levels]
        self._smallest_user = [[f.smallest[:-8] for f in files] for files in levels]
        best_level, best_score = -1, -1.0
        for level in range(NUM_LEVELS - 1):
            if level == 0:
                # Never let writers stall on L0 without a compaction being due.
                trigger = min(options.l0_compaction_trigger, options.l0_slowdown_writes_trigger)
                score = len(levels[0]) / max(1, trigger)
            else:
                score = total_bytes(levels[level]) / options.max_bytes_for_level(level)
            if score > best_score:
                best_level, best_score = level, score
        self.compaction_level = best_level
        self.compaction_score = best_score

    @classmethod
    def empty(cls, options: Options) -> Version:
        return cls([[] for _ in range(NUM_LEVELS)], options)

    def ref(self) -> None:
        self.refs += 1

    def unref(self) -> None:
        assert self.refs > 0
        self.refs -= 1

    def files(self) -> Iterator[FileMeta]:
        for files in self.levels:
            yield from files

    def num_files(self, level: int) -> int:
        return len(self.levels[level])

    def level_bytes(self, level: int) -> int:
        return total_bytes(self.levels[level])

    def files_for_get(self, uprefix: bytes) -> Iterator[tuple[int, FileMeta]]:
        """``(level, file)`` that may hold ``uprefix``'s user key, newest to oldest."""
        for f in self.levels[0]:
            if f.smallest[:-8] <= uprefix <= f.largest[:-8]:
                yield 0, f
        for level in range(1, NUM_LEVELS):
            files = self.levels[level]
            if not files:
                continue
            i = bisect.bisect_left(self._largest_user[level], uprefix)
            if i < len(files) and files[i].smallest[:-8] <= uprefix:
                yield level, files[i]

    def files_in_range(self, level: int, lo: bytes | None, hi: bytes | None) -> list[FileMeta]:
        """The files of sorted ``level`` (>= 1) holding user keys in ``[lo, hi)`` (user
        prefixes; ``None`` is unbounded), as one slice."""
        files = self.levels[level]
        i = 0 if lo is None else bisect.bisect_left(self._largest_user[level], lo)
        j = len(files) if hi is None else bisect.bisect_left(self._smallest_user[level], hi)
        return files if i == 0 and j == len(files) else files[i:j]

    def contains(self, level: int, handle: FileHandle) -> bool:
        return any(f.handle == handle for f in self.levels[level])

    def overlapping_inputs(
        self, level: int, begin: bytes | None, end: bytes | None
    ) -> list[FileMeta]:
        """Files of ``level`` whose user range meets ``[begin, end]`` (user parts; ``None``
        is unbounded). For L0 the range grows to cover every overlapping file, transitively."""
        result: list[FileMeta] = []
        files = self.levels[level]
        i = 0
        while i < len(files):
            f = files[i]
            i += 1
            lo, hi = f.smallest[:-8], f.largest[:-8]
            if (end is not None and lo > end) or (begin is not None and hi < begin):
                continue
            result.append(f)
            if level == 0:
                if begin is not None and lo < begin:
                    begin, result, i = lo, [], 0
                elif end is not None and hi > end:
                    end, result, i = hi, [], 0
        return result

    def overlap_in_level(self, level: int, lo: bytes, hi: bytes) -> bool:
        if level == 0:
            return any(not (f.largest[:-8] < lo or f.smallest[:-8] > hi) for f in self.levels[0])
        files = self.levels[level]
        i = bisect.bisect_left(self._largest_user[level], lo)
        return i < len(files) and files[i].smallest[:-8] <= hi

    def pick_level_for_memtable_output(self, lo: bytes, hi: bytes, options: Options) -> int:
        """LevelDB's PickLevelForMemTableOutput: push a flushed file below L0 while it
        overlaps nothing there and the grandparent overlap stays small."""
        level = 0
        if not self.overlap_in_level(0, lo, hi):
            limit = options.max_grandparent_overlap_bytes()
            while level < options.max_mem_compact_level:
                if self.overlap_in_level(level + 1, lo, hi):
                    break
                if level + 2 < NUM_LEVELS:
                    gp = self.overlapping_inputs(level + 2, lo, hi)
                    if total_bytes(gp) > limit:
                        break
                level += 1
        return level

    def apply(self, edit: VersionEdit, options: Options) -> Version:
        levels = [list(files) for files in self.levels]
        if edit.deleted:
            for level in range(NUM_LEVELS):
                levels[level] = [f for f in levels[level] if (level, f.handle) not in edit.deleted]
        for level, meta in edit.added:
            levels[level].append(meta)
        levels[0].sort(key=_l0_order)
        for level in range(1, NUM_LEVELS):
            levels[level].sort(key=lambda f: f.smallest)
            files = levels[level]
            for a, b in itertools.pairwise(files):
                if a.largest[:-8] >= b.smallest[:-8]:
                    raise AssertionError(
                        f"overlapping files in L{level}: {a.handle.name} and {b.handle.name}"
                    )
        return Version(levels, options)


class VersionSet:
    def __init__(self, options: Options, metadata: MetadataPersistence) -> None:
        self.options = options
        self._metadata = metadata
        self.epoch = options.epoch
        self.current = Version.empty(options)
        self.current.ref()
        self.next_file_id = FIRST_FILE_ID
        self.last_seqno = 0
        self.compact_pointers: list[bytes | None] = [None] * NUM_LEVELS
        self.manifest_epoch: int | None = None
        self._lock = asyncio.Lock()
        self._pinned: dict[int, Version] = {}
        #: Seek compaction: lookups left per file, and the file whose budget ran out.
        self._seeks_left: dict[FileHandle, int] = {}
        self.file_to_compact: tuple[int, FileMeta] | None = None

    def charge_seek(self, level: int, f: FileMeta) -> bool:
        """Count a lookup that consulted ``f`` in vain; ``True`` when ``f`` just became due
        for a seek compaction (after max(100, size / 16 KiB) such lookups, as LevelDB)."""
        if level >= NUM_LEVELS - 1 or self.options.readonly:
            return False
        left = self._seeks_left.get(f.handle)
        if left is None:
            left = max(100, f.size // (16 * 1024))
        left -= 1
        self._seeks_left[f.handle] = left
        if left <= 0 and self.file_to_compact is None:
            self.file_to_compact = (level, f)
            return True
        return False

    # --- versions pinned by readers --------------------------------------------------------

    def pin(self, version: Version) -> None:
        version.ref()
        self._pinned[id(version)] = version

    def unpin(self, version: Version) -> None:
        version.unref()
        if version.refs == 0:
            self._pinned.pop(id(version), None)

    def live_files(self) -> set[FileHandle]:
        live = {f.handle for f in self.current.files()}
        for v in self._pinned.values():
            live.update(f.handle for f in v.files())
        return live

    # --- counters --------------------------------------------------------------------------

    def new_file_id(self) -> int:
        fid = self.next_file_id
        self.next_file_id += 1
        return fid

    def _state(self, version: Version, last_seqno: int, pointers: list[bytes | None]) -> ManifestState:
        return ManifestState(self.epoch, self.next_file_id, last_seqno, pointers, version.levels)

    def _install(self, version: Version) -> None:
        if self.file_to_compact is not None and not version.contains(
            self.file_to_compact[0], self.file_to_compact[1].handle
        ):
            self.file_to_compact = None
        if len(self._seeks_left) > 4 * max(1, version.num_files_total):
            live = {f.handle for f in version.files()}
            self._seeks_left = {h: n for h, n in self._seeks_left.items() if h in live}
        old = self.current
        version.ref()
        self.current = version
        old.unref()
        if old.refs == 0:
            self._pinned.pop(id(old), None)

    # --- recovery and refresh ----------------------------------------------------------------

    async def recover(self) -> bool:
        """Load the newest manifest at or below our epoch. ``False`` if there is none."""
        found = await self._metadata.read_manifest(self.options.epoch)
        if found is None:
            return False
        epoch, data = found
        if epoch > self.options.epoch:
            raise Corruption(f"manifest of epoch {epoch} returned for epoch {self.options.epoch}")
        state = decode_manifest(data, f"manifest of epoch {epoch}")
        self._load(state, epoch)
        return True

    def _load(self, state: ManifestState, epoch: int) -> None:
        levels = (state.levels + [[] for _ in range(NUM_LEVELS)])[:NUM_LEVELS]
        pointers = (state.compact_pointers + [None] * NUM_LEVELS)[:NUM_LEVELS]
        version = Version.empty(self.options).apply(
            VersionEdit(added=[(lv, f) for lv, files in enumerate(levels) for f in files]),
            self.options,
        )
        self.next_file_id = max(self.next_file_id, state.next_file_id)
        self.last_seqno = state.last_seqno
        self.compact_pointers = pointers
        self.manifest_epoch = epoch
        if not self.options.readonly:
            # A writer continues the epoch sequence: never below what it read.
            self.epoch = max(self.options.epoch, epoch)
        self._install(version)

    async def refresh(self) -> bool:
        """Read-only: adopt the newest manifest. Rejects regressions; ``True`` if changed."""
        found = await self._metadata.read_manifest(self.options.epoch)
        if found is None:
            if self.manifest_epoch is not None:
                raise IOFailure("manifest disappeared during refresh")
            return False
        epoch, data = found
        state = decode_manifest(data, f"manifest of epoch {epoch}")
        if state.next_file_id < self.next_file_id or state.last_seqno < self.last_seqno:
            raise Corruption(
                f"manifest regressed: next_file_id {state.next_file_id} < {self.next_file_id} "
                f"or last_seqno {state.last_seqno} < {self.last_seqno}"
            )
        if self.manifest_epoch is not None and epoch < self.manifest_epoch:
            raise Corruption(f"manifest epoch regressed: {epoch} < {self.manifest_epoch}")
        unchanged = (
            epoch == self.manifest_epoch
            and state.next_file_id == self.next_file_id
            and state.last_seqno == self.last_seqno
            and state.levels == [files for files in self.current.levels]
        )
        if unchanged:
            return False
        self._load(state, epoch)
        return True

    # --- edits ---------------------------------------------------------------------------------

    async def log_and_apply(self, edit: VersionEdit) -> Version:
        """Apply ``edit`` to the current version, persist the full state, then install it."""
        async with self._lock:
            version = self.current.apply(edit, self.options)
            pointers = list(self.compact_pointers)
            for level, key in edit.compact_pointers.items():
                pointers[level] = key
            last_seqno = max(self.last_seqno, edit.last_seqno or 0)
            data = encode_manifest(self._state(version, last_seqno, pointers))
            await failpoint("lsm.manifest.write")
            await self._metadata.write_manifest(self.epoch, data)
            self.compact_pointers = pointers
            self.last_seqno = last_seqno
            self.manifest_epoch = self.epoch
            self._install(version)
            return version

    async def write_initial(self) -> None:
        """Persist the (empty or recovered) state under our epoch."""
        await self.log_and_apply(VersionEdit())
