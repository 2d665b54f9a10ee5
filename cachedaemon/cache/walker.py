"""Blocking directory work of the cache: the walk, batch deletes, removal of empty parents.

Everything here is synchronous and meant to run in a worker thread, **one thread job per walk
or per delete batch** (never one hop per file). Called by the coordinator (shard 0) for startup
recovery and trims, and by any shard's service for invalidation. No state; the results are
applied to the tracker and counters on shard 0's loop by the caller.

The walk is ``os.scandir``-based (one ``lstat`` per file, from the directory entry) and never
follows symbolic links: a link in the cache directory is neither an entry nor a directory to
descend into, so nothing outside the root is ever counted or deleted.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cachedaemon.cache.keys import INTERNAL_NAMES, PART_SUFFIX, key_relpath
from cachedaemon.core.failpoints import failpoint_sync

log = logging.getLogger("cachedaemon.cache")


#: Where a cache of layout 1 kept the metastore's SST copies (cache keys ``lsm/meta/domain/…``,
#: which are ordinary user keys now; the copies live under ``.cachedaemon/lsm/``).
LEGACY_SST_DIR = key_relpath("lsm/meta/domain/x").rsplit("/", 1)[0]


def drop_legacy_layout(root: Path) -> int:
    """Delete the layout-1 SST copies under ``root`` (:data:`LEGACY_SST_DIR`), never following
    a link. Returns the number of files deleted. Blocking: run in a thread, before the walk."""
    top = root / LEGACY_SST_DIR
    try:
        st = os.lstat(top)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return 0
    files = sum(len(names) for _, _, names in os.walk(top))
    shutil.rmtree(top, ignore_errors=True)
    for parent in (top.parent, top.parent.parent):  # lsm%d/meta%d, lsm%d, if now empty
        try:
            os.rmdir(parent)
        except OSError:
            break
    return files


@dataclass
class WalkResult:
    """What a walk found. ``files`` holds committed entries: (relpath, atime, size)."""

    files: list[tuple[str, float, int]] = field(default_factory=list)
    total_bytes: int = 0
    part_files: int = 0
    part_bytes: int = 0
    parts_deleted: int = 0
    empty_dirs_removed: int = 0
    skipped_links: int = 0


def walk_cache(root: Path, *, delete_parts: bool, remove_empty_dirs: bool = True) -> WalkResult:
    """Walk ``root`` depth-first. With ``delete_parts`` (startup) every ``*.part`` is deleted.

    Empty directories below the root are removed (post-order) when ``remove_empty_dirs``.
    """
    result = WalkResult()
    _scan(os.fspath(root), "", _FullWalk(result, delete_parts, remove_empty_dirs))
    return result


class _Visitor:
    """What a walk does with what :func:`_scan` finds (the defaults: nothing)."""

    remove_empty = True

    def tick(self) -> None:
        """Every directory entry met (pacing)."""

    def link(self) -> None:
        """A symbolic link (never followed)."""

    def dir_removed(self) -> None:
        """An empty directory was removed."""

    def part(self, path: str, child: str, st: os.stat_result) -> bool:
        """A ``.part`` file; True if it is gone now."""
        return False

    def file(self, child: str, st: os.stat_result) -> None:
        """A regular file that may be an entry (each name once per directory)."""


def _scan(path: str, rel: str, v: _Visitor) -> bool:
    """Walk one directory for ``v``; True if it is empty afterwards."""
    remaining = 0
    # readdir may return a name twice when the directory changes during the walk (commits and
    # deletes go on meanwhile): count each file once.
    seen: set[str] = set()
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    with it:
        for entry in it:
            v.tick()
            name = entry.name
            child = f"{rel}/{name}" if rel else name
            try:
                if entry.is_symlink():
                    v.link()
                    remaining += 1
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if _scan(entry.path, child, v) and v.remove_empty:
                        try:
                            os.rmdir(entry.path)
                            v.dir_removed()
                            continue
                        except OSError:
                            pass
                    remaining += 1
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                remaining += 1
                continue
            if name.endswith(PART_SUFFIX):
                if not v.part(entry.path, child, st):
                    remaining += 1
                continue
            remaining += 1
            if not rel and name in INTERNAL_NAMES:
                continue
            if name in seen:
                remaining -= 1
                continue
            seen.add(name)
            v.file(child, st)
    return remaining == 0


class _FullWalk(_Visitor):
    """:func:`walk_cache`: list every entry."""

    def __init__(self, result: WalkResult, delete_parts: bool, remove_empty: bool) -> None:
        self.result = result
        self.delete_parts = delete_parts
        self.remove_empty = remove_empty

    def link(self) -> None:
        self.result.skipped_links += 1

    def dir_removed(self) -> None:
        self.result.empty_dirs_removed += 1

    def part(self, path: str, child: str, st: os.stat_result) -> bool:
        if self.delete_parts:
            try:
                os.unlink(path)
                self.result.parts_deleted += 1
            except FileNotFoundError:
                pass
            return True
        self.result.part_files += 1
        self.result.part_bytes += st.st_size
        return False

    def file(self, child: str, st: os.stat_result) -> None:
        self.result.files.append((child, max(st.st_atime, st.st_mtime), st.st_size))
        self.result.total_bytes += st.st_size


@dataclass
class WalkDiff:
    """How the disk differs from a copy of the index."""

    vanished: list[str] = field(default_factory=list)  # tracked, not on disk
    untracked: list[tuple[str, float, int]] = field(default_factory=list)  # on disk only
    resized: list[tuple[str, int]] = field(default_factory=list)  # (path, size on disk)


def walk_and_diff(root: Path, indexed: dict[str, int]) -> tuple[WalkResult, WalkDiff]:
    """Walk ``root`` (leaving ``.part`` files) and compare with ``indexed`` (path -> size).
    One thread job for the trim's walk phase."""
    walk = walk_cache(root, delete_parts=False)
    diff = WalkDiff()
    seen: set[str] = set()
    for path, atime, size in walk.files:
        seen.add(path)
        known = indexed.get(path)
        if known is None:
            diff.untracked.append((path, atime, size))
        elif known != size:
            diff.resized.append((path, size))
    diff.vanished = [p for p in indexed if p not in seen]
    return walk, diff


class WalkAborted(Exception):
    """A paced walk was told to stop (the cache is stopping)."""


class Pacer:
    """Keeps a background walk to ``rate`` files per second (0: no limit) by sleeping in the
    walking thread (which also hands the GIL to the event loop), and stops it when ``abort``
    is set. One per walk; used from the walking thread only."""

    def __init__(self, rate: int, abort: threading.Event | None = None) -> None:
        self.rate = rate
        self.abort = abort or threading.Event()
        self.files = 0
        self.slept_s = 0.0
        self._started = time.monotonic()

    def tick(self, files: int = 1) -> None:
        self.files += files
        if self.abort.is_set():
            raise WalkAborted("the walk was stopped")
        if self.rate <= 0 or self.files % 64:
            return
        ahead = self.files / self.rate - (time.monotonic() - self._started)
        if ahead > 0:
            self.abort.wait(ahead)  # a sleep that ends early when the walk is stopped
            self.slept_s += ahead
            if self.abort.is_set():
                raise WalkAborted("the walk was stopped")


@dataclass
class SyncDiff:
    """How the disk differs from the index, found by :func:`sync_walk`."""

    files: int = 0
    total_bytes: int = 0
    vanished: list[str] = field(default_factory=list)  # indexed, not on disk
    untracked: list[tuple[str, float, int]] = field(default_factory=list)  # on disk only
    resized: list[tuple[str, int]] = field(default_factory=list)  # (path, size on disk)
    parts: list[str] = field(default_factory=list)  # every ``.part`` file seen
    empty_dirs_removed: int = 0
    seconds: float = 0.0


def sync_walk(root: Path, indexed: dict[str, int], pacer: Pacer) -> SyncDiff:
    """Walk ``root`` at the pacer's rate and compare it with ``indexed`` (path -> size), a copy
    the walk consumes: every file found is popped from it, so what is left has vanished. Lean
    on memory: only the differences are kept, never the whole listing. Blocking: one thread
    job. Raises :class:`WalkAborted` if the pacer is aborted."""
    started = time.monotonic()
    diff = SyncDiff()
    _scan(os.fspath(root), "", _SyncWalk(indexed, diff, pacer))
    diff.vanished = list(indexed)
    indexed.clear()
    diff.seconds = time.monotonic() - started
    return diff


class _SyncWalk(_Visitor):
    """:func:`sync_walk`: pop what is found from the index's copy, keep only differences."""

    def __init__(self, indexed: dict[str, int], diff: SyncDiff, pacer: Pacer) -> None:
        self.indexed = indexed
        self.diff = diff
        self.tick = pacer.tick  # type: ignore[method-assign]

    def dir_removed(self) -> None:
        self.diff.empty_dirs_removed += 1

    def part(self, path: str, child: str, st: os.stat_result) -> bool:
        self.diff.parts.append(child)
        return False

    def file(self, child: str, st: os.stat_result) -> None:
        diff = self.diff
        size = self.indexed.pop(child, None)
        if size is None:
            diff.untracked.append((child, max(st.st_atime, st.st_mtime), st.st_size))
        elif size != st.st_size:
            diff.resized.append((child, st.st_size))
        diff.files += 1
        diff.total_bytes += st.st_size


def remove_empty_parents(root: Path, path: Path) -> None:
    """Remove ``path``'s parent directories while they are empty, stopping at ``root``."""
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            os.rmdir(parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.EBUSY):
                log.warning("cache: cannot remove empty directory %s: %s", parent, exc)
            return
        parent = parent.parent


def delete_entries(root: Path, relpaths: list[str]) -> list[tuple[str, int | None]]:
    """Delete the entry files at ``relpaths`` (and then-empty parents).

    Returns (relpath, bytes freed) per path; ``None`` when the file was already gone or could not
    be deleted (logged). Symbolic links and non-regular files are left alone. The files are
    ``lstat``-ed first and unlinked in inode order, which keeps the filesystem's metadata
    writes close together (LRU order scatters them over every directory).
    """
    failpoint_sync("cache.trim.delete")
    out: list[tuple[str, int | None]] = []
    found: list[tuple[int, str, Path, int]] = []
    real_root = os.path.realpath(root)
    inside: dict[Path, bool] = {root: True}  # directory -> really inside the root (no links)
    for rel in relpaths:
        p = root / rel
        ok = inside.get(p.parent)
        if ok is None:
            real = os.path.realpath(p.parent)
            ok = inside[p.parent] = real.startswith(real_root + os.sep)
        if not ok:
            log.warning("cache: not deleting %s: its directory leads outside the cache", p)
            out.append((rel, None))
            continue
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            out.append((rel, None))
            continue
        except OSError as exc:
            log.warning("cache: cannot stat %s: %s", p, exc)
            out.append((rel, None))
            continue
        if not stat.S_ISREG(st.st_mode):
            out.append((rel, None))
            continue
        found.append((st.st_ino, rel, p, st.st_size))
    found.sort()
    parents: dict[Path, Path] = {}  # directory -> one deleted file in it
    for _, rel, p, size in found:
        try:
            os.unlink(p)
        except FileNotFoundError:
            out.append((rel, None))
            continue
        except OSError as exc:
            log.warning("cache: cannot delete %s: %s", p, exc)
            out.append((rel, None))
            continue
        out.append((rel, size))
        failpoint_sync("cache.remove.after_unlink")
        if p.parent != root:
            parents.setdefault(p.parent, p)
    # Once per directory, deepest first: most parents still hold other entries.
    for p in sorted(parents.values(), key=lambda q: len(q.parts), reverse=True):
        remove_empty_parents(root, p)
    return out
