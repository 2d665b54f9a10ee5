"""The access-time tracker: entry path -> (access time, size), in LRU order, saved to disk.

Owned by the cache coordinator on shard 0 and touched only from its loop. It is the
coordinator's record of what is committed: every commit adds (or replaces) an entry, every hit
moves one to the most-recent end, invalidation and trim remove them. ``total_bytes`` and
``len()`` are kept incrementally and are the cache's ``bytes_used``/``objects``.

Paths are the entries' paths relative to the cache root (see :mod:`cachedaemon.cache.keys`);
``.part`` files and the tracker's own files are never tracked.

**File format** (``<cache>/%tracker``), written by :func:`encode` and read by :func:`decode`::

    magic     8 bytes   b"CDTRACK\\n"
    version   u32 LE    2 (1 is read too: the same body, from a cache of layout 1)
    crc32c    u32 LE    CRC32C (Castagnoli) of the body
    length    u64 LE    byte length of the body
    body      msgpack   array of [path: str, atime: float (unix seconds), size: int], LRU first

Saves are atomic: write ``%tracker.tmp``, fsync, rename over ``%tracker``, fsync the directory
(:func:`save_file`, run in a thread on a copy of the entries taken on the loop). A file with a bad magic,
version, length or checksum raises :class:`~cachedaemon.errors.Corruption`; the coordinator then
rebuilds the tracker from a directory walk and logs a warning.

The version also names the cache directory's **layout**: version 2 trackers are written by
caches that keep the metastore's cached SSTs under the reserved ``.cachedaemon/lsm/`` keys.
A cache whose tracker is not version 2 (version 1, missing or damaged) may hold layout-1 copies
at ``lsm/meta/domain/…``, where user keys now live: the coordinator drops that subtree at start
(:func:`cachedaemon.cache.walker.drop_legacy_layout`) before its walk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import msgspec

from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import Corruption

MAGIC = b"CDTRACK\n"
VERSION = 2
READABLE_VERSIONS = frozenset({1, 2})
_HEADER = struct.Struct("<8sIIQ")

#: (access time in unix seconds, size in bytes)
Entry = tuple[float, int]


class AccessTimeTracker:
    """Entries in least-recently-used-first order, with running totals and a dirty flag."""

    def __init__(self) -> None:
        # A plain dict: insertion order is LRU order (a touch deletes and re-inserts), and
        # copying it for a thread job runs at C speed (an OrderedDict copies slowly).
        self._entries: dict[str, Entry] = {}
        self.total_bytes = 0
        self.dirty = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def add(self, path: str, atime: float, size: int) -> Entry | None:
        """Insert or replace ``path`` as most recently used; return the replaced entry."""
        old = self._entries.pop(path, None)
        if old is not None:
            self.total_bytes -= old[1]
        self._entries[path] = (atime, size)
        self.total_bytes += size
        self.dirty = True
        return old

    def touch(self, path: str, atime: float) -> bool:
        """Mark ``path`` used at ``atime`` (most recent). False if it is not tracked."""
        entry = self._entries.get(path)
        if entry is None:
            return False
        del self._entries[path]
        self._entries[path] = (max(entry[0], atime), entry[1])
        self.dirty = True
        return True

    def remove(self, path: str) -> Entry | None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.total_bytes -= entry[1]
            self.dirty = True
        return entry

    def lru(self) -> Iterator[tuple[str, Entry]]:
        """Entries, least recently used first. Do not mutate while iterating."""
        return iter(self._entries.items())

    def copy_entries(self) -> dict[str, Entry]:
        """A copy in LRU order (C speed) for a thread job."""
        return self._entries.copy()

    def snapshot(self) -> list[tuple[str, float, int]]:
        return [(p, e[0], e[1]) for p, e in self._entries.items()]

    def install(self, entries: dict[str, Entry], total_bytes: int) -> None:
        """Take over ``entries`` (LRU order) built elsewhere, e.g. by :func:`reconcile`."""
        self._entries = entries
        self.total_bytes = total_bytes
        self.dirty = True

    def replace_all(self, items: list[tuple[str, float, int]]) -> None:
        """Load ``items`` (sorted here by access time, oldest first)."""
        items = sorted(items, key=lambda t: t[1])
        self._entries = {p: (a, s) for p, a, s in items}
        self.total_bytes = sum(s for _, _, s in items)
        self.dirty = True


def reconcile(
    saved: list[tuple[str, float, int]], walked: list[tuple[str, float, int]]
) -> tuple[dict[str, Entry], int]:
    """Entries for the files ``walked`` (path, atime, size), with the access time ``saved`` for
    them if any, in access-time order; and their total size. Blocking (CPU): run in a thread.

    The saved list is in LRU order already, so it leads and the sort is nearly linear."""
    on_disk = {p: (a, s) for p, a, s in walked}
    items: list[tuple[str, float, int]] = []
    for p, a, _ in saved:
        found = on_disk.pop(p, None)
        if found is not None:
            items.append((p, a, found[1]))
    items.extend((p, a, s) for p, (a, s) in on_disk.items())
    items.sort(key=lambda t: t[1])
    entries = {p: (a, s) for p, a, s in items}
    return entries, sum(s for _, _, s in items)


def encode(items: list[tuple[str, float, int]]) -> bytes:
    body = msgspec.msgpack.encode(items)
    return _HEADER.pack(MAGIC, VERSION, google_crc32c.value(body), len(body)) + body


def decode(data: bytes) -> list[tuple[str, float, int]]:
    if len(data) < _HEADER.size:
        raise Corruption(f"tracker file is {len(data)} bytes, shorter than its header")
    magic, version, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Corruption("tracker file has a bad magic number")
    if version not in READABLE_VERSIONS:
        raise Corruption(f"tracker file has unknown version {version}")
    body = data[_HEADER.size :]
    if len(body) != length:
        raise Corruption(f"tracker body is {len(body)} bytes, header says {length}")
    if google_crc32c.value(body) != crc:
        raise Corruption("tracker file checksum mismatch")
    try:
        raw = msgspec.msgpack.decode(body, type=list[tuple[str, float, int]])
    except msgspec.DecodeError as exc:
        raise Corruption(f"tracker body does not decode: {exc}") from exc
    return raw


def save_file(
    path: Path, tmp_path: Path, items: list[tuple[str, float, int]] | dict[str, Entry]
) -> int:
    """Atomically replace ``path`` with the encoded ``items`` (a list, or a
    :meth:`AccessTimeTracker.copy_entries` copy). Blocking: run in a thread."""
    if isinstance(items, dict):
        items = [(p, e[0], e[1]) for p, e in items.items()]
    data = encode(items)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        failpoint_sync("cache.tracker.save")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp_path, path)
    fsync_dir(path.parent)
    return len(data)


def stored_version(path: Path) -> int | None:
    """The version in the header of the tracker file at ``path``; None if there is no
    readable header. Blocking."""
    try:
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
    except OSError:
        return None
    if len(head) < _HEADER.size or head[:8] != MAGIC:
        return None
    return int(_HEADER.unpack_from(head)[1])


def load_file(path: Path) -> list[tuple[str, float, int]] | None:
    """The saved entries, ``None`` if there is no file; :class:`Corruption` if it is damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode(data)
