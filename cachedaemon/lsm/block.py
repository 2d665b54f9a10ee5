"""Block: a decoded data or index block (LevelDB's ``Block``).

:func:`decode_block` turns a block payload (format in :mod:`block_builder`) into two parallel
lists, ``keys`` and ``values``, validating every header and the restart array. Decoding a whole
block at once and caching the lists (see :mod:`~cachedaemon.lsm.table_cache`) is the fastest
shape for Python: a point lookup is then one ``bisect`` and iteration is list indexing.

Decoded blocks are immutable and may be shared by any number of readers on the shard.
"""

from __future__ import annotations

import bisect
import struct

from cachedaemon.errors import Corruption

_ENTRY = struct.Struct("<III")
_U32 = struct.Struct("<I")
_unpack_entry = _ENTRY.unpack_from


class Block:
    __slots__ = ("charge", "keys", "values")

    def __init__(self, keys: list[bytes], values: list[bytes], charge: int) -> None:
        self.keys = keys
        self.values = values
        self.charge = charge

    def __len__(self) -> int:
        return len(self.keys)

    def seek(self, target: bytes) -> int:
        """Index of the first key >= ``target`` (``len(self)`` if none)."""
        return bisect.bisect_left(self.keys, target)


def decode_block(data: bytes, where: str) -> Block:
    """Decode a block payload; raises :class:`Corruption` (naming ``where``) on any damage."""
    size = len(data)
    if size < 4:
        raise Corruption(f"{where}: block too short ({size} bytes)")
    (num_restarts,) = _U32.unpack_from(data, size - 4)
    limit = size - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise Corruption(f"{where}: bad restart count {num_restarts}")
    keys: list[bytes] = []
    values: list[bytes] = []
    kappend = keys.append
    vappend = values.append
    pos = 0
    last = b""
    unpack = _unpack_entry
    try:
        while pos < limit:
            shared, unshared, vlen = unpack(data, pos)
            pos += 12
            end = pos + unshared
            if shared:
                if shared > len(last):
                    raise Corruption(f"{where}: entry at block offset {pos - 12} shares too much")
                last = last[:shared] + data[pos:end]
            else:
                last = data[pos:end]
            vend = end + vlen
            if vend > limit:
                raise Corruption(f"{where}: entry at block offset {pos - 12} overruns the block")
            kappend(last)
            vappend(data[end:vend])
            pos = vend
    except struct.error as e:
        raise Corruption(f"{where}: truncated entry at block offset {pos}") from e
    if pos != limit:
        raise Corruption(f"{where}: entries overrun the restart array")
    return Block(keys, values, size)
