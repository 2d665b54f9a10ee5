"""One shard's view of the daemon's shards (Seastar's ``smp``): who it is, how many there are,
and how to reach the others.

Shards share nothing (``docs/shards.md``). In the daemon each shard is a process; its
:class:`Smp` holds its id, the shard count and its :class:`~cachedaemon.core.channel.ShardLinks`
(messages to and from the other shards), plus this shard's registry of services by name.
:meth:`Smp.call` and :meth:`Smp.post` run a method of a named service on a shard: a direct call
when the target is this shard, a message otherwise. ``--shards 1`` has no links at all.

Tests may run several shards in one process: one :class:`Smp` per shard, on the same loop, each
with its own links. Nothing but messages passes between them there either, so a test sees the
same behaviour as the daemon's processes (only plain data crosses; a dead shard is
:class:`~cachedaemon.errors.ShardStopped`). :func:`start_local_shards` builds such a set.

Owned by its shard's loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import tempfile
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from cachedaemon.core.channel import ShardLinks
from cachedaemon.errors import ShardStopped

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop when installed, else the default one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())


class Smp:
    """This shard: its id, the shard count, its services and its links (see the module doc)."""

    def __init__(self, shard: int = 0, count: int = 1, links: ShardLinks | None = None) -> None:
        if not 0 <= shard < count:
            raise ValueError(f"shard {shard} of {count}")
        if count > 1 and links is None:
            raise ValueError("several shards need links")
        self.id = shard
        self.count = count
        self.links = links
        self._services: dict[str, object] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    @classmethod
    def single(cls) -> Smp:
        """One shard, no links (``--shards 1``, embedded use)."""
        return cls(0, 1, None)

    def register(self, name: str, service: object) -> None:
        """Serve ``service`` as ``name`` on this shard."""
        self._services[name] = service
        if self.links is not None:
            self.links.register(name, service)

    def unregister(self, name: str) -> None:
        self._services.pop(name, None)
        if self.links is not None:
            self.links.unregister(name)

    def service(self, name: str) -> Any:
        try:
            return self._services[name]
        except KeyError:
            raise ShardStopped(f"{name} is not running on shard {self.id}") from None

    async def call(self, shard: int, service: str, method: str, *args: Any,
                   deadline: float | None = None, result_type: type[T] | None = None) -> Any:
        """``service.method(*args)`` on ``shard``; its result."""
        if shard == self.id:
            result = getattr(self.service(service), method)(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        if self.links is None:
            raise ShardStopped(f"there is no shard {shard}")
        return await self.links.call(shard, service, method, args, deadline=deadline,
                                     result_type=result_type)

    def post(self, shard: int, service: str, method: str, *args: Any) -> None:
        """``service.method(*args)`` on ``shard``, not waited for (in order per target)."""
        if shard == self.id:
            result = getattr(self.service(service), method)(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if self.links is None:
            raise ShardStopped(f"there is no shard {shard}")
        self.links.post(shard, service, method, args)

    async def stop(self) -> None:
        if self.links is not None:
            await self.links.close()


async def maybe_await(value: T | Awaitable[T]) -> T:
    """Await ``value`` if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def new_link_dir() -> tuple[str, bytes]:
    """A private directory (mode 0700) for the shards' sockets, and the daemon's secret."""
    directory = tempfile.mkdtemp(prefix="cachedaemon-shards-")
    os.chmod(directory, 0o700)
    return directory, secrets.token_bytes(32)


async def start_local_shards(count: int) -> list[Smp]:
    """``count`` shards in this process, each linked to the others by messages (tests)."""
    if count == 1:
        return [Smp.single()]
    directory, secret = new_link_dir()
    shards = []
    for shard in range(count):
        links = ShardLinks(shard, directory, secret)
        await links.listen()
        shards.append(Smp(shard, count, links))
    return shards
