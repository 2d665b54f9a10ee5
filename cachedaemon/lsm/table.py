"""SstReader: random access to one SST through a persistence reader (LevelDB's ``Table``).

:meth:`SstReader.open` reads the footer, the index, the metaindex and the filter once; data
blocks are read on demand (one ``read`` each), checked, decompressed, decoded and kept in the
database's shared :class:`~cachedaemon.lsm.block_cache.BlockCache`. Any damage — a bad block
checksum, a bad magic, a truncated file, an entry overrunning its block — raises
:class:`~cachedaemon.errors.Corruption` naming the file and the offset; damaged bytes are never
returned as data.

Readers are opened and shared through the :class:`~cachedaemon.lsm.table_cache.TableCache` on
the database's shard.
"""

from __future__ import annotations

import bisect

from cachedaemon.errors import Corruption
from cachedaemon.lsm.block import Block, decode_block
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.filter_block import FilterBlockReader
from cachedaemon.lsm.format import (
    BLOCK_TRAILER_LEN,
    FOOTER_LEN,
    HANDLE_LEN,
    decode_footer,
    decode_handle,
    unwrap_block,
)
from cachedaemon.lsm.io.persistence import FileHandle, RandomAccessReader
from cachedaemon.lsm.iterator import InternalIterator
from cachedaemon.lsm.table_builder import FILTER_META_KEY


class SstReader:
    def __init__(
        self,
        handle: FileHandle,
        reader: RandomAccessReader,
        size: int,
        index: Block,
        handles: list[tuple[int, int]],
        filter_reader: FilterBlockReader | None,
        cache: BlockCache,
        verify: bool,
    ) -> None:
        self.handle = handle
        self._reader = reader
        self.size = size
        self.index_keys = index.keys
        self.handles = handles
        self._filter = filter_reader
        self._cache = cache
        self._number = cache.file_number(handle)
        self._verify = verify
        self.refs = 0
        self.evicted = False
        #: Block loads (cache misses) served by this reader.
        self.block_reads = 0

    @classmethod
    async def open(
        cls,
        handle: FileHandle,
        reader: RandomAccessReader,
        cache: BlockCache,
        *,
        verify_checksums: bool = True,
    ) -> SstReader:
        name = handle.name
        size = reader.size()
        if size < FOOTER_LEN:
            raise Corruption(f"{name} at offset 0: file too short for a footer ({size} bytes)")
        footer_at = size - FOOTER_LEN
        footer = await reader.read(footer_at, FOOTER_LEN)
        metaindex, index_h = decode_footer(footer, f"{name} at offset {footer_at}")
        index = decode_block(
            await cls._read_raw(reader, name, size, *index_h, True), f"{name} at offset {index_h[0]}"
        )
        handles = []
        for i, value in enumerate(index.values):
            if len(value) != HANDLE_LEN:
                raise Corruption(f"{name} at offset {index_h[0]}: index entry {i} malformed")
            off, n = decode_handle(value)
            if off + n + BLOCK_TRAILER_LEN > footer_at:
                raise Corruption(f"{name} at offset {off}: block beyond the end of the file")
            handles.append((off, n))
        filter_reader = None
        meta = decode_block(
            await cls._read_raw(reader, name, size, *metaindex, True),
            f"{name} at offset {metaindex[0]}",
        )
        for key, value in zip(meta.keys, meta.values, strict=True):
            if key == FILTER_META_KEY and len(value) == HANDLE_LEN:
                fh = decode_handle(value)
                filter_reader = FilterBlockReader(await cls._read_raw(reader, name, size, *fh, True))
        return cls(handle, reader, size, index, handles, filter_reader, cache, verify_checksums)

    @staticmethod
    async def _read_raw(
        reader: RandomAccessReader, name: str, size: int, offset: int, n: int, verify: bool
    ) -> bytes:
        if offset + n + BLOCK_TRAILER_LEN > size:
            raise Corruption(f"{name} at offset {offset}: block extends past the end of the file")
        stored = await reader.read(offset, n + BLOCK_TRAILER_LEN)
        return unwrap_block(stored, f"{name} at offset {offset}", verify)

    def __len__(self) -> int:
        return len(self.handles)

    async def read_block(self, i: int) -> Block:
        off, n = self.handles[i]
        key = (self._number, off)
        block = self._cache.get(key)
        if block is None:
            self.block_reads += 1
            self._cache.misses += 1
            where = f"{self.handle.name} at offset {off}"
            payload = await self._read_raw(self._reader, self.handle.name, self.size, off, n, self._verify)
            block = decode_block(payload, where)
            self._cache.insert(key, block)
        return block

    async def get(self, seek: bytes, uprefix: bytes) -> tuple[bytes, bytes] | None:
        """The first entry >= ``seek`` if it belongs to the user key whose escaped form plus
        terminator is ``uprefix``; else ``None``."""
        i = bisect.bisect_left(self.index_keys, seek)
        if i == len(self.index_keys):
            return None
        off = self.handles[i][0]
        # A cached block answers faster than the bloom filter; the filter only saves reads.
        block = self._cache.get((self._number, off))
        if block is None:
            if self._filter is not None and not self._filter.key_may_match(off, uprefix):
                return None
            block = await self.read_block(i)
        found = block.find(seek)
        if found is not None:
            k = found[0]
            if len(k) - 8 == len(uprefix) and k.startswith(uprefix):
                return found
        return None

    def may_contain(self, uprefix: bytes, seek: bytes) -> bool:
        """Cheap check (index + filter, no block read)."""
        i = bisect.bisect_left(self.index_keys, seek)
        if i == len(self.index_keys):
            return False
        return self._filter is None or self._filter.key_may_match(self.handles[i][0], uprefix)

    def iterator(self) -> SstIterator:
        return SstIterator(self)

    async def close(self) -> None:
        await self._reader.close()


class SstIterator(InternalIterator):
    """Two-level iterator: index entries -> data blocks (loaded on demand, cached), stepped
    through one run (restart interval) at a time, so a seek decodes one run of its block, not
    the whole block. ``_keys``/``_values`` are the current run's entries and ``_i`` the
    position in them (``LevelIterator.next`` steps ``_i`` itself while it stays in the run)."""

    __slots__ = ("_bi", "_block", "_i", "_keys", "_n", "_r", "_table", "_values")

    def __init__(self, table: SstReader) -> None:
        self._table = table
        self._bi = -1
        self._block: Block | None = None
        self._r = 0
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        self._i = 0
        self._n = 0

    def valid(self) -> bool:
        return 0 <= self._i < self._n

    def key(self) -> bytes:
        return self._keys[self._i]

    def value(self) -> bytes:
        return self._values[self._i]

    async def _load(self, bi: int) -> Block | None:
        """Make block ``bi`` current (no run yet); ``None`` past either end."""
        if bi < 0 or bi >= len(self._table.handles):
            self._bi = bi
            self._block = None
            self._keys = self._values = []
            self._n = 0
            self._i = 0
            return None
        block = await self._table.read_block(bi)
        self._bi = bi
        self._block = block
        return block

    def _set_run(self, block: Block, r: int) -> None:
        self._r = r
        self._keys, self._values = block.run(r)
        self._n = len(self._keys)

    async def seek(self, target: bytes) -> None:
        block = await self._load(bisect.bisect_left(self._table.index_keys, target))
        if block is None:
            return
        if not block.nruns:
            await self.next_block()
            return
        r = block.run_for(target)
        self._set_run(block, r)
        self._i = bisect.bisect_left(self._keys, target)
        if self._i == self._n:
            await self.next_run()

    async def seek_to_first(self) -> None:
        block = await self._load(0)
        if block is None:
            return
        if not block.nruns:
            await self.next_block()
            return
        self._set_run(block, 0)
        self._i = 0

    async def seek_to_last(self) -> None:
        block = await self._load(len(self._table.handles) - 1)
        if block is None:
            return
        if not block.nruns:
            await self._prev_block()
            return
        self._set_run(block, block.nruns - 1)
        self._i = self._n - 1

    async def next_run(self) -> None:
        """Move to the first entry of the next run (of this block, or of the next one)."""
        block = self._block
        if block is not None and self._r + 1 < block.nruns:
            self._set_run(block, self._r + 1)
            self._i = 0
        else:
            await self.next_block()

    async def next_block(self) -> None:
        while True:
            block = await self._load(self._bi + 1)
            if block is None:
                return
            if block.nruns:
                self._set_run(block, 0)
                self._i = 0
                return

    async def _prev_block(self) -> None:
        while True:
            block = await self._load(self._bi - 1)
            if block is None:
                self._i = -1
                return
            if block.nruns:
                self._set_run(block, block.nruns - 1)
                self._i = self._n - 1
                return

    async def next(self) -> None:
        self._i += 1
        if self._i >= self._n:
            await self.next_run()

    async def prev(self) -> None:
        self._i -= 1
        if self._i < 0:
            block = self._block
            if block is not None and self._r > 0:
                self._set_run(block, self._r - 1)
                self._i = self._n - 1
            else:
                await self._prev_block()
