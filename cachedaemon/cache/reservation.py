"""ReservationGuard: cache space (bytes, objects) held by one writer until it writes or gives up.

Made by :meth:`CacheCoordinator.reserve` (shard 0) and handed to the caller, which may live on
any shard. The guard does not own accounting state itself: every change is *posted* to the
coordinator's loop (a direct call on shard 0, ``call_soon_threadsafe`` from another shard), so
posts from one shard are applied in the order they were made, and before any later cross-shard
call from that shard (e.g. ``stats()``) reaches shard 0.

* ``wrote_data(bytes, objects)`` turns the reservation into committed usage: reserved -= held,
  current += written. Once: the guard is empty afterwards and a second call raises.
* ``merge(other)`` folds another guard's units into this one and empties ``other``.
* ``close()`` (also the context-manager exit, and garbage collection through
  ``weakref.finalize``) releases whatever is still held, with nothing written. Idempotent.

A guard is used by one task at a time; it is not locked.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import TracebackType

#: Posts (held_bytes, held_objects, written_bytes, written_objects) to the coordinator.
ReleaseFn = Callable[[int, int, int, int], None]


class _State:
    """The mutable part, shared with the finalizer (which must not reference the guard)."""

    __slots__ = ("bytes", "objects", "release", "wrote")

    def __init__(self, nbytes: int, nobjects: int, release: ReleaseFn) -> None:
        self.bytes = nbytes
        self.objects = nobjects
        self.release = release
        self.wrote = False


def _finalize(state: _State) -> None:
    if state.bytes or state.objects:
        b, o = state.bytes, state.objects
        state.bytes = state.objects = 0
        try:
            state.release(b, o, 0, 0)
        except RuntimeError:  # the coordinator's loop is gone: nothing left to account
            pass


class ReservationGuard:
    """Units reserved in the cache. See the module docstring."""

    __slots__ = ("__weakref__", "_finalizer", "_state")

    def __init__(self, nbytes: int, nobjects: int, release: ReleaseFn) -> None:
        self._state = _State(nbytes, nobjects, release)
        self._finalizer = weakref.finalize(self, _finalize, self._state)

    @property
    def bytes(self) -> int:
        return self._state.bytes

    @property
    def objects(self) -> int:
        return self._state.objects

    @property
    def release_fn(self) -> ReleaseFn:
        return self._state.release

    def wrote_data(self, nbytes: int, nobjects: int) -> None:
        """Account ``nbytes``/``nobjects`` as committed and release the reservation. Once."""
        state = self._state
        if state.wrote:
            raise RuntimeError("ReservationGuard.wrote_data called twice")
        state.wrote = True
        b, o = state.bytes, state.objects
        state.bytes = state.objects = 0
        state.release(b, o, nbytes, nobjects)

    def take(self) -> tuple[int, int]:
        """Empty the guard and return what it held, without releasing (the caller accounts)."""
        state = self._state
        b, o = state.bytes, state.objects
        state.bytes = state.objects = 0
        return b, o

    def merge(self, other: ReservationGuard) -> None:
        """Add ``other``'s units to this guard; ``other`` is left empty."""
        if other is self:
            return
        b, o = other.take()
        self._state.bytes += b
        self._state.objects += o

    def close(self) -> None:
        """Release what is still held (nothing written). Idempotent."""
        _finalize(self._state)

    def __enter__(self) -> ReservationGuard:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReservationGuard(bytes={self.bytes}, objects={self.objects})"
