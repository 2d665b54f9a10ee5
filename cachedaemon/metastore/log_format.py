"""The byte layout of a domain's write-ahead log, shared by the local and the remote log.

Both log kinds (:mod:`~cachedaemon.metastore.local_log`, :mod:`~cachedaemon.metastore.remote_log`)
store the same **segments**: a local segment is a file that grows by group commits, a remote
segment is one bucket object holding one group commit. The layout is written down in
``docs/wal-format.md``; in short::

    segment := header record*
    header  := magic "CDWAL001" (8) ‖ u64 LE writer epoch ‖ u64 LE segment id
               ‖ u32 LE reserved (0) ‖ u32 LE crc32c(the 28 bytes before it)          (32 bytes)
    record  := u32 LE crc32c(length ‖ payload) ‖ u32 LE length ‖ payload
    payload := WriteBatch.encode(base_seqno)   (its own crc32c at the end; see lsm.write_batch)

One record is one acknowledged write batch; its operations carry the sequence numbers
``base_seqno .. base_seqno + count - 1``.

:func:`parse_segment` reads a segment back. A record that fails its checksum or runs past the
end is a **torn tail** when ``tail_ok`` (the newest local segment, whose last group commit may
have been cut short by a crash: it was never acknowledged) and everything from it on is dropped;
anywhere else it is :class:`~cachedaemon.errors.Corruption`, since acknowledged records follow it.

Pure functions and immutable values: usable from any shard or thread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import google_crc32c

from cachedaemon.errors import Corruption
from cachedaemon.lsm.write_batch import WriteBatch

MAGIC = b"CDWAL001"
_HEADER = struct.Struct("<8sQQI")
HEADER_BYTES = _HEADER.size + 4
_REC = struct.Struct("<II")
RECORD_OVERHEAD = _REC.size
_BATCH_HEAD = struct.Struct("<BQI")  # WriteBatch.encode's header: version, base seqno, count
#: A sanity bound on one record (values are at most 4 MiB; batches a few of them).
MAX_RECORD_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One write batch as logged: sequence numbers ``base_seqno .. last_seqno``."""

    base_seqno: int
    count: int
    payload: bytes  # WriteBatch.encode(base_seqno)
    #: The batch the payload was encoded from, when the writer still has it (saves a decode).
    source: WriteBatch | None = field(default=None, compare=False, repr=False)

    @property
    def last_seqno(self) -> int:
        return self.base_seqno + max(self.count, 1) - 1

    @classmethod
    def of(cls, batch: WriteBatch, base_seqno: int) -> LogRecord:
        return cls(base_seqno, len(batch), batch.encode(base_seqno), batch)

    def batch(self) -> WriteBatch:
        if self.source is not None:
            return self.source
        batch, base = WriteBatch.decode(self.payload)
        if base != self.base_seqno:
            raise Corruption(f"log record seqno {self.base_seqno} holds a batch of {base}")
        return batch

    def encode(self) -> bytes:
        length = _U32.pack(len(self.payload))
        crc = google_crc32c.value(length + self.payload)
        return _U32.pack(crc) + length + self.payload


_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    epoch: int
    segment_id: int

    def encode(self) -> bytes:
        body = _HEADER.pack(MAGIC, self.epoch, self.segment_id, 0)
        return body + _U32.pack(google_crc32c.value(body))


def decode_header(data: bytes) -> SegmentHeader:
    if len(data) < HEADER_BYTES:
        raise Corruption(f"log segment header truncated ({len(data)} bytes)")
    body = data[: _HEADER.size]
    (crc,) = _U32.unpack_from(data, _HEADER.size)
    if google_crc32c.value(body) != crc:
        raise Corruption("log segment header checksum mismatch")
    magic, epoch, segment_id, _reserved = _HEADER.unpack(body)
    if magic != MAGIC:
        raise Corruption(f"not a log segment (magic {magic!r})")
    return SegmentHeader(epoch, segment_id)


@dataclass(frozen=True, slots=True)
class Segment:
    """A parsed segment: its header, its intact records, and where the intact bytes end."""

    header: SegmentHeader
    records: list[LogRecord]
    valid_bytes: int
    torn: bool  # a damaged tail was dropped

    @property
    def last_seqno(self) -> int | None:
        return self.records[-1].last_seqno if self.records else None


def encode_segment(header: SegmentHeader, records: list[LogRecord]) -> bytes:
    return header.encode() + b"".join(r.encode() for r in records)


def _decode_record(data: bytes, pos: int) -> tuple[LogRecord, int] | None:
    """The record at ``pos`` and the offset after it; None if it is damaged or cut short."""
    if pos + RECORD_OVERHEAD > len(data):
        return None
    crc, length = _REC.unpack_from(data, pos)
    if length > MAX_RECORD_BYTES or pos + RECORD_OVERHEAD + length > len(data):
        return None
    start = pos + 4
    end = pos + RECORD_OVERHEAD + length
    if google_crc32c.value(data[start:end]) != crc:
        return None
    payload = data[pos + RECORD_OVERHEAD : end]
    if length < _BATCH_HEAD.size + 4:
        return None
    _version, base, count = _BATCH_HEAD.unpack_from(payload, 0)
    return LogRecord(base, count, payload), end


def parse_segment(data: bytes, *, tail_ok: bool, name: str = "segment") -> Segment:
    """Parse a whole segment (see the module docstring for ``tail_ok``)."""
    header = decode_header(data)
    records: list[LogRecord] = []
    pos = HEADER_BYTES
    while pos < len(data):
        got = _decode_record(data, pos)
        if got is None:
            if not tail_ok:
                raise Corruption(f"log {name}: damaged record at offset {pos}")
            return Segment(header, records, pos, True)
        record, pos = got
        if records and record.base_seqno <= records[-1].last_seqno:
            raise Corruption(
                f"log {name}: seqno {record.base_seqno} after {records[-1].last_seqno}"
            )
        records.append(record)
    return Segment(header, records, pos, False)
