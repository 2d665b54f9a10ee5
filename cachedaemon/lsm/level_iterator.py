"""LevelIterator: concatenates the SSTs of one sorted level (LevelDB's
``LevelFileNumIterator`` + ``TwoLevelIterator``).

Files must be sorted and non-overlapping (levels >= 1, or a single L0 file). Each file is
opened through the :class:`~cachedaemon.lsm.table_cache.TableCache` when the iterator reaches
it and released when it moves on, so a long scan keeps one reader per level open.
Single task, database shard.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from cachedaemon.lsm.iterator import InternalIterator
from cachedaemon.lsm.table import SstIterator, SstReader

if TYPE_CHECKING:
    from cachedaemon.lsm.table_cache import TableCache
    from cachedaemon.lsm.version_edit import FileMeta


class LevelIterator(InternalIterator):
    __slots__ = ("_cache", "_fi", "_files", "_it", "_largest", "_table")

    def __init__(self, files: list[FileMeta], cache: TableCache) -> None:
        self._files = files
        self._largest = [f.largest for f in files]
        self._cache = cache
        self._fi = -1
        self._table: SstReader | None = None
        self._it: SstIterator | None = None

    def valid(self) -> bool:
        it = self._it
        return it is not None and it.valid()

    def key(self) -> bytes:
        assert self._it is not None
        return self._it.key()

    def value(self) -> bytes:
        assert self._it is not None
        return self._it.value()

    async def _open(self, fi: int) -> bool:
        if fi == self._fi and self._it is not None:
            return True
        self._release()
        self._fi = fi
        if fi < 0 or fi >= len(self._files):
            return False
        self._table = await self._cache.find(self._files[fi].handle)
        self._it = self._table.iterator()
        return True

    def _release(self) -> None:
        if self._table is not None:
            self._cache.release(self._table)
        self._table = None
        self._it = None

    async def _skip_forward(self) -> None:
        while self._it is not None and not self._it.valid():
            if not await self._open(self._fi + 1):
                return
            assert self._it is not None
            await self._it.seek_to_first()

    async def _skip_backward(self) -> None:
        while self._it is not None and not self._it.valid():
            if not await self._open(self._fi - 1):
                return
            assert self._it is not None
            await self._it.seek_to_last()

    async def seek(self, target: bytes) -> None:
        if await self._open(bisect.bisect_left(self._largest, target)):
            assert self._it is not None
            await self._it.seek(target)
            await self._skip_forward()

    async def seek_to_first(self) -> None:
        if await self._open(0):
            assert self._it is not None
            await self._it.seek_to_first()
            await self._skip_forward()

    async def seek_to_last(self) -> None:
        if await self._open(len(self._files) - 1):
            assert self._it is not None
            await self._it.seek_to_last()
            await self._skip_backward()

    async def next(self) -> None:
        it = self._it
        assert it is not None
        # Inlined SstIterator.next for the in-run case (the hot path of every scan).
        it._i += 1
        if it._i >= it._n:
            await it.next_run()
            if not it.valid():
                await self._skip_forward()

    async def prev(self) -> None:
        assert self._it is not None
        await self._it.prev()
        if not self._it.valid():
            await self._skip_backward()

    async def close(self) -> None:
        self._release()
