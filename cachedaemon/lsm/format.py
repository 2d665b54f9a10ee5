"""SST on-disk pieces shared by the writer and the reader: block handles, the block trailer,
compression and the footer (LevelDB's ``table/format``). The full layout is in
``docs/sst-format.md``.

* A **block handle** is ``u64 LE offset ‖ u64 LE size`` (16 bytes); ``size`` excludes the
  5-byte block trailer.
* Every block is stored as ``payload ‖ u8 compression ‖ u32 LE crc32c(payload ‖ compression)``.
* The **footer** is the last 44 bytes of a file: ``metaindex handle ‖ index handle ‖
  u32 LE crc32c(the two handles) ‖ u64 LE magic``.

Pure functions and constants; used from any shard.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c
import lz4.block
import zstandard

from cachedaemon.errors import Corruption

MAGIC = 0xDB92384792387433
FOOTER_LEN = 44
BLOCK_TRAILER_LEN = 5
HANDLE_LEN = 16

COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 2
COMPRESSION_LZ4 = 3
COMPRESSION_BY_NAME = {"none": COMPRESSION_NONE, "zstd": COMPRESSION_ZSTD, "lz4": COMPRESSION_LZ4}

_HANDLE = struct.Struct("<QQ")
_TRAILER = struct.Struct("<BI")
_FOOTER = struct.Struct("<QQQQIQ")

_crc = google_crc32c.value
_extend = google_crc32c.extend


@dataclass(frozen=True, slots=True)
class BlockHandle:
    offset: int
    size: int

    def encode(self) -> bytes:
        return _HANDLE.pack(self.offset, self.size)

    @classmethod
    def decode(cls, data: bytes, where: str = "") -> BlockHandle:
        if len(data) != HANDLE_LEN:
            raise Corruption(f"{where}: block handle of {len(data)} bytes")
        return cls(*_HANDLE.unpack(data))


def encode_handle(offset: int, size: int) -> bytes:
    return _HANDLE.pack(offset, size)


def decode_handle(data: bytes) -> tuple[int, int]:
    offset, size = _HANDLE.unpack(data)
    return offset, size


class Compressor:
    """Compresses block payloads for one compression kind (reusing its codec context)."""

    def __init__(self, kind: int, zstd_level: int = 3) -> None:
        self.kind = kind
        self._zstd = zstandard.ZstdCompressor(level=zstd_level) if kind == COMPRESSION_ZSTD else None

    def compress(self, raw: bytes) -> tuple[int, bytes]:
        """``(kind, payload)``; falls back to no compression when it saves < 1/8."""
        if self.kind == COMPRESSION_NONE:
            return COMPRESSION_NONE, raw
        if self._zstd is not None:
            out = self._zstd.compress(raw)
        else:
            out = lz4.block.compress(raw, store_size=True)
        if len(out) < len(raw) - len(raw) // 8:
            return self.kind, out
        return COMPRESSION_NONE, raw


_zstd_d = zstandard.ZstdDecompressor()


def block_with_trailer(kind: int, payload: bytes) -> bytes:
    kind_byte = bytes((kind,))
    return payload + kind_byte + struct.pack("<I", _extend(_crc(payload), kind_byte))


def unwrap_block(stored: bytes, where: str, verify: bool = True) -> bytes:
    """Check the trailer of a stored block and return its uncompressed payload.

    ``where`` names the file and offset for the :class:`Corruption` message.
    """
    if len(stored) < BLOCK_TRAILER_LEN:
        raise Corruption(f"{where}: truncated block ({len(stored)} bytes)")
    n = len(stored) - BLOCK_TRAILER_LEN
    kind, crc = _TRAILER.unpack_from(stored, n)
    payload = stored[:n]
    if verify and _extend(_crc(payload), stored[n : n + 1]) != crc:
        raise Corruption(f"{where}: block checksum mismatch")
    if kind == COMPRESSION_NONE:
        return payload
    try:
        if kind == COMPRESSION_ZSTD:
            return bytes(_zstd_d.decompress(payload))
        if kind == COMPRESSION_LZ4:
            return bytes(lz4.block.decompress(payload))
    except Exception as e:  # codec errors have no common base class
        raise Corruption(f"{where}: cannot decompress block: {e}") from e
    raise Corruption(f"{where}: unknown compression {kind}")


def encode_footer(metaindex: tuple[int, int], index: tuple[int, int]) -> bytes:
    handles = _HANDLE.pack(*metaindex) + _HANDLE.pack(*index)
    return handles + struct.pack("<IQ", _crc(handles), MAGIC)


def decode_footer(data: bytes, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(metaindex handle, index handle)``; raises :class:`Corruption` on any damage."""
    if len(data) != FOOTER_LEN:
        raise Corruption(f"{where}: truncated footer ({len(data)} bytes)")
    mo, ms, io, is_, crc, magic = _FOOTER.unpack(data)
    if magic != MAGIC:
        raise Corruption(f"{where}: bad magic {magic:#x} (not an SST)")
    if _crc(data[:32]) != crc:
        raise Corruption(f"{where}: footer checksum mismatch")
    return (mo, ms), (io, is_)
