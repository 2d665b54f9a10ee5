"""The byte format of the cache index's files: the snapshot (``%tracker``) and the journal
(``%tracker.journal``). Pure encoding and decoding, no I/O; shared by the writer
(:mod:`cachedaemon.cache.journal`), the reader (:mod:`cachedaemon.cache.index_load`) and
``cachedaemon fsck``. ``docs/cache.md`` ("The index on disk") describes the same bytes.

Both files are a 32-byte header followed by records::

    header  magic      8 bytes   b"CDINDEX\\n" (snapshot) or b"CDJOURN\\n" (journal)
            version    u32 LE    1
            flags      u32 LE    0
            generation u64 LE    the journal generation (see below)
            crc32c     u32 LE    CRC32C of the 24 bytes above
            reserved   u32 LE    0

    record  length     u32 LE    1 + len(body)
            crc32c     u32 LE    CRC32C of the type byte and the body
            type       u8
            body       length - 1 bytes

Every record body but ``END`` is a *batch*: ``count u32 LE``, then for the types that carry
sizes ``count`` sizes as ``u64 LE``, then ``count`` paths, each UTF-8 and terminated by one
NUL byte (a path is an entry's or a staging file's path relative to the cache root; keys never
contain NUL). Types:

    1 COMMIT    sizes, paths   entries committed (added, or replaced), most recent last
    2 REMOVE    paths          entries deleted (trim, invalidate)
    3 TOUCH     paths          entries read (moved to the most recent end), in order
    4 BEGIN     paths          staging (``.part``) files about to be created
    5 FINISH    paths          staging files committed or aborted
    6 ENTRIES   sizes, paths   (snapshot) entries, least recently used first
    7 STAGING   paths          (snapshot) staging files live when the snapshot was taken
    8 END       entries u64, total bytes u64, staging u64   (snapshot) the last record

A snapshot holds ENTRIES records, at most one STAGING, and END. It names in its header the
generation G of the journal that continues it; a journal with generation G is replayed on top
of the snapshot, one with a lower generation is older than the snapshot (ignored), one with a
higher generation is inconsistent. Sizes are bytes; there are no access times (the order is
the LRU order).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence

import google_crc32c

from cachedaemon.errors import Corruption

SNAPSHOT_MAGIC = b"CDINDEX\n"
JOURNAL_MAGIC = b"CDJOURN\n"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")
HEADER_SIZE = HEADER.size  # 32
RECORD_HEAD = struct.Struct("<II")  # length, crc32c
RECORD_HEAD_SIZE = RECORD_HEAD.size  # 8
COUNT = struct.Struct("<I")
END_BODY = struct.Struct("<QQQ")
#: A record body never gets near this; a larger length field is damage, not data.
MAX_RECORD_BYTES = 1 << 30

COMMIT, REMOVE, TOUCH, BEGIN, FINISH, ENTRIES, STAGING, END = range(1, 9)
TYPE_NAMES = {COMMIT: "COMMIT", REMOVE: "REMOVE", TOUCH: "TOUCH", BEGIN: "BEGIN",
              FINISH: "FINISH", ENTRIES: "ENTRIES", STAGING: "STAGING", END: "END"}
SIZED = frozenset({COMMIT, ENTRIES})

_LITTLE = sys.byteorder == "little"


def encode_header(magic: bytes, generation: int) -> bytes:
    head = HEADER.pack(magic, VERSION, 0, generation, 0, 0)[:24]
    return head + struct.pack("<II", google_crc32c.value(head), 0)


def decode_header(data: bytes, magic: bytes, what: str) -> int:
    """The generation in a header; :class:`Corruption` if it is not a valid ``magic`` header."""
    if len(data) < HEADER_SIZE:
        raise Corruption(f"{what} is {len(data)} bytes, shorter than its header")
    got, version, _flags, generation, crc, _ = HEADER.unpack_from(data)
    if got != magic:
        raise Corruption(f"{what} has a bad magic number {bytes(got)!r}")
    if google_crc32c.value(data[:24]) != crc:
        raise Corruption(f"{what} header checksum mismatch")
    if version != VERSION:
        raise Corruption(f"{what} has unknown version {version}")
    return int(generation)


def encode_record(kind: int, body: bytes) -> bytes:
    payload = bytes((kind,)) + body
    return RECORD_HEAD.pack(len(payload), google_crc32c.value(payload)) + payload


def _u64s(values: Sequence[int]) -> bytes:
    arr = array("Q", values)
    if not _LITTLE:
        arr.byteswap()
    return arr.tobytes()


def encode_batch(kind: int, paths: Sequence[str], sizes: Sequence[int] | None = None) -> bytes:
    """One batch record of ``kind``; ``sizes`` for the sized kinds (COMMIT, ENTRIES)."""
    parts = [COUNT.pack(len(paths))]
    if kind in SIZED:
        assert sizes is not None and len(sizes) == len(paths)
        parts.append(_u64s(sizes))
    if paths:
        parts.append("\0".join(paths).encode("utf-8", "surrogatepass") + b"\0")
    return encode_record(kind, b"".join(parts))


def encode_end(entries: int, total_bytes: int, staging: int) -> bytes:
    return encode_record(END, END_BODY.pack(entries, total_bytes, staging))


def decode_batch(kind: int, body: bytes) -> tuple[list[str], list[int] | None]:
    """Paths (and sizes for the sized kinds) of a batch body; :class:`Corruption` if the body
    does not hold what its count says."""
    if len(body) < COUNT.size:
        raise Corruption(f"{TYPE_NAMES.get(kind, kind)} record is too short")
    (count,) = COUNT.unpack_from(body)
    at = COUNT.size
    sizes: list[int] | None = None
    if kind in SIZED:
        end = at + 8 * count
        if end > len(body):
            raise Corruption(f"{TYPE_NAMES[kind]} record is too short for {count} sizes")
        arr = array("Q")
        arr.frombytes(body[at:end])
        if not _LITTLE:
            arr.byteswap()
        sizes = arr.tolist()
        at = end
    blob = body[at:]
    if count == 0:
        if len(blob):
            raise Corruption(f"{TYPE_NAMES.get(kind, kind)} record has bytes after no paths")
        return [], sizes
    if not len(blob) or blob[-1] != 0:
        raise Corruption(f"{TYPE_NAMES.get(kind, kind)} record's paths are not terminated")
    try:
        paths = blob[:-1].decode("utf-8", "surrogatepass").split("\0")
    except UnicodeDecodeError as exc:
        raise Corruption(f"{TYPE_NAMES.get(kind, kind)} record has a bad path: {exc}") from exc
    if len(paths) != count:
        raise Corruption(f"{TYPE_NAMES.get(kind, kind)} record holds {len(paths)} paths, "
                         f"its count says {count}")
    return paths, sizes


class Damage(Exception):
    """Where reading the records stopped, and why (see :func:`iter_records`)."""

    def __init__(self, offset: int, reason: str, torn: bool) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.torn = torn  # the damage reaches the end of the file (an interrupted append)


def iter_records(data: bytes, start: int = HEADER_SIZE
                 ) -> tuple[list[tuple[int, bytes]], int, Damage | None]:
    """The valid records of ``data`` from ``start``: (type, body) pairs, the offset just past
    the last good one, and the damage that stopped the reading, if any. Damage is *torn* when
    it reaches the end of the file: the record's length runs past it, or everything from the
    damaged record on is zero (a crash in the middle of an append, or a power loss that left
    the file's last block unwritten); anything else is corruption."""
    out: list[tuple[int, bytes]] = []
    at = start
    end = len(data)
    while at < end:
        if end - at < RECORD_HEAD_SIZE:
            return out, at, Damage(at, "a record header is cut short", True)
        length, crc = RECORD_HEAD.unpack_from(data, at)
        body_end = at + RECORD_HEAD_SIZE + length
        if length == 0 or length > MAX_RECORD_BYTES:
            zeros = not data[at:].strip(b"\x00")
            return out, at, Damage(at, f"a record has an impossible length {length}", zeros)
        if body_end > end:
            return out, at, Damage(at, "the last record is cut short", True)
        payload = data[at + RECORD_HEAD_SIZE:body_end]
        if google_crc32c.value(payload) != crc:
            torn = body_end == end or not data[at:].strip(b"\x00")
            return out, at, Damage(at, "a record checksum does not match", torn)
        out.append((payload[0], payload[1:]))
        at = body_end
    return out, at, None
