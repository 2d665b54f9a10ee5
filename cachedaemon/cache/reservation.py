"""ReservationGuard: cache space (bytes, objects) held by one writer until it writes or gives up.

Shard 0's coordinator keeps every live reservation in a table by **id**, with the shard that
holds it (``docs/shards.md``): that is how it releases what a dead shard held. The holder — any
shard — gets a guard for its id. A guard does not own accounting state: every change is sent
to the coordinator through its :class:`ReservationSink` (a direct call on shard 0, a posted
message from another shard), so changes from one shard are applied in the order they were made,
and before any later call from that shard (``stats()``, say) reaches shard 0.

* ``wrote_data(bytes, objects)`` turns the reservation into committed usage: reserved -= held,
  current += written. Once: the guard is empty afterwards and a second call raises.
* ``merge(other)`` folds another guard's units into this one (its id is merged into this one's
  on the coordinator) and empties ``other``.
* ``take()`` empties the guard and returns its id for a commit to account.
* ``close()`` (also the context-manager exit, and garbage collection through
  ``weakref.finalize``) releases whatever is still held, with nothing written. Idempotent.

A guard is used by one task at a time; it is not locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from types import TracebackType
from typing import Protocol


class ReservationSink(Protocol):
    """Where a guard's changes go: the coordinator, or a shard's way to it."""

    def release_reservation(self, rid: int, wrote_b: int, wrote_o: int) -> None: ...

    def merge_reservations(self, into: int, frm: int) -> None: ...


class _State:
    """The mutable part, shared with the finalizer (which must not reference the guard)."""

    __slots__ = ("bytes", "loop", "objects", "rid", "sink", "wrote")

    def __init__(self, rid: int, nbytes: int, nobjects: int, sink: ReservationSink) -> None:
        self.rid = rid
        self.bytes = nbytes
        self.objects = nobjects
        self.sink = sink
        self.wrote = False
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None


def _release(state: _State) -> None:
    if state.rid:
        rid = state.rid
        state.rid = 0
        state.bytes = state.objects = 0
        state.sink.release_reservation(rid, 0, 0)


def _finalize(state: _State) -> None:
    """Release now when collected on the guard's own loop; from anywhere else, hand the
    release to that loop."""
    if not state.rid:
        return
    loop = state.loop
    if loop is None or loop.is_closed():
        return  # the loop is gone: nothing left to account
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _release(state)
        return
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_release, state)


class ReservationGuard:
    """Units reserved in the cache under coordinator id ``rid``. See the module docstring."""

    __slots__ = ("__weakref__", "_finalizer", "_state")

    def __init__(self, rid: int, nbytes: int, nobjects: int, sink: ReservationSink) -> None:
        self._state = _State(rid, nbytes, nobjects, sink)
        self._finalizer = weakref.finalize(self, _finalize, self._state)

    @property
    def rid(self) -> int:
        return self._state.rid

    @property
    def bytes(self) -> int:
        return self._state.bytes

    @property
    def objects(self) -> int:
        return self._state.objects

    def wrote_data(self, nbytes: int, nobjects: int) -> None:
        """Account ``nbytes``/``nobjects`` as committed and release the reservation. Once."""
        state = self._state
        if state.wrote:
            raise RuntimeError("ReservationGuard.wrote_data called twice")
        state.wrote = True
        rid = state.rid
        state.rid = 0
        state.bytes = state.objects = 0
        if rid or nbytes or nobjects:
            state.sink.release_reservation(rid, nbytes, nobjects)

    def take(self) -> tuple[int, int, int]:
        """Empty the guard and return ``(id, bytes, objects)`` without releasing: the caller
        hands the id to the coordinator with what it committed."""
        state = self._state
        out = (state.rid, state.bytes, state.objects)
        state.rid = 0
        state.bytes = state.objects = 0
        return out

    def merge(self, other: ReservationGuard) -> None:
        """Add ``other``'s units to this guard; ``other`` is left empty."""
        if other is self:
            return
        rid, b, o = other.take()
        if not rid:
            return
        state = self._state
        if not state.rid:  # this guard is spent: take over the other's reservation
            state.rid, state.bytes, state.objects = rid, b, o
            return
        state.sink.merge_reservations(state.rid, rid)
        state.bytes += b
        state.objects += o

    def close(self) -> None:
        """Release what is still held (nothing written). Idempotent."""
        _release(self._state)

    def __enter__(self) -> ReservationGuard:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReservationGuard(id={self.rid}, bytes={self.bytes}, objects={self.objects})"
