"""WriteBatch: a group of puts and deletes applied atomically (LevelDB's ``WriteBatch``).

Built by a caller on its own shard, then handed to :meth:`Database.apply`, which gives the
``i``-th operation the sequence number ``base + i`` (so a later write to the same key in one
batch wins) and inserts them all into the memtable before any reader can observe the batch.

The byte form (:meth:`encode`/:meth:`decode`) is for a write-ahead log::

    u8 version (=1) ‖ u64 LE base seqno (0 = unassigned) ‖ u32 LE count
    count × ( u8 kind ‖ u32 LE key length ‖ key ‖ [u32 LE value length ‖ value]  (values only) )
    u32 LE crc32c of everything before it

A batch is not synchronised: one task builds it, then gives it away.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import google_crc32c

from cachedaemon.errors import Corruption, InvalidArgument
from cachedaemon.lsm.dbformat import KIND_DELETE, KIND_VALUE

_VERSION = 1
_HEADER = struct.Struct("<BQI")
_U32 = struct.Struct("<I")
_KIND_LEN = struct.Struct("<BI")
#: Charge per operation on top of key and value bytes (the memtable uses the same figure).
OP_OVERHEAD = 24


class WriteBatch:
    """An ordered list of ``(kind, key, value)`` operations; ``value`` is ``b""`` for deletes."""

    __slots__ = ("_bytes", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[int, bytes, bytes]] = []
        self._bytes = 0

    def put(self, key: bytes, value: bytes) -> WriteBatch:
        self.ops.append((KIND_VALUE, bytes(key), bytes(value)))
        self._bytes += len(key) + len(value) + OP_OVERHEAD
        return self

    def delete(self, key: bytes) -> WriteBatch:
        self.ops.append((KIND_DELETE, bytes(key), b""))
        self._bytes += len(key) + OP_OVERHEAD
        return self

    remove = delete

    def clear(self) -> None:
        self.ops.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[tuple[int, bytes, bytes]]:
        return iter(self.ops)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WriteBatch) and self.ops == other.ops

    __hash__ = None  # type: ignore[assignment]

    @property
    def approximate_bytes(self) -> int:
        """Key + value bytes plus a fixed per-operation charge."""
        return self._bytes

    def encode(self, base_seqno: int = 0) -> bytes:
        parts = [_HEADER.pack(_VERSION, base_seqno, len(self.ops))]
        append = parts.append
        for kind, key, value in self.ops:
            append(_KIND_LEN.pack(kind, len(key)))
            append(key)
            if kind == KIND_VALUE:
                append(_U32.pack(len(value)))
                append(value)
        body = b"".join(parts)
        return body + _U32.pack(google_crc32c.value(body))

    @classmethod
    def decode(cls, data: bytes) -> tuple[WriteBatch, int]:
        """``(batch, base_seqno)``; raises :class:`Corruption` on any damage."""
        data = bytes(data)
        if len(data) < _HEADER.size + 4:
            raise Corruption(f"write batch truncated ({len(data)} bytes)")
        body, crc = data[:-4], _U32.unpack_from(data, len(data) - 4)[0]
        if google_crc32c.value(body) != crc:
            raise Corruption("write batch checksum mismatch")
        version, base, count = _HEADER.unpack_from(body, 0)
        if version != _VERSION:
            raise Corruption(f"write batch version {version} unknown")
        batch = cls()
        pos = _HEADER.size
        try:
            for _ in range(count):
                kind, klen = _KIND_LEN.unpack_from(body, pos)
                pos += _KIND_LEN.size
                key = body[pos : pos + klen]
                if len(key) != klen:
                    raise Corruption("write batch key truncated")
                pos += klen
                if kind == KIND_VALUE:
                    (vlen,) = _U32.unpack_from(body, pos)
                    pos += 4
                    value = body[pos : pos + vlen]
                    if len(value) != vlen:
                        raise Corruption("write batch value truncated")
                    pos += vlen
                    batch.put(key, value)
                elif kind == KIND_DELETE:
                    batch.delete(key)
                else:
                    raise Corruption(f"write batch op kind {kind} unknown")
        except struct.error as e:
            raise Corruption("write batch truncated") from e
        if pos != len(body):
            raise Corruption("write batch has trailing bytes")
        return batch, base


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise InvalidArgument(f"keys are bytes, not {type(key).__name__}")
