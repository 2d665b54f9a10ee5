"""Block: a data or index block, decoded lazily (LevelDB's ``Block``).

A block payload (format in :mod:`block_builder`) is checked on construction: the restart array
must fit and every restart entry must parse, and the whole keys of the restart entries are kept.
Two ways to read it:

* :meth:`Block.find` — a point lookup: bisect the restart keys, then walk at most one restart
  interval (16 entries). This is what gets use, so a block fetched for one lookup is never
  fully decoded.
* :attr:`Block.keys` / :attr:`Block.values` — the first access decodes every entry into two
  parallel lists (kept on the block); iterators then step by list index and seek by ``bisect``.

Blocks live in the shared :class:`~cachedaemon.lsm.block_cache.BlockCache`; they are immutable
apart from the one-time decode, and used from the database's shard only.
"""

from __future__ import annotations

import bisect
import struct

from cachedaemon.errors import Corruption

_ENTRY = struct.Struct("<III")
_U32 = struct.Struct("<I")
_unpack_entry = _ENTRY.unpack_from


class Block:
    __slots__ = ("_data", "_keys", "_limit", "_restart_keys", "_restarts", "_values", "_where", "charge")

    def __init__(self, data: bytes, where: str) -> None:
        size = len(data)
        if size < 4:
            raise Corruption(f"{where}: block too short ({size} bytes)")
        (num_restarts,) = _U32.unpack_from(data, size - 4)
        limit = size - 4 - 4 * num_restarts
        if num_restarts == 0 or limit < 0:
            raise Corruption(f"{where}: bad restart count {num_restarts}")
        # An empty block (no entries) still carries one restart; it has no key.
        restarts = list(struct.unpack_from(f"<{num_restarts}I", data, limit)) if limit else []
        restart_keys = []
        try:
            for off in restarts:
                shared, unshared, _ = _unpack_entry(data, off)
                if shared or off + 12 + unshared > limit:
                    raise Corruption(f"{where}: bad restart entry at block offset {off}")
                restart_keys.append(data[off + 12 : off + 12 + unshared])
        except struct.error as e:
            raise Corruption(f"{where}: restart beyond the block") from e
        self._data = data
        self._limit = limit
        self._restarts = restarts
        self._restart_keys = restart_keys
        self._where = where
        self._keys: list[bytes] | None = None
        self._values: list[bytes] = []
        self.charge = size

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def keys(self) -> list[bytes]:
        if self._keys is None:
            self._decode()
        assert self._keys is not None
        return self._keys

    @property
    def values(self) -> list[bytes]:
        if self._keys is None:
            self._decode()
        return self._values

    def seek(self, target: bytes) -> int:
        """Index of the first key >= ``target`` (``len(self)`` if none)."""
        return bisect.bisect_left(self.keys, target)

    def find(self, target: bytes) -> tuple[bytes, bytes] | None:
        """The first entry with key >= ``target``, or ``None`` if every key is smaller."""
        if self._keys is not None:
            i = bisect.bisect_left(self._keys, target)
            return (self._keys[i], self._values[i]) if i < len(self._keys) else None
        r = bisect.bisect_left(self._restart_keys, target)
        if r < len(self._restart_keys) and self._restart_keys[r] == target:
            pos = self._restarts[r]
        elif r == 0:
            pos = 0
        else:
            pos = self._restarts[r - 1]
        data = self._data
        limit = self._limit
        last = b""
        where = self._where
        try:
            while pos < limit:
                shared, unshared, vlen = _unpack_entry(data, pos)
                pos += 12
                end = pos + unshared
                if shared > len(last) or end + vlen > limit:
                    raise Corruption(f"{where}: entry at block offset {pos - 12} is malformed")
                last = last[:shared] + data[pos:end] if shared else data[pos:end]
                if last >= target:
                    return last, data[end : end + vlen]
                pos = end + vlen
        except struct.error as e:
            raise Corruption(f"{where}: truncated entry at block offset {pos}") from e
        return None

    def _decode(self) -> None:
        data = self._data
        limit = self._limit
        where = self._where
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
        self._values = values
        self._keys = keys


def decode_block(data: bytes, where: str) -> Block:
    """Check a block payload's framing and wrap it; raises :class:`Corruption` (naming
    ``where``) on damage. Entries are decoded on first use."""
    return Block(data, where)
