"""Reservation classes, and the order in which queued reservation requests are granted.

Every reservation of cache space has a **class**, from the most to the least urgent:

* ``read``: a GET's miss filling the cache (a client is waiting for those bytes);
* ``write``: a PUT's staging file (a client is waiting for its 201);
* ``metastore``: the metastore's SST writes and downloads (flushes and compactions run in the
  background; a read of an SST falls back to range GETs when it cannot get space);
* ``prefetch``: a warm-up filling the cache from a published hot set (nobody is waiting).

When the cache is full, requests queue in a :class:`WaiterQueue`: one FIFO per class, granted
strictly by class (a queued ``read`` is granted before any ``write``, and so on) and first in,
first out within a class. While the head of the most urgent non-empty class does not fit,
nothing behind it is granted (a big ``read`` is not starved by a stream of small
``prefetch``-es); the trim a ``read`` triggers frees space that a ``prefetch`` queued before it
then waits for. A request that fits is granted at once when no request of its class or a more
urgent one is queued (it may pass less urgent ones). Nothing waits past its deadline: the
coordinator fails it with ``CacheFull`` and takes it out of its queue.

Owned by shard 0's cache coordinator; loop-bound, not locked. Plain data (the class is a
string) so a reservation's class travels in a message.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class ReservationClass(enum.IntEnum):
    """A reservation's class; a lower value is more urgent."""

    read = 0
    write = 1
    metastore = 2
    prefetch = 3

    @classmethod
    def parse(cls, name: str | ReservationClass) -> ReservationClass:
        """The class named ``name`` (ValueError naming the choices if there is none)."""
        if isinstance(name, ReservationClass):
            return name
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown reservation class {name!r}: one of "
                             f"{', '.join(c.name for c in cls)}") from None


class Classed(Protocol):
    klass: ReservationClass


W = TypeVar("W", bound=Classed)


class WaiterQueue(Generic[W]):
    """Queued requests, one FIFO per class. See the module docstring."""

    __slots__ = ("_queues", "_size")

    def __init__(self) -> None:
        self._queues: tuple[collections.deque[W], ...] = tuple(
            collections.deque() for _ in ReservationClass)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[W]:
        """Every queued request, in the order they would be granted."""
        for queue in self._queues:
            yield from queue

    def append(self, waiter: W) -> None:
        self._queues[waiter.klass].append(waiter)
        self._size += 1

    def remove(self, waiter: W) -> None:
        """Take ``waiter`` out (ValueError if it is not queued)."""
        self._queues[waiter.klass].remove(waiter)
        self._size -= 1

    def head(self) -> W | None:
        """The request to grant next: the oldest of the most urgent class queued."""
        for queue in self._queues:
            if queue:
                return queue[0]
        return None

    def popleft(self) -> W:
        """Take :meth:`head` out. REQUIRES: the queue is not empty."""
        for queue in self._queues:
            if queue:
                self._size -= 1
                return queue.popleft()
        raise IndexError("pop from an empty waiter queue")

    def blocks(self, klass: ReservationClass) -> bool:
        """True if a request of ``klass`` must queue behind others: one of its class or a
        more urgent one is queued."""
        return any(self._queues[c] for c in range(klass + 1))

    def counts(self) -> dict[str, int]:
        return {c.name: len(self._queues[c]) for c in ReservationClass}
