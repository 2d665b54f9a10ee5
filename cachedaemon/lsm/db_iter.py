"""DBIter: the user's view of the database at one snapshot (LevelDB's ``DBIter``).

Wraps a merged internal iterator and collapses it: for every user key only the newest version
with seqno <= the snapshot counts, and a key whose newest visible version is a tombstone is
skipped. Supports forward and reverse steps with LevelDB's state machine: moving forward, the
internal iterator sits *on* the entry returned; moving in reverse, it sits just *before* all
entries of the current user key, whose key and value are saved.

Visibility and kind are read straight off the trailer bytes (see
:mod:`~cachedaemon.lsm.dbformat`): a version is visible iff ``ikey[-8:] >= trailer(snapshot,
0xFF)``, and its last byte is ``0xFF`` for a value and ``0xFE`` for a tombstone.

Created by :meth:`Database.iterator`; holds the database version it read from until
:meth:`close` (or ``async with``). One task, the database's shard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType

from cachedaemon.lsm.dbformat import KIND_SEEK, seek_key, trailer, unescape, user_prefix
from cachedaemon.lsm.iterator import InternalIterator

_VALUE_BYTE = 0xFF  # last trailer byte of a value: 0xFF - KIND_VALUE
_DELETE_BYTE = 0xFE  # 0xFF - KIND_DELETE
_FORWARD = 0
_REVERSE = 1


class DBIter:
    def __init__(
        self,
        it: InternalIterator,
        snapshot: int,
        on_close: Callable[[], None] | None = None,
        reverse: bool = False,
    ) -> None:
        self._it = it
        self._reverse = reverse
        self._positioned = False
        self._snapshot = snapshot
        self._visible = trailer(snapshot, KIND_SEEK)
        self._on_close = on_close
        self._direction = _FORWARD
        self._valid = False
        self._saved_key = b""  # escaped user key + terminator
        self._saved_value = b""
        self._closed = False

    @property
    def snapshot(self) -> int:
        return self._snapshot

    def valid(self) -> bool:
        return self._valid

    def key(self) -> bytes:
        assert self._valid
        if self._direction == _FORWARD:
            return unescape(self._it.key()[:-10])
        return unescape(self._saved_key[:-2])

    def value(self) -> bytes:
        assert self._valid
        if self._direction == _FORWARD:
            return self._it.value()
        return self._saved_value

    async def _find_next_user_entry(self, skipping: bool, skip: bytes) -> None:
        it = self._it
        visible = self._visible
        while it.valid():
            ikey = it.key()
            if ikey[-8:] >= visible:
                up = ikey[:-8]
                if ikey[-1] == _DELETE_BYTE:
                    skip = up
                    skipping = True
                elif not (skipping and up <= skip):
                    self._valid = True
                    self._saved_key = b""
                    return
            await it.next()
        self._valid = False
        self._saved_key = b""

    async def _find_prev_user_entry(self) -> None:
        it = self._it
        visible = self._visible
        value_deleted = True
        if it.valid():
            while True:
                ikey = it.key()
                if ikey[-8:] >= visible:
                    up = ikey[:-8]
                    if not value_deleted and up < self._saved_key:
                        break
                    if ikey[-1] == _DELETE_BYTE:
                        value_deleted = True
                        self._saved_key = b""
                        self._saved_value = b""
                    else:
                        value_deleted = False
                        self._saved_key = up
                        self._saved_value = it.value()
                await it.prev()
                if not it.valid():
                    break
        if value_deleted:
            self._valid = False
            self._saved_key = b""
            self._saved_value = b""
            self._direction = _FORWARD
        else:
            self._valid = True

    async def seek_to_first(self) -> None:
        self._positioned = True
        self._direction = _FORWARD
        self._saved_value = b""
        await self._it.seek_to_first()
        await self._find_next_user_entry(False, b"")

    async def seek_to_last(self) -> None:
        self._positioned = True
        self._direction = _REVERSE
        self._saved_value = b""
        await self._it.seek_to_last()
        await self._find_prev_user_entry()

    async def seek(self, user_key: bytes) -> None:
        """Position at the first user key >= ``user_key``."""
        self._positioned = True
        self._direction = _FORWARD
        self._saved_value = b""
        await self._it.seek(user_prefix(user_key) + self._visible)
        await self._find_next_user_entry(False, b"")

    async def seek_before(self, user_key: bytes) -> None:
        """Position at the last user key < ``user_key`` (a reverse scan's first step)."""
        self._positioned = True
        self._direction = _REVERSE
        self._saved_value = b""
        # Internal keys below the newest possible version of ``user_key`` are exactly the
        # versions of smaller user keys; from the last of them, walk back as
        # ``seek_to_last`` does.
        await self._it.seek_before(seek_key(user_key))
        await self._find_prev_user_entry()

    async def seek_for_prev(self, user_key: bytes) -> None:
        """Position at the last user key <= ``user_key``."""
        await self.seek(user_key)
        if not self._valid:
            await self.seek_to_last()
        elif self.key() != user_key:
            await self.prev()

    async def next(self) -> None:
        assert self._valid
        it = self._it
        if self._direction == _REVERSE:
            self._direction = _FORWARD
            # The internal iterator is just before the saved key's entries: step into them.
            if not it.valid():
                await it.seek_to_first()
            else:
                await it.next()
            if not it.valid():
                self._valid = False
                self._saved_key = b""
                return
            skip = self._saved_key
        else:
            skip = it.key()[:-8]
            await it.next()
            if not it.valid():
                self._valid = False
                return
            # Fast path (the common case in a scan): the next entry is a visible value of a
            # new user key.
            ikey = it.key()
            if ikey[-1] == _VALUE_BYTE and ikey[:-8] > skip and ikey[-8:] >= self._visible:
                return
        await self._find_next_user_entry(True, skip)

    async def prev(self) -> None:
        assert self._valid
        it = self._it
        if self._direction == _FORWARD:
            self._saved_key = it.key()[:-8]
            while True:
                await it.prev()
                if not it.valid():
                    self._valid = False
                    self._saved_key = b""
                    self._saved_value = b""
                    return
                if it.key()[:-8] < self._saved_key:
                    break
            self._direction = _REVERSE
        await self._find_prev_user_entry()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._valid = False
        try:
            await self._it.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    async def __aenter__(self) -> DBIter:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def items(self) -> AsyncIterator[tuple[bytes, bytes]]:
        """From the current position forward: ``async for k, v in it.items()``."""
        while self._valid:
            yield self.key(), self.value()
            await self.next()

    async def __aiter__(self) -> AsyncIterator[tuple[bytes, bytes]]:
        """``async for k, v in db.iterator(reverse=...)``: from the current position (or, if
        never positioned, from the first / last key) ascending, or descending if the iterator
        was made with ``reverse=True``. Closes the iterator at the end."""
        try:
            if not self._positioned:
                await (self.seek_to_last() if self._reverse else self.seek_to_first())
            while self._valid:
                yield self.key(), self.value()
                await (self.prev() if self._reverse else self.next())
        finally:
            await self.close()
