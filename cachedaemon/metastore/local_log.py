"""The local write-ahead log: segment files under ``<data_dir>/wal/<domain uuid>/``, fsync'd.

The default log kind. Segments are ``<segment id:020>.log`` (layout in
``docs/wal-format.md``); a group commit is one ``write`` of all its records plus one
``fdatasync``, in one thread hop. A new segment is started after the domain releases the log
(each flush) or when the current one passes ``segment_bytes``; creating one fsyncs the file and
the directory, so an acknowledged record is never in a file whose name could vanish.

:meth:`LocalLog.open` recovers: it reads every segment (one thread hop), drops a torn tail of
the newest (truncating the file there, so the next restart finds it intact), refuses damage
anywhere else (:class:`~cachedaemon.errors.Corruption`), deletes segments wholly at or below the
manifest's sequence number, and returns the records above it for the domain to replay. New
records always go to a fresh segment.

A local log is this node's alone, so it is replayed only if this node was the domain's last
writer: the file ``OWNERS`` lists the epochs this node opened the domain with (written before
each opening stamps the manifest), and if the manifest's current owner is not among them another
node has written the domain since; the leftover segments would replay stale writes over newer
ones, so they are moved to ``stranded-<owner epoch>-<ns>/`` (and logged) instead.

Owned by one domain on one shard; blocking work runs in threads, one hop per group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import Corruption, IOFailure
from cachedaemon.metastore.group_commit import GroupCommitLog
from cachedaemon.metastore.log_format import (
    LogRecord,
    SegmentHeader,
    parse_segment,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})\.log$")
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: The epochs this node opened the domain with, newest last (see ``LocalLog.open``).
OWNERS = "OWNERS"
KEEP_OWNERS = 64


def segment_name(segment_id: int) -> str:
    return f"{segment_id:020d}.log"


@dataclass
class _SegmentInfo:
    segment_id: int
    path: Path
    last_seqno: int | None  # None: no records


def _read_owners(directory: Path) -> list[int]:
    try:
        text = (directory / OWNERS).read_text("ascii")
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split() if line.isdigit()]


def _write_owners(directory: Path, epochs: list[int]) -> None:
    tmp = directory / (OWNERS + ".tmp")
    with tmp.open("w", encoding="ascii") as f:
        f.write("".join(f"{e}\n" for e in epochs[-KEEP_OWNERS:]))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / OWNERS)
    fsync_dir(directory)


def _strand(directory: Path, found: list[tuple[int, Path]], owner_epoch: int) -> None:
    """Move segments another writer has superseded out of the way (kept for inspection)."""
    aside = directory / f"stranded-{owner_epoch:020d}-{time.time_ns()}"
    aside.mkdir()
    for _, path in found:
        os.replace(path, aside / path.name)
    fsync_dir(aside)
    fsync_dir(directory)
    log.error(
        "log %s: the domain was written by epoch %d since this node last owned it; this "
        "node's %d unflushed log segments are superseded and moved to %s (not replayed)",
        directory, owner_epoch, len(found), aside,
    )


def _recover(
    directory: Path, persisted_seqno: int, epoch: int, owner_epoch: int | None
) -> tuple[list[_SegmentInfo], list[LogRecord], int]:
    """Thread work of :meth:`LocalLog.open`: ``(kept segments, records to replay, next id)``."""
    directory.mkdir(parents=True, exist_ok=True)
    found: list[tuple[int, Path]] = []
    for entry in os.scandir(directory):
        m = _NAME.match(entry.name)
        if m is not None:
            found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    owners = _read_owners(directory)
    next_id = (found[-1][0] + 1) if found else 1
    if owner_epoch is not None and found and owner_epoch not in owners:
        _strand(directory, found, owner_epoch)
        found = []
    if owner_epoch is not None:
        # Recorded before the manifest is stamped with ``epoch``: whichever of our epochs
        # owns the manifest next time, this node knows it was the last writer.
        _write_owners(directory, [*owners, epoch])
    kept: list[_SegmentInfo] = []
    replay: list[LogRecord] = []
    changed = False
    for i, (segment_id, path) in enumerate(found):
        newest = i == len(found) - 1
        data = path.read_bytes()
        try:
            segment = parse_segment(data, tail_ok=newest, name=path.name)
        except Corruption:
            if newest and len(data) < 64 * 1024 and not _has_valid_header(data):
                # A crash while the segment was being created: nothing in it was acknowledged.
                log.warning("log %s: dropping a segment with a torn header", path)
                path.unlink()
                changed = True
                continue
            raise
        if segment.torn:
            log.warning(
                "log %s: dropping a torn tail at offset %d (%d bytes, never acknowledged)",
                path, segment.valid_bytes, len(data) - segment.valid_bytes,
            )
            with path.open("r+b") as f:
                f.truncate(segment.valid_bytes)
                f.flush()
                os.fsync(f.fileno())
        last = segment.last_seqno
        if last is None or last <= persisted_seqno:
            path.unlink()
            changed = True
            continue
        replay.extend(r for r in segment.records if r.last_seqno > persisted_seqno)
        kept.append(_SegmentInfo(segment_id, path, last))
    if changed:
        fsync_dir(directory)
    return kept, replay, next_id


def _has_valid_header(data: bytes) -> bool:
    from cachedaemon.metastore.log_format import decode_header

    try:
        decode_header(data)
    except Corruption:
        return False
    return True


class LocalLog(GroupCommitLog):
    kind = "local"

    def __init__(
        self,
        directory: Path,
        *,
        epoch: int,
        segments: list[_SegmentInfo],
        next_segment_id: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        name: str = "",
    ) -> None:
        super().__init__(name or directory.name)
        self.directory = directory
        self.epoch = epoch
        self.segment_bytes = segment_bytes
        self._segments = segments  # closed segments, oldest first
        self._next_id = next_segment_id
        self._fd: int | None = None
        self._current: _SegmentInfo | None = None
        self._current_size = 0
        self._roll = False

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        epoch: int,
        persisted_seqno: int,
        owner_epoch: int | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        name: str = "",
    ) -> tuple[LocalLog, list[LogRecord]]:
        """Recover the log in ``directory``; returns it and the records to replay.

        ``owner_epoch``: the epoch that owns the domain's manifest now (before this writer
        stamps it). If it is none of the epochs this node ever opened the domain with, another
        writer has owned the domain since, and this node's leftover segments are superseded:
        they are moved aside, not replayed. ``None`` skips the check (tests of the log alone).
        """
        try:
            segments, replay, next_id = await asyncio.to_thread(
                _recover, directory, persisted_seqno, epoch, owner_epoch
            )
        except OSError as exc:
            raise IOFailure(f"cannot recover log {directory}: {exc}") from exc
        log_ = cls(
            directory, epoch=epoch, segments=segments, next_segment_id=next_id,
            segment_bytes=segment_bytes, name=name,
        )
        if replay:
            log_.durable_seqno = replay[-1].last_seqno
        return log_, replay

    @property
    def segment_count(self) -> int:
        return len(self._segments) + (1 if self._current is not None else 0)

    def _open_segment_sync(self, segment_id: int) -> tuple[int, Path, int]:
        path = self.directory / segment_name(segment_id)
        header = SegmentHeader(self.epoch, segment_id).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, header)
            os.fsync(fd)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        return fd, path, len(header)

    def _persist_sync(self, data: bytes, new_segment: int | None) -> tuple[int, Path, int] | None:
        """Write ``data`` (to a new segment first if ``new_segment``) and fdatasync once."""
        opened = None
        fd = self._fd
        if new_segment is not None:
            opened = self._open_segment_sync(new_segment)
            fd = opened[0]
        assert fd is not None
        try:
            failpoint_sync("metastore.wal.before_write")
            _write_all(fd, data)
            failpoint_sync("metastore.wal.before_sync")
            os.fdatasync(fd)
        except BaseException:
            # The log fails for good (the bytes may be in the file: the next opening replays
            # what is there); the segment this group created must not leak its descriptor.
            if opened is not None:
                with contextlib.suppress(OSError):
                    os.close(opened[0])
            raise
        return opened

    async def _persist(self, records: list[LogRecord]) -> None:
        data = b"".join(r.encode() for r in records)
        new_segment: int | None = None
        if self._fd is None or self._roll or self._current_size >= self.segment_bytes:
            new_segment = self._next_id
            self._next_id += 1
        try:
            opened = await asyncio.to_thread(self._persist_sync, data, new_segment)
        except OSError as exc:
            raise IOFailure(f"log {self.name}: write failed: {exc}") from exc
        if opened is not None:
            self._close_current()
            fd, path, size = opened
            self._fd = fd
            self._current = _SegmentInfo(new_segment or 0, path, None)
            self._current_size = size
            self._roll = False
        assert self._current is not None
        self._current_size += len(data)
        self._current.last_seqno = records[-1].last_seqno

    def _close_current(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._current is not None:
            self._segments.append(self._current)
            self._current = None

    async def release(self, persisted_seqno: int) -> None:
        # New records go to a fresh segment, so this one can be deleted at the next release.
        if self._current is not None and self._current.last_seqno is not None:
            self._roll = True
        doomed = [
            s for s in self._segments
            if s.last_seqno is None or s.last_seqno <= persisted_seqno
        ]
        if not doomed:
            return
        self._segments = [s for s in self._segments if s not in doomed]

        def _delete() -> None:
            for s in doomed:
                with contextlib.suppress(FileNotFoundError):
                    s.path.unlink()
            fsync_dir(self.directory)

        try:
            await asyncio.to_thread(_delete)
        except OSError as exc:
            log.warning("log %s: deleting released segments failed: %s", self.name, exc)
            return
        self.stats.segments_deleted += len(doomed)

    async def _close(self) -> None:
        self._close_current()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
