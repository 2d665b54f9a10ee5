"""TableCache: a bounded LRU of open :class:`SstReader` s (LevelDB's ``TableCache``).

One per database, on its shard. :meth:`find` returns an opened reader with a reference taken;
the caller must :meth:`release` it. At most ``capacity`` readers stay open; a reader evicted
while referenced (an iterator still walks it) is closed when its last reference goes.
:meth:`evict` drops a file for good (the file GC calls it before removing the file).

Concurrency (single loop; the rule is written down in ``docs/concurrency.md``): opening a
reader waits (a download, a thread hop), so concurrent misses of one file share one open. A
task that finds an open in flight registers as a *waiter*; when the open lands, the opener
takes one reference for itself **and one for every registered waiter** in the same step that
publishes the reader, so no eviction can close it between the open landing and a waiter
resuming (LevelDB's ``Cache::Lookup``/``Insert`` hand out a referenced handle under the cache
mutex for the same reason). A waiter cancelled after the open landed gives its reference back;
one cancelled before simply unregisters. If the opener fails, every waiter gets its error; if
the opener is cancelled, the waiters start over. An open that lands after :meth:`close` closes
its reader and raises :class:`~cachedaemon.errors.GateClosed`. Closing a reader is cleanup: it
runs to the end even if the task that started it is cancelled, and a failure is logged, never
raised into the lookup that happened to evict the reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from cachedaemon.errors import Corruption, GateClosed
from cachedaemon.lsm.block_cache import BlockCache
from cachedaemon.lsm.io.persistence import DataPersistence, FileHandle
from cachedaemon.lsm.table import SstReader

log = logging.getLogger(__name__)


class _OpenAborted(Exception):
    """The task opening a file was cancelled; its waiters start over."""


class _Opening:
    """An open in flight: its outcome, and how many waiters want a reference from it."""

    __slots__ = ("future", "waiters")

    def __init__(self, future: asyncio.Future[SstReader]) -> None:
        self.future = future
        self.waiters = 0


def _log_close_failure(table: SstReader) -> Callable[[asyncio.Future[None]], None]:
    def done(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("lsm: closing the reader of %s failed: %r", table.handle.name,
                      fut.exception())

    return done


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
        self._opening: dict[FileHandle, _Opening] = {}
        self._to_close: list[SstReader] = []
        self._closed = False
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
        """The reader for ``handle`` with a reference taken (opening it if needed)."""
        while True:
            table = self.lookup(handle)
            if table is not None:
                return table
            if self._closed:
                raise GateClosed(f"table cache is closed (finding {handle.name})")
            opening = self._opening.get(handle)
            if opening is None:
                return await self._open_and_publish(handle)
            try:
                return await self._join(opening)
            except _OpenAborted:
                continue  # the opener was cancelled: look again

    async def _join(self, opening: _Opening) -> SstReader:
        """Wait for ``opening``; the opener takes this waiter's reference when it lands."""
        opening.waiters += 1
        fut = opening.future
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # our reference was taken for us: give it back
            else:
                opening.waiters -= 1
            raise

    async def _open_and_publish(self, handle: FileHandle) -> SstReader:
        self.misses += 1
        opening = _Opening(asyncio.get_running_loop().create_future())
        self._opening[handle] = opening
        fut = opening.future
        try:
            table = await self._open_table(handle)
        except BaseException as e:
            del self._opening[handle]
            fut.set_exception(_OpenAborted() if isinstance(e, asyncio.CancelledError) else e)
            fut.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        del self._opening[handle]
        if self._closed:
            err = GateClosed(f"table cache closed while {handle.name} was being opened")
            fut.set_exception(err)
            fut.exception()
            await self._close_reader(table)
            raise err
        # Publish and take every reference in one step (see the module docstring).
        table.refs += 1 + opening.waiters
        self._open[handle] = table
        fut.set_result(table)
        try:
            await self._shrink()
        except BaseException:  # cancelled while closing evicted readers: ours goes back
            self.release(table)
            raise
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
        assert table.refs > 0, f"{table.handle.name}: released more often than found"
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
            await self._close_reader(self._to_close.pop())

    async def _close_reader(self, table: SstReader) -> None:
        # Closing is cleanup: shielded (a cancelled caller does not leave the reader half
        # closed: it finishes on its own), and a failure is logged, never raised into an
        # unrelated lookup.
        closing = asyncio.ensure_future(table.close())
        closing.add_done_callback(_log_close_failure(table))
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # logged by the callback

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
        self._closed = True
        for table in self._open.values():
            table.evicted = True
            if table.refs == 0:
                self._to_close.append(table)
        self._open.clear()
        await self._close_pending()
