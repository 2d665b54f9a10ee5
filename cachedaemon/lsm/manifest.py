"""Manifest codec: the whole version set as one checksummed blob (Redpanda writes a full
snapshot on every change; LevelDB's incremental ``MANIFEST`` log is not used).

Layout::

    u8 format version (=1) ‖ msgpack body ‖ u32 LE crc32c(version byte ‖ body)

Body (a msgpack map, see :class:`ManifestBody`): ``epoch``, ``next_file_id``, ``last_seqno``,
``compact_pointers`` (one internal key or nil per level), and ``levels``: per level a list of
files ``[id, epoch, size, smallest, largest, oldest_seqno, newest_seqno]``.

Any damage — short blob, unknown version, bad checksum, undecodable body, inconsistent
contents — raises :class:`~cachedaemon.errors.Corruption`. Pure functions; any shard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c
import msgspec

from cachedaemon.errors import Corruption
from cachedaemon.lsm.io.persistence import FileHandle
from cachedaemon.lsm.version_edit import FileMeta

FORMAT_VERSION = 1
_U32 = struct.Struct("<I")


class _File(msgspec.Struct, array_like=True):
    id: int
    epoch: int
    size: int
    smallest: bytes
    largest: bytes
    oldest_seqno: int
    newest_seqno: int


class _Body(msgspec.Struct):
    epoch: int
    next_file_id: int
    last_seqno: int
    compact_pointers: list[bytes | None]
    levels: list[list[_File]]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Body)


@dataclass
class ManifestState:
    epoch: int
    next_file_id: int
    last_seqno: int
    compact_pointers: list[bytes | None]
    levels: list[list[FileMeta]]


def encode_manifest(state: ManifestState) -> bytes:
    body = _Body(
        epoch=state.epoch,
        next_file_id=state.next_file_id,
        last_seqno=state.last_seqno,
        compact_pointers=list(state.compact_pointers),
        levels=[
            [
                _File(
                    f.handle.id,
                    f.handle.epoch,
                    f.size,
                    f.smallest,
                    f.largest,
                    f.oldest_seqno,
                    f.newest_seqno,
                )
                for f in files
            ]
            for files in state.levels
        ],
    )
    data = bytes((FORMAT_VERSION,)) + _encoder.encode(body)
    return data + _U32.pack(google_crc32c.value(data))


def decode_manifest(data: bytes, where: str = "manifest") -> ManifestState:
    data = bytes(data)
    if len(data) < 5:
        raise Corruption(f"{where} at offset 0: truncated ({len(data)} bytes)")
    if data[0] != FORMAT_VERSION:
        raise Corruption(f"{where} at offset 0: unknown format version {data[0]}")
    (crc,) = _U32.unpack_from(data, len(data) - 4)
    if google_crc32c.value(data[:-4]) != crc:
        raise Corruption(f"{where} at offset {len(data) - 4}: checksum mismatch")
    try:
        body = _decoder.decode(data[1:-4])
    except msgspec.DecodeError as e:
        raise Corruption(f"{where} at offset 1: undecodable body: {e}") from e
    levels = [
        [
            FileMeta(
                FileHandle(f.id, f.epoch),
                f.size,
                f.smallest,
                f.largest,
                f.oldest_seqno,
                f.newest_seqno,
            )
            for f in files
        ]
        for files in body.levels
    ]
    if body.next_file_id < 2 or body.last_seqno < 0 or body.epoch < 0:
        raise Corruption(f"{where}: impossible counters")
    return ManifestState(
        body.epoch, body.next_file_id, body.last_seqno, list(body.compact_pointers), levels
    )
