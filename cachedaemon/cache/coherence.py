"""KeyTable: the per-key ordering of object writes, fills and cache drops (shard 0).

The rule it enforces is written down in ``docs/cache.md`` ("Per key, reads follow writes"):
every object PUT, DELETE, cache drop (*writes*) and cache-filling GET (*fill*) **registers**
here before it touches the bucket and **finishes** here after; a PUT or fill may publish its
staged copy as the key's cache entry only if no write of the key was in flight when it
registered and none registered before it finished (it was not *overlapped*); otherwise a PUT
removes the key's copy, and a DELETE or drop always does. The finishes of one key run one at a
time (an ``asyncio.Lock`` per key), so the check and the ``rename``/``link`` or ``unlink`` it
decides on are atomic with respect to every other finish of that key.

Owned by shard 0's :class:`~cachedaemon.cache.service.CacheService` and touched only on shard
0's loop; other shards reach it through ``Sharded.invoke_on(0, ...)`` with plain data (key
strings, ints, paths). Registration is synchronous (flags only). A finish runs its file
operation in a worker thread while it holds the key's lock, and is shielded: once begun on
shard 0 it completes even if its caller goes away.

Memory: an entry per key only while operations on it are registered (tickets), each dropped
at its finish; :meth:`abandon_shard` drops a dead shard's tickets (and removes their keys'
copies: their writes' outcomes are unknown).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cachedaemon.cache.evictions import EvictionReason
from cachedaemon.cache.keys import PART_SUFFIX, checked_relpath
from cachedaemon.cache.walker import delete_entries
from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.errors import InvalidArgument

log = logging.getLogger("cachedaemon.cache")


@dataclass(slots=True)
class _Ticket:
    key: str
    rel: str
    shard: int
    write: bool
    overlapped: bool
    writing: bool  # a write whose bucket call may still be running (until its finish)
    #: Why the key's copy goes if this write removes it (the eviction log's reason).
    why: EvictionReason = EvictionReason.replaced


class _Key:
    __slots__ = ("fill_done", "fill_leader", "lock", "tickets", "writers")

    def __init__(self) -> None:
        self.tickets: set[int] = set()
        self.writers = 0
        self.lock = asyncio.Lock()
        # The fill that downloads the key for every shard (single flight), and its end.
        self.fill_leader: int | None = None
        self.fill_done: asyncio.Event | None = None


@dataclass
class KeyTableMetrics:
    registered: int = 0
    published: int = 0
    removed: int = 0
    discarded: int = 0  # overlapped publishes refused
    followed: int = 0  # fills that waited for another shard's download of the key


class KeyTable:
    """See the module docstring. ``forget(rel, reason)`` tells the accounting an entry was
    removed, and why."""

    def __init__(self, root: Path, forget: Callable[[str, EvictionReason], None]) -> None:
        self.root = root
        self._forget = forget
        self._keys: dict[str, _Key] = {}
        self._tickets: dict[int, _Ticket] = {}
        self._ids = itertools.count(1)
        self.metrics = KeyTableMetrics()

    def __len__(self) -> int:
        """Keys with operations registered."""
        return len(self._keys)

    @property
    def tickets(self) -> int:
        return len(self._tickets)

    def register(self, key: str, shard: int, write: bool,
                 why: EvictionReason = EvictionReason.replaced) -> tuple[int, bool]:
        """Register an operation on ``key``: returns its ticket and whether it is overlapped
        already (a write of the key is in flight). Registering a write overlaps every
        operation registered on the key. ``why``: the reason the eviction log gives if this
        write removes the key's copy (a PUT's replace, a DELETE, a manual drop)."""
        rel = checked_relpath(key)
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        if write:
            for other in state.tickets:
                self._tickets[other].overlapped = True
        ticket = next(self._ids)
        info = _Ticket(key, rel, shard, write, overlapped=state.writers > 0, writing=write,
                       why=why)
        if write:
            state.writers += 1
        state.tickets.add(ticket)
        self._tickets[ticket] = info
        self.metrics.registered += 1
        return ticket, info.overlapped

    async def register_fill(self, key: str, shard: int) -> tuple[int, bool, bool]:
        """Register a fill of ``key`` (as :meth:`register`), one download for all shards:
        if another fill of the key is in flight, wait until it finishes first. Returns
        ``(ticket, overlapped, followed)``; a caller that ``followed`` should find the leader's
        copy in the cache (if it could be kept) and fill only if not."""
        ticket, overlapped = self.register(key, shard, write=False)
        state = self._keys[key]
        leader = state.fill_leader
        if overlapped or leader is None:
            if not overlapped:
                state.fill_leader = ticket
                state.fill_done = asyncio.Event()
            return ticket, overlapped, False
        done = state.fill_done
        assert done is not None
        self.metrics.followed += 1
        try:
            await done.wait()
        except BaseException:
            await self.finish(ticket)
            raise
        info = self._tickets.get(ticket)
        return ticket, info is None or info.overlapped, True

    async def finish(self, ticket: int, part: str | None = None, replace: bool = False,
                     remove: bool = False) -> bool:
        """Finish ``ticket``: if ``part`` (a sealed staging file beside the key's entry) is
        given and the operation was not overlapped, publish it (``rename`` when ``replace``,
        else ``link``; an existing entry then wins). Otherwise, with ``remove``, remove the
        key's copy. True if ``part`` became the entry (the caller accounts it); the caller
        deletes an unpublished ``part``."""
        info = self._tickets.get(ticket)
        if info is None:
            raise InvalidArgument(f"unknown cache ticket {ticket}")
        state = self._keys[info.key]
        if info.writing:
            # The write's bucket call is over: operations registering from now on see the
            # bucket as it left it.
            info.writing = False
            state.writers -= 1
        return await asyncio.shield(self._finish(ticket, info, state, part, replace, remove))

    async def _finish(self, ticket: int, info: _Ticket, state: _Key, part: str | None,
                      replace: bool, remove: bool) -> bool:
        try:
            async with state.lock:
                if part is not None and not info.overlapped:
                    dest = self.root / info.rel
                    self._check_part(part, dest)
                    try:
                        published = await asyncio.to_thread(_publish, part, dest, replace)
                    except OSError as exc:
                        log.error("cache: cannot put %s in place as %s: %s", part, dest, exc)
                        published = False
                    if published:
                        self.metrics.published += 1
                        return True
                    if remove:
                        await self._remove(info.rel, info.why)
                    return False
                if part is not None:
                    self.metrics.discarded += 1
                if remove:
                    await self._remove(info.rel, info.why)
                return False
        finally:
            self._release(ticket, info, state)

    def _check_part(self, part: str, dest: Path) -> None:
        path = Path(part)
        if path.parent != dest.parent or not path.name.endswith(PART_SUFFIX):
            raise InvalidArgument(f"{part} is not a staging file beside {dest}")

    async def _remove(self, rel: str, why: EvictionReason) -> None:
        await asyncio.to_thread(delete_entries, self.root, [rel])
        self._forget(rel, why)
        self.metrics.removed += 1

    def _release(self, ticket: int, info: _Ticket, state: _Key) -> None:
        self._tickets.pop(ticket, None)
        state.tickets.discard(ticket)
        if state.fill_leader == ticket:
            state.fill_leader = None
            if state.fill_done is not None:
                state.fill_done.set()
                state.fill_done = None
        if info.writing:
            info.writing = False
            state.writers -= 1
        if not state.tickets and self._keys.get(info.key) is state:
            del self._keys[info.key]

    async def drop(self, key: str, shard: int) -> None:
        """A cache drop: a write that registers and finishes at once, removing the copy."""
        ticket, _ = self.register(key, shard, write=True, why=EvictionReason.manual_drop)
        await self.finish(ticket, remove=True)

    async def abandon_shard(self, shard: int) -> int:
        """Finish every ticket ``shard`` holds (it died): writes remove their key's copy (their
        outcome is unknown), fills are dropped. Returns how many tickets were abandoned."""
        mine = [t for t, info in self._tickets.items() if info.shard == shard]
        for ticket in mine:
            info = self._tickets.get(ticket)
            if info is not None:
                info.why = EvictionReason.abandoned
                await self.finish(ticket, remove=info.write)
        return len(mine)


def _publish(part: str, dest: Path, replace: bool) -> bool:
    """Thread job: put ``part`` in place as ``dest``. False if ``link`` found an entry there
    (it stays: a fill that passed the check carries the same version)."""
    if replace:
        os.rename(part, dest)
        failpoint_sync("cache.commit.after_link")
        return True
    try:
        os.link(part, dest)
    except FileExistsError:
        return False
    failpoint_sync("cache.commit.after_link")
    try:
        os.unlink(part)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.error("cache: committed %s but cannot remove %s: %s (deleted at next start)",
                      dest, part, exc)
    return True
