"""Filter block: one bloom filter per ``2^base_lg`` bytes of data-block offsets (LevelDB's
``FilterBlockBuilder``/``FilterBlockReader``).

Layout::

    filter*                      filter i covers data blocks whose offset >> base_lg == i
    u32 LE offset of filter i    (one per filter)
    u32 LE offset of that array
    u8 base_lg                   (11: one filter per 2 KiB of file offsets)

Filters hold *escaped user keys plus terminator* (the internal key minus its 8-byte trailer),
so one probe covers every version of a user key. Built by one table builder; a reader is
immutable once built and shared by every lookup in its table.
"""

from __future__ import annotations

import struct

from cachedaemon.lsm.bloom import create_filter, key_may_match

_U32 = struct.Struct("<I")


class FilterBlockBuilder:
    def __init__(self, bits_per_key: int, base_lg: int = 11) -> None:
        self._bits_per_key = bits_per_key
        self._base_lg = base_lg
        self._keys: list[bytes] = []
        self._result: list[bytes] = []
        self._result_len = 0
        self._offsets: list[int] = []

    def start_block(self, block_offset: int) -> None:
        index = block_offset >> self._base_lg
        while index > len(self._offsets):
            self._generate()

    def add_key(self, key: bytes) -> None:
        keys = self._keys
        if not keys or keys[-1] != key:
            keys.append(key)

    def finish(self) -> bytes:
        if self._keys:
            self._generate()
        array_offset = self._result_len
        tail = b"".join(_U32.pack(o) for o in self._offsets)
        return b"".join(self._result) + tail + _U32.pack(array_offset) + bytes((self._base_lg,))

    def _generate(self) -> None:
        self._offsets.append(self._result_len)
        if not self._keys:
            return
        f = create_filter(self._keys, self._bits_per_key)
        self._result.append(f)
        self._result_len += len(f)
        self._keys = []


class FilterBlockReader:
    __slots__ = ("_array", "_base_lg", "_data", "_num")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._num = 0
        self._array = 0
        self._base_lg = 11
        n = len(data)
        if n < 5:
            return
        self._base_lg = data[-1]
        (array,) = _U32.unpack_from(data, n - 5)
        if array > n - 5:
            return
        self._array = array
        self._num = (n - 5 - array) // 4

    def key_may_match(self, block_offset: int, key: bytes) -> bool:
        index = block_offset >> self._base_lg
        if index < self._num:
            data = self._data
            pos = self._array + index * 4
            (start,) = _U32.unpack_from(data, pos)
            limit = _U32.unpack_from(data, pos + 4)[0] if index + 1 < self._num else self._array
            if start <= limit <= self._array:
                if start == limit:
                    return False  # no keys in that range
                return key_may_match(key, data[start:limit])
        return True  # errors are treated as potential matches
