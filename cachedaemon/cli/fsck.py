"""``cachedaemon fsck --data-dir DIR``: an offline, read-only check of a stopped daemon's
local state.

Checks ``<data-dir>/cache`` against the rules of :mod:`cachedaemon.cache.keys` and the cache
index (its snapshot ``%tracker`` and journal ``%tracker.journal``, read as the daemon reads
them at start: :mod:`cachedaemon.cache.index_load`):

* ``*.part`` leftovers (in-flight files of a daemon that did not stop cleanly; the daemon
  deletes them at start) and a leftover ``%tracker.tmp`` or ``%tracker.journal.tmp``;
* names that no key maps to, symbolic links, and files that are neither regular files nor
  directories (nothing in the cache directory should be any of these);
* an index that cannot be trusted (a damaged snapshot or journal: the daemon would walk);
* index consistency: entries the index lists that are not on disk, entries on disk it does not
  list, and sizes that differ (the daemon's background walk corrects these after a start; after
  a clean stop there are none);
* zero-byte entries the index records as non-empty (a torn write); other zero-byte entries
  are reported as notes, since an empty object is legal.

Nothing is modified. Runs on the CLI's main thread; the daemon must not be running on the
directory (its files would be changing underneath).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cachedaemon.cache.index_load import IndexUnusable, load_index
from cachedaemon.cache.keys import (
    DIR_SUFFIX,
    HASH_MARK,
    INTERNAL_NAMES,
    JOURNAL_TMP_NAME,
    PART_SUFFIX,
    TRACKER_NAME,
    TRACKER_TMP_NAME,
    relpath_key,
)
from cachedaemon.units import format_size


@dataclass
class FsckReport:
    """What the check found. ``problems`` make the exit status 1; ``notes`` do not."""

    entries: int = 0
    bytes: int = 0
    part_files: int = 0
    tracked: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"problem: {p}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes]
        out.append(f"entries: {self.entries}")
        out.append(f"bytes: {format_size(self.bytes)} ({self.bytes})")
        out.append(f"part_files: {self.part_files}")
        out.append(f"tracked: {'none' if self.tracked is None else self.tracked}")
        out.append(f"problems: {len(self.problems)}")
        out.append("status: clean" if self.clean else "status: damaged")
        return out


def _valid_entry_name(relpath: str) -> bool:
    """True when ``relpath`` is a name the key encoding can produce (shortened names
    included, which :func:`relpath_key` cannot map back)."""
    if relpath_key(relpath) is not None:
        return True
    names = relpath.split("/")
    for i, name in enumerate(names):
        if i < len(names) - 1:
            if not name.endswith(DIR_SUFFIX):
                return False
            name = name[: -len(DIR_SUFFIX)]
        if not name:
            return False
        if HASH_MARK in name:
            head, _, digest = name.partition(HASH_MARK)
            if len(digest) != 40 or any(c not in "0123456789abcdef" for c in digest):
                return False
            name = head
        if name.replace("%25", "").count("%"):
            return False
    return True


def check_data_dir(data_dir: Path) -> FsckReport:
    """Walk ``<data_dir>/cache`` and compare it with the index."""
    report = FsckReport()
    if not data_dir.is_dir():
        report.problems.append(f"{data_dir} is not a directory")
        return report
    cache = data_dir / "cache"
    if not cache.exists():
        report.notes.append(f"{cache} does not exist (no cache yet)")
        return report
    if not cache.is_dir():
        report.problems.append(f"{cache} is not a directory")
        return report

    on_disk: dict[str, int] = {}
    _walk(cache, "", report, on_disk)
    report.entries = len(on_disk)
    report.bytes = sum(on_disk.values())

    for tmp in (TRACKER_TMP_NAME, JOURNAL_TMP_NAME):
        if (cache / tmp).exists():
            report.problems.append(f"leftover {tmp}: an index snapshot was interrupted")
    try:
        loaded = load_index(cache)
    except IndexUnusable as exc:
        report.problems.append(f"the index {cache / TRACKER_NAME} is damaged: {exc.reason}")
        loaded = None
    tracked: dict[str, int] = {}
    if loaded is not None:
        report.tracked = len(loaded.entries)
        tracked = loaded.entries
        if loaded.torn_tail:
            report.notes.append(f"the index journal ends in an interrupted append "
                                f"({loaded.torn_tail}); the daemon cuts it off at start")
        for path, size in sorted(tracked.items()):
            if path not in on_disk:
                report.problems.append(f"the index lists {path!r} ({size} bytes) but it is "
                                       f"not on disk")
            elif on_disk[path] != size:
                if on_disk[path] == 0:
                    report.problems.append(
                        f"zero-byte entry {path!r}: the index records {size} bytes (torn write)")
                else:
                    report.problems.append(
                        f"entry {path!r} is {on_disk[path]} bytes, the index records {size}")
        for path in sorted(on_disk.keys() - tracked.keys()):
            report.problems.append(f"entry {path!r} is on disk but not in the index")
    elif on_disk and (cache / TRACKER_NAME).exists() is False:
        report.notes.append("no index: the daemon rebuilds it from a walk at start")
    for path, size in sorted(on_disk.items()):
        if size == 0 and tracked.get(path, 0) == 0:
            report.notes.append(f"zero-byte entry {path!r} (an empty object)")
    return report


def _walk(directory: Path, rel: str, report: FsckReport, on_disk: dict[str, int]) -> None:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        report.problems.append(f"cannot list {directory}: {exc.strerror or exc}")
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            report.problems.append(f"cannot stat {child!r}: {exc.strerror or exc}")
            continue
        if stat.S_ISLNK(st.st_mode):
            report.problems.append(f"symbolic link {child!r} in the cache directory")
        elif stat.S_ISDIR(st.st_mode):
            if not entry.name.endswith(DIR_SUFFIX):
                report.problems.append(f"directory {child!r} is not a key directory (no {DIR_SUFFIX})")
            _walk(Path(entry.path), child, report, on_disk)
        elif not stat.S_ISREG(st.st_mode):
            report.problems.append(f"{child!r} is neither a file nor a directory")
        elif entry.name.endswith(PART_SUFFIX):
            report.part_files += 1
            report.problems.append(
                f"leftover in-flight file {child!r} ({st.st_size} bytes) from an unclean stop")
        elif not rel and entry.name in INTERNAL_NAMES:
            continue
        elif not _valid_entry_name(child):
            report.problems.append(f"{child!r} is not the name of any cache entry")
        else:
            on_disk[child] = st.st_size
