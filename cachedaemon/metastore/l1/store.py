"""The row store the L1 metastore runs on: a tiny interface over a metastore domain.

L1 rows are ordinary LSM rows of one domain. The L1 code needs only:

- a **consistent snapshot** to read from (``get``, and ``scan`` of ``[start, end)`` forwards or
  backwards with a limit), released when done;
- a **persisted snapshot**: the rows as of the domain's persisted sequence number (what is in
  the bucket's manifest, so also what read replicas can see) — the object GC decides only from
  it;
- ``apply``: one atomic, durable batch of puts and deletes, visible to every snapshot taken after
  it returns;
- ``database``: the open ``lsm.Database`` the rows are in, when it can be read right now without
  waiting (the row cache, :mod:`~cachedaemon.metastore.l1.cache`, follows it).

:class:`DatabaseRowStore` adapts an ``lsm.Database`` (used by tests and the benchmark, and by
the domain adapter); adapters for other owners implement the same Protocol. Instances belong to
the shard that owns the domain; they are not thread-safe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from cachedaemon.errors import IOFailure
from cachedaemon.lsm import Database, Snapshot, WriteBatch
from cachedaemon.metastore.l1.errors import TransportError

#: One row operation: ``(key, value)`` puts, ``(key, None)`` deletes.
RowOp = tuple[bytes, bytes | None]


class RowReader(Protocol):
    """Reads from one consistent view of the rows: those of ``database`` at ``seqno``."""

    @property
    def database(self) -> Database: ...

    @property
    def seqno(self) -> int: ...

    async def get(self, key: bytes) -> bytes | None: ...

    async def scan(
        self, start: bytes, end: bytes, *, limit: int | None = None, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Rows with ``start <= key < end`` in key order (descending if ``reverse``), at most
        ``limit`` of them."""
        ...


class RowStore(Protocol):
    def snapshot(self, *, for_write: bool = False) -> AbstractAsyncContextManager[RowReader]:
        """A reader over every row applied so far. ``for_write``: the caller will apply a batch
        built from it (a store may create its domain then; a read never does)."""
        ...

    def persisted_snapshot(self) -> AbstractAsyncContextManager[RowReader]:
        """A reader over the rows already persisted in the domain's manifest (seqno <= the
        persisted seqno). It may miss rows that were persisted (never shows unpersisted ones)."""
        ...

    async def apply(self, ops: Sequence[RowOp]) -> None:
        """Apply ``ops`` atomically and durably (a later op on the same key wins)."""
        ...

    def database(self) -> Database | None:
        """The database the rows live in now, if it is open and can be read without waiting
        (no opening, reopening or refresh due); ``None`` otherwise."""
        ...


async def scan_all(reader: RowReader, start: bytes, end: bytes, *, page: int = 1024
                   ) -> AsyncIterator[tuple[bytes, bytes]]:
    """Every row of ``[start, end)`` in key order, read ``page`` rows at a time."""
    while True:
        rows = await reader.scan(start, end, limit=page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        start = rows[-1][0] + b"\x00"


# --- the adapter over an lsm.Database --------------------------------------------------------


class DatabaseReader:
    """Reads of one :class:`Database` at one seqno (a pinned :class:`Snapshot` or a bare int)."""

    __slots__ = ("_db", "_snap")

    def __init__(self, db: Database, snap: Snapshot | int) -> None:
        self._db = db
        self._snap = snap

    @property
    def database(self) -> Database:
        return self._db

    @property
    def seqno(self) -> int:
        return self._snap if isinstance(self._snap, int) else self._snap.seqno

    async def get(self, key: bytes) -> bytes | None:
        try:
            return await self._db.get(key, self._snap)
        except IOFailure as exc:
            raise TransportError(f"L1 read failed: {exc.message}") from exc

    async def scan(
        self, start: bytes, end: bytes, *, limit: int | None = None, reverse: bool = False
    ) -> list[tuple[bytes, bytes]]:
        try:
            return await self._db.scan(start, end, limit=limit, reverse=reverse,
                                       snapshot=self._snap)
        except IOFailure as exc:
            raise TransportError(f"L1 scan failed: {exc.message}") from exc


@asynccontextmanager
async def snapshot_reader(db: Database, seqno: int | None = None) -> AsyncIterator[DatabaseReader]:
    """A reader over a fresh snapshot of ``db`` (now, or at ``seqno``), released on exit."""
    snap = db.create_snapshot(seqno)
    try:
        yield DatabaseReader(db, snap)
    finally:
        snap.release()


def write_batch_of(ops: Sequence[RowOp]) -> WriteBatch:
    """The one atomic batch of row operations: puts, and deletes where the value is None."""
    batch = WriteBatch()
    for key, value in ops:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    return batch


class DatabaseRowStore:
    """:class:`RowStore` over an open ``lsm.Database``.

    ``apply_batch`` replaces the plain ``db.apply`` when the owner makes writes durable in
    its own log first (a metastore domain); ``persisted_seqno`` reports what its manifest holds
    (default: the database's ``max_persisted_seqno``). The persisted snapshot pins that seqno,
    so compaction keeps every version it reads for as long as it is open.
    """

    def __init__(
        self,
        db: Database,
        *,
        apply_batch: Callable[[WriteBatch], Awaitable[object]] | None = None,
        persisted_seqno: Callable[[], int] | None = None,
    ) -> None:
        self.db = db
        self._apply_batch = apply_batch or db.apply
        self._persisted_seqno = persisted_seqno or (lambda: db.max_persisted_seqno)

    def snapshot(self, *, for_write: bool = False) -> AbstractAsyncContextManager[RowReader]:
        return snapshot_reader(self.db)

    @asynccontextmanager
    async def persisted_snapshot(self) -> AsyncIterator[RowReader]:
        async with snapshot_reader(self.db, self._persisted_seqno()) as reader:
            yield reader

    async def apply(self, ops: Sequence[RowOp]) -> None:
        batch = write_batch_of(ops)
        try:
            await self._apply_batch(batch)
        except IOFailure as exc:
            raise TransportError(f"L1 write failed: {exc.message}") from exc

    def database(self) -> Database | None:
        return self.db
