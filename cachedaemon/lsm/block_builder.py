"""BlockBuilder: encodes sorted key/value pairs into one block (LevelDB's ``BlockBuilder``).

Block payload layout (before the trailer added by :mod:`~cachedaemon.lsm.format`)::

    entry*            each: u32 LE shared ‖ u32 LE unshared ‖ u32 LE value length
                            ‖ key[shared:] ‖ value
    u32 LE restart*   offsets of the entries whose key is stored whole (shared = 0)
    u32 LE restart count

Keys are prefix-compressed against the previous key; every ``restart_interval``-th entry
restarts with a whole key. Fixed-width u32 headers (Redpanda's choice) rather than LevelDB's
varints: one precompiled ``struct`` call decodes a header, which matters in Python.

REQUIRES: keys added in strictly increasing order. Used by one table builder at a time.
"""

from __future__ import annotations

import struct

_ENTRY = struct.Struct("<III")
_U32 = struct.Struct("<I")
_pack_entry = _ENTRY.pack


class BlockBuilder:
    __slots__ = ("_count", "_interval", "_last", "_parts", "_restarts", "_size")

    def __init__(self, restart_interval: int = 16) -> None:
        assert restart_interval >= 1
        self._interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self._parts: list[bytes] = []
        self._restarts: list[int] = [0]
        self._count = 0
        self._size = 0
        self._last = b""

    @property
    def empty(self) -> bool:
        return self._count == 0

    def current_size_estimate(self) -> int:
        return self._size + 4 * len(self._restarts) + 4

    def add(self, key: bytes, value: bytes) -> None:
        if self._count % self._interval == 0:
            if self._count:
                self._restarts.append(self._size)
            shared = 0
        else:
            last = self._last
            n = len(last) if len(last) < len(key) else len(key)
            # Common prefix length in O(1) Python steps: the highest set bit of the XOR of
            # the two prefixes as big-endian integers marks the first differing byte.
            x = int.from_bytes(key[:n], "big") ^ int.from_bytes(last[:n], "big")
            shared = n - ((x.bit_length() + 7) >> 3)
        header = _pack_entry(shared, len(key) - shared, len(value))
        suffix = key[shared:] if shared else key
        self._parts.append(header)
        self._parts.append(suffix)
        self._parts.append(value)
        self._size += 12 + len(suffix) + len(value)
        self._last = key
        self._count += 1

    def finish(self) -> bytes:
        """The block payload; the builder must be ``reset()`` before reuse."""
        restarts = self._restarts
        tail = struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))
        return b"".join(self._parts) + tail
