"""The remote write-ahead log: each group commit is one bucket object, created conditionally.

For nodes whose local disk is not trusted (or where another node must be able to take a domain
over without losing acknowledged writes). Segments are objects
``<domain prefix>/wal/<segment id:020>.log`` in the layout of ``docs/wal-format.md``; ids are
consecutive, and every segment is written with **put-if-absent**, so two writers can never both
own an id: the one that loses reads the winner's header, and if the winner's epoch is newer it
is :class:`~cachedaemon.errors.Fenced` (it stops taking writes; nothing of the lost group was
acknowledged). A retried PUT that finds its own earlier attempt (same bytes) counts as success.

:meth:`RemoteLog.open` lists the segments, reads them, and **fences**: it writes an empty
segment of its own epoch ``FENCE_SPAN`` ids above the newest one, then fills the ids below it,
downwards, with empty segments until it meets a segment an older writer appended meanwhile
(whose records it then reads too). An older writer still appending can reach at most the lowest
fill, where its PUT finds the id taken by a newer epoch and it is fenced; so the opener never
chases a fast writer id by id. A segment that disappears
while being read, or a gap between the manifest's sequence number and the first segment,
means an older writer flushed and released meanwhile: :class:`LogMoved` tells the domain to
re-read the manifest and open again.

:meth:`release` deletes segments wholly at or below the persisted sequence number, but never the
newest one (so ids keep growing and a later writer's fence lands above every older writer) and
never a **fence** segment: a fenced writer that has not tried to write since will try exactly
the id of the fence that fenced it, so that object must stay (it is 32 bytes; one per
takeover; opening skips reading them, the listing tells them apart by size).

Owned by one domain on one shard; bucket calls go through the LSM's retry chain (CloudIO).
"""

from __future__ import annotations

import logging
import re

from cachedaemon.core.failpoints import failpoint
from cachedaemon.errors import Corruption, Fenced, IOFailure, PreconditionFailed, ShuttingDown
from cachedaemon.lsm.io.cloud_base import CloudIO, join_key
from cachedaemon.metastore.group_commit import GroupCommitLog
from cachedaemon.metastore.log_format import (
    HEADER_BYTES,
    LogRecord,
    Segment,
    SegmentHeader,
    encode_segment,
    parse_segment,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})\.log$")
#: How far above the newest segment an opening writer puts its fence (see ``open``).
FENCE_SPAN = 8


class LogMoved(Exception):
    """The log changed under an opening writer (an older writer released segments)."""


def segment_key(prefix: str, segment_id: int) -> str:
    return join_key(prefix, f"wal/{segment_id:020d}.log")


class RemoteLog(GroupCommitLog):
    kind = "remote"

    def __init__(self, io: CloudIO, prefix: str, *, epoch: int, next_id: int,
                 segments: list[tuple[int, int | None]], name: str = "") -> None:
        super().__init__(name or prefix)
        self._io = io
        self.prefix = prefix
        self.epoch = epoch
        self._next_id = next_id
        #: (segment id, last seqno or None) of the segments still in the bucket, oldest first.
        self._segments = segments

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, io: CloudIO, prefix: str, *, epoch: int, persisted_seqno: int, name: str = ""
    ) -> tuple[RemoteLog, list[LogRecord]]:
        listed = await cls._list(io, prefix)
        replay: list[LogRecord] = []
        segments: list[tuple[int, int | None]] = []
        last_seen = persisted_seqno
        for i, (segment_id, size) in enumerate(listed):
            if size == HEADER_BYTES and i != len(listed) - 1:
                segments.append((segment_id, None))  # a fence: no records to read
                continue
            segment = await cls._read(io, prefix, segment_id)
            if segment is None:
                raise LogMoved(f"log segment {segment_id} vanished while opening")
            if segment.header.epoch > epoch:
                raise Fenced(f"domain log at {prefix} has a writer of epoch "
                             f"{segment.header.epoch} > {epoch}")
            cls._take(segment, persisted_seqno, replay, segments)
            if segment.records:
                first = segment.records[0].base_seqno
                if replay and first > last_seen + 1 and last_seen >= persisted_seqno:
                    log.warning("log %s: seqno gap before segment %d (%d after %d)",
                                prefix, segment_id, first, last_seen)
                last_seen = max(last_seen, segment.records[-1].last_seqno)
        if replay and replay[0].base_seqno > persisted_seqno + 1:
            raise LogMoved(
                f"log starts at seqno {replay[0].base_seqno}, manifest has {persisted_seqno}"
            )
        base = (listed[-1][0] + 1) if listed else 1
        # Fence from above, so an older writer still appending cannot outrun us: claim
        # ``lo + FENCE_SPAN - 1`` first (moving up a span while older writers are already
        # past it), then fill the ids below it downwards until we meet the older writer's
        # newest segment. It can then append at most up to the lowest fill, where it is fenced.
        lo = base
        while True:
            top = lo + FENCE_SPAN - 1
            winner = await cls._put(io, prefix, top, encode_segment(SegmentHeader(epoch, top), []))
            if winner is None:
                break
            if winner.header.epoch > epoch:
                raise Fenced(f"domain log at {prefix}: fenced by epoch {winner.header.epoch}")
            lo = top + 1
        fills = [top]
        taken_to = top - 1
        while taken_to >= lo:
            body = encode_segment(SegmentHeader(epoch, taken_to), [])
            winner = await cls._put(io, prefix, taken_to, body)
            if winner is not None:
                if winner.header.epoch > epoch:
                    raise Fenced(f"domain log at {prefix}: fenced by epoch {winner.header.epoch}")
                break  # an older writer's segment: it wrote every id from base up to here
            fills.append(taken_to)
            taken_to -= 1
        for segment_id in range(base, taken_to + 1):  # what older writers appended meanwhile
            segment = await cls._read(io, prefix, segment_id)
            if segment is None:
                raise LogMoved(f"log segment {segment_id} vanished while opening")
            if segment.header.epoch > epoch:
                raise Fenced(f"domain log at {prefix}: fenced by epoch {segment.header.epoch}")
            cls._take(segment, persisted_seqno, replay, segments)
        segments.extend((f, None) for f in sorted(fills))
        next_id = top + 1
        self = cls(io, prefix, epoch=epoch, next_id=next_id, segments=segments, name=name)
        if replay:
            self.durable_seqno = replay[-1].last_seqno
        # Segments already in the manifest can go now (never the newest).
        await self.release(persisted_seqno)
        return self, replay

    @staticmethod
    def _take(segment: Segment, persisted_seqno: int, replay: list[LogRecord],
              segments: list[tuple[int, int | None]]) -> None:
        for r in segment.records:
            if r.last_seqno > persisted_seqno and (not replay or r.base_seqno > replay[-1].last_seqno):
                replay.append(r)
        segments.append((segment.header.segment_id, segment.last_seqno))

    @staticmethod
    async def _list(io: CloudIO, prefix: str) -> list[tuple[int, int]]:
        """``(segment id, object size)`` of every segment, by id."""
        wal_prefix = join_key(prefix, "wal/")

        async def _do() -> list[tuple[int, int]]:
            ids: list[tuple[int, int]] = []
            async for info in io.store.list_all(wal_prefix):
                m = _NAME.match(info.key[len(wal_prefix):])
                if m is not None:
                    ids.append((int(m.group(1)), info.size))
            return sorted(ids)

        return await io.call(f"list {wal_prefix}", _do)

    @staticmethod
    async def _read(io: CloudIO, prefix: str, segment_id: int) -> Segment | None:
        key = segment_key(prefix, segment_id)

        async def _get() -> bytes | None:
            return await io.store.get_bytes(key)

        data = await io.call(f"get {key}", _get)
        if data is None:
            return None
        segment = parse_segment(data, tail_ok=False, name=key)
        if segment.header.segment_id != segment_id:
            raise Corruption(f"{key} holds segment {segment.header.segment_id}")
        return segment

    @staticmethod
    async def _put(io: CloudIO, prefix: str, segment_id: int, body: bytes) -> Segment | None:
        """Create segment ``segment_id``; None on success, else the segment that holds the id."""
        key = segment_key(prefix, segment_id)

        async def _do() -> bool:
            await failpoint("metastore.wal.remote.put")
            try:
                await io.store.put_if_absent(key, body)
            except PreconditionFailed:
                return False
            return True

        if await io.call(f"put {key}", _do):
            return None
        data = await io.call(f"get {key}", lambda: io.store.get_bytes(key))
        if data is None:
            raise IOFailure(f"{key}: conditional put lost but the object is gone")
        if data == body:
            return None  # our own earlier attempt landed; its response was lost
        return parse_segment(data, tail_ok=False, name=key)

    # -- writing ----------------------------------------------------------------------------

    async def _persist(self, records: list[LogRecord]) -> None:
        segment_id = self._next_id
        body = encode_segment(SegmentHeader(self.epoch, segment_id), records)
        winner = await self._put(self._io, self.prefix, segment_id, body)
        if winner is not None:
            if winner.header.epoch > self.epoch:
                raise Fenced(
                    f"domain log {self.prefix}: segment {segment_id} taken by epoch "
                    f"{winner.header.epoch} > {self.epoch}; this writer is fenced"
                )
            raise Corruption(
                f"domain log {self.prefix}: segment {segment_id} taken by epoch "
                f"{winner.header.epoch} (this writer is {self.epoch})"
            )
        self._next_id += 1
        self._segments.append((segment_id, records[-1].last_seqno))

    async def release(self, persisted_seqno: int) -> None:
        if len(self._segments) <= 1:
            return
        keep_newest = self._segments[-1]
        doomed = [
            sid for sid, last in self._segments[:-1]
            if last is not None and last <= persisted_seqno
        ]
        if not doomed:
            return
        keys = [segment_key(self.prefix, sid) for sid in doomed]
        try:
            await self._io.call(
                f"delete {len(keys)} log segments", lambda: self._io.store.delete_many(keys)
            )
        except (IOFailure, ShuttingDown) as exc:
            log.warning("log %s: deleting released segments failed: %s", self.name, exc)
            return
        gone = set(doomed)
        self._segments = [s for s in self._segments[:-1] if s[0] not in gone] + [keep_newest]
        self.stats.segments_deleted += len(doomed)

    @property
    def segment_count(self) -> int:
        return len(self._segments)
