"""TableCache: a bounded LRU of open :class:`SstReader` s (LevelDB's ``TableCache``).

One per database, on its shard. :meth:`find` returns an opened reader with a reference taken;
the caller must :meth:`release` it. At most ``capacity`` readers stay open; a reader evicted
while referenced (an iterator still walks it) is closed when its last reference goes.
:meth:`evict` drops a file for good (the file GC calls it before removing the file).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from cachedaemon.errors import Corruption
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.io.persistence import DataPersistence, FileHandle
from cachedaemon.lsm.table import SstReader


class TableCache:
    def __init__(
        self,
        data: DataPersistence,
        block_cache: BlockCache,
        capacity: int = 1000,
        *,
        verify_checksums: bool = True,
    ) -> None:
        self._data = data
        self.block_cache = block_cache
        self.capacity = max(1, capacity)
        self._verify = verify_checksums
        self._open: OrderedDict[FileHandle, SstReader] = OrderedDict()
        self._opening: dict[FileHandle, asyncio.Future[SstReader]] = {}
        self._to_close: list[SstReader] = []
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._open)

    def lookup(self, handle: FileHandle) -> SstReader | None:
        """The open reader for ``handle`` with a reference taken, or ``None`` (no waiting)."""
        table = self._open.get(handle)
        if table is not None:
            self.hits += 1
            self._open.move_to_end(handle)
            table.refs += 1
        return table

    async def find(self, handle: FileHandle) -> SstReader:
        table = self._open.get(handle)
        if table is not None:
            self.hits += 1
            self._open.move_to_end(handle)
            table.refs += 1
            return table
        pending = self._opening.get(handle)
        if pending is not None:
            table = await asyncio.shield(pending)
            table.refs += 1
            return table
        self.misses += 1
        fut: asyncio.Future[SstReader] = asyncio.get_running_loop().create_future()
        self._opening[handle] = fut
        try:
            table = await self._open_table(handle)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._opening[handle]
        if not fut.done():
            fut.set_result(table)
        self._open[handle] = table
        table.refs += 1
        await self._shrink()
        return table

    async def _open_table(self, handle: FileHandle) -> SstReader:
        reader = await self._data.open_random_access_reader(handle)
        if reader is None:
            raise Corruption(f"{handle.name} at offset 0: SST referenced by the manifest is missing")
        try:
            return await SstReader.open(handle, reader, self.block_cache, verify_checksums=self._verify)
        except BaseException:
            await reader.close()
            raise

    def release(self, table: SstReader) -> None:
        table.refs -= 1
        if table.refs == 0 and table.evicted:
            self._to_close.append(table)

    async def _shrink(self) -> None:
        while len(self._open) > self.capacity:
            _, victim = self._open.popitem(last=False)
            victim.evicted = True
            if victim.refs == 0:
                self._to_close.append(victim)
        await self._close_pending()

    async def _close_pending(self) -> None:
        while self._to_close:
            await self._to_close.pop().close()

    async def evict(self, handle: FileHandle) -> None:
        """Forget ``handle``: close its reader (now or at its last release), drop its blocks."""
        table = self._open.pop(handle, None)
        if table is not None:
            table.evicted = True
            if table.refs == 0:
                self._to_close.append(table)
        self.block_cache.erase_file(handle)
        await self._close_pending()

    async def close(self) -> None:
        for table in self._open.values():
            table.evicted = True
            if table.refs == 0:
                self._to_close.append(table)
        self._open.clear()
        await self._close_pending()
