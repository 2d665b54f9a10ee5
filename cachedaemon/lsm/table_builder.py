"""SstBuilder: writes one SST through a persistence writer (LevelDB's ``TableBuilder``).

Used by the flush and by compaction, on the database's shard. Entries are added
synchronously (:meth:`add`) and the finished blocks queue in memory; :meth:`drain` hands the
queue to the :class:`~cachedaemon.lsm.io.persistence.SequentialWriter` once it exceeds a chunk,
and :meth:`finish` writes the filter, metaindex and index blocks and the footer and closes the
writer (the file is durable when it returns). On any failure call :meth:`abort`.

File layout: data blocks, filter block, metaindex block, index block, footer
(``docs/sst-format.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

from cachedaemon.lsm.block_builder import BlockBuilder, _pack_entry
from cachedaemon.lsm.filter_block import FilterBlockBuilder
from cachedaemon.lsm.format import (
    COMPRESSION_BY_NAME,
    COMPRESSION_NONE,
    Compressor,
    block_with_trailer,
    encode_footer,
    encode_handle,
)
from cachedaemon.lsm.io.persistence import FileHandle, SequentialWriter

FILTER_META_KEY = b"filter.cachedaemon.BloomV1"
_M64 = (1 << 64) - 1
_from_bytes = int.from_bytes
_DRAIN_BYTES = 256 * 1024


class SstBuilder:
    def __init__(
        self,
        handle: FileHandle,
        writer: SequentialWriter,
        *,
        block_size: int = 8 * 1024,
        restart_interval: int = 16,
        bloom_bits_per_key: int = 10,
        compression: str = "none",
        zstd_level: int = 3,
    ) -> None:
        self.handle = handle
        self._writer = writer
        self._block_size = block_size
        self._data = BlockBuilder(restart_interval)
        self._index = BlockBuilder(1)
        self._filter = FilterBlockBuilder(bloom_bits_per_key) if bloom_bits_per_key > 0 else None
        if self._filter is not None:
            self._filter.start_block(0)
        self._compressor = Compressor(COMPRESSION_BY_NAME[compression], zstd_level)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._offset = 0
        self._last_key = b""
        self.smallest: bytes | None = None
        self.largest = b""
        self.num_entries = 0
        self.oldest_seqno = 0
        self.newest_seqno = 0
        self._closed = False

    @property
    def file_size(self) -> int:
        """Bytes emitted so far plus the open block (an estimate until :meth:`finish`)."""
        return self._offset + self._data.current_size_estimate()

    def add(self, ikey: bytes, value: bytes) -> None:
        """REQUIRES: ``ikey`` greater than every key added before."""
        if self.smallest is None:
            self.smallest = ikey
        self.largest = ikey
        seqno = (_M64 ^ _from_bytes(ikey[-8:], "big")) >> 8
        if self.num_entries == 0:
            self.oldest_seqno = self.newest_seqno = seqno
        elif seqno < self.oldest_seqno:
            self.oldest_seqno = seqno
        elif seqno > self.newest_seqno:
            self.newest_seqno = seqno
        self.num_entries += 1
        if self._filter is not None:
            self._filter.add_key(ikey[:-8])
        data = self._data
        data.add(ikey, value)
        self._last_key = ikey
        if data._size >= self._block_size:
            self._flush_data_block()

    def add_many(
        self, items: Iterable[tuple[bytes, bytes]], seqnos: tuple[int, int] | None = None
    ) -> None:
        """:meth:`add` for every ``(ikey, value)`` of ``items`` (sorted, each greater than
        every key added before), in one loop: the same bytes as calling :meth:`add` in turn.
        ``seqnos``, if given, is ``(oldest, newest)`` of the entries (a memtable knows it),
        which saves decoding every trailer.

        The flush's hot path. It inlines :meth:`BlockBuilder.add` and the filter's
        ``add_key`` (one Python frame per entry instead of three), so keep the three in step.
        """
        data = self._data
        interval = data._interval
        block_size = self._block_size
        filt = self._filter
        parts = data._parts
        restarts = data._restarts
        count = data._count
        size = data._size
        last = data._last
        fkeys = filt._keys if filt is not None else None
        flast = fkeys[-1] if fkeys else None
        n = self.num_entries
        oldest = self.oldest_seqno
        newest = self.newest_seqno
        ikey = b""
        decode = seqnos is None
        for ikey, value in items:
            if n == 0:
                self.smallest = ikey
                if decode:
                    oldest = newest = (_M64 ^ _from_bytes(ikey[-8:], "big")) >> 8
            elif decode:
                seqno = (_M64 ^ _from_bytes(ikey[-8:], "big")) >> 8
                if seqno < oldest:
                    oldest = seqno
                elif seqno > newest:
                    newest = seqno
            n += 1
            if fkeys is not None:
                up = ikey[:-8]
                if up != flast:
                    fkeys.append(up)
                    flast = up
            klen = len(ikey)
            if count % interval:
                m = len(last) if len(last) < klen else klen
                x = _from_bytes(ikey[:m], "big") ^ _from_bytes(last[:m], "big")
                shared = m - ((x.bit_length() + 7) >> 3)
                suffix = ikey[shared:]
            else:
                if count:
                    restarts.append(size)
                shared = 0
                suffix = ikey
            parts += (_pack_entry(shared, klen - shared, len(value)), suffix, value)
            size += 12 + klen - shared + len(value)
            last = ikey
            count += 1
            if size >= block_size:
                data._count = count
                data._size = size
                data._last = ikey
                self._last_key = ikey
                self._flush_data_block()
                parts = data._parts
                restarts = data._restarts
                count = 0
                size = 0
                last = b""
                if filt is not None:
                    fkeys = filt._keys
                    flast = fkeys[-1] if fkeys else None
        data._count = count
        data._size = size
        data._last = last
        if seqnos is not None and n:
            if self.num_entries == 0:
                oldest, newest = seqnos
            else:
                oldest = min(oldest, seqnos[0])
                newest = max(newest, seqnos[1])
        self.num_entries = n
        self.oldest_seqno = oldest
        self.newest_seqno = newest
        if ikey:
            self.largest = ikey
            self._last_key = ikey

    def _emit(self, kind: int, payload: bytes) -> tuple[int, int]:
        handle = (self._offset, len(payload))
        stored = block_with_trailer(kind, payload)
        self._pending.append(stored)
        self._pending_bytes += len(stored)
        self._offset += len(stored)
        return handle

    def _flush_data_block(self) -> None:
        if self._data.empty:
            return
        kind, payload = self._compressor.compress(self._data.finish())
        self._data.reset()
        handle = self._emit(kind, payload)
        self._index.add(self._last_key, encode_handle(*handle))
        if self._filter is not None:
            self._filter.start_block(self._offset)

    @property
    def should_drain(self) -> bool:
        return self._pending_bytes >= _DRAIN_BYTES

    async def drain(self) -> None:
        """Write queued blocks to the writer."""
        if self._pending:
            chunk = b"".join(self._pending)
            self._pending = []
            self._pending_bytes = 0
            await self._writer.append(chunk)

    async def finish(self) -> int:
        """Write the rest of the file, close (persist) it, and return the file size."""
        self._flush_data_block()
        meta = BlockBuilder(1)
        if self._filter is not None:
            filter_handle = self._emit(COMPRESSION_NONE, self._filter.finish())
            meta.add(FILTER_META_KEY, encode_handle(*filter_handle))
        metaindex_handle = self._emit(COMPRESSION_NONE, meta.finish())
        index_handle = self._emit(COMPRESSION_NONE, self._index.finish())
        footer = encode_footer(metaindex_handle, index_handle)
        self._pending.append(footer)
        self._offset += len(footer)
        await self.drain()
        self._closed = True
        await self._writer.close()
        return self._offset

    async def abort(self) -> None:
        if not self._closed:
            self._closed = True
            await self._writer.abort()
