"""``Sharded[S]``: one instance of a service per shard (Seastar's ``sharded<S>``).

``await sharded.start(factory)`` constructs ``factory(shard_id)`` on every shard's own loop, in
shard order; ``local()`` is the calling shard's instance; ``invoke_on(shard, fn, *args)`` runs
``fn(instance, *args)`` on ``shard`` (``fn`` may be sync or async) and returns its result on
the caller's loop; ``invoke_on_all`` and ``map_reduce`` fan out to every shard concurrently.
``stop()`` calls each instance's ``stop()`` (if it has one) on its own shard, last shard first,
so services stop in the reverse of the order they started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from cachedaemon.core.smp import Smp, maybe_await, this_shard_id
from cachedaemon.errors import ShardStopped

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


class Sharded(Generic[S]):
    """A per-shard service container. Started and stopped from shard 0."""

    def __init__(self, smp: Smp, name: str) -> None:
        self.smp = smp
        self.name = name
        self._instances: list[S | None] = [None] * smp.count

    @property
    def count(self) -> int:
        return self.smp.count

    async def start(self, factory: Callable[[int], S | Awaitable[S]]) -> None:
        """Construct the instance of every shard on that shard, in shard order."""
        for shard in range(self.smp.count):

            async def construct(s: int = shard) -> S:
                return await maybe_await(factory(s))

            self._instances[shard] = await self.smp.submit_to(shard, construct)

    def local(self) -> S:
        """The calling shard's instance."""
        return self.instance(this_shard_id())

    def instance(self, shard: int) -> S:
        """The instance of ``shard``. Touch it only from that shard's loop."""
        inst = self._instances[shard]
        if inst is None:
            raise ShardStopped(f"{self.name} is not running on shard {shard}")
        return inst

    async def invoke_on(self, shard: int, fn: Callable[..., Awaitable[T] | T], *args: Any) -> T:
        """Run ``fn(instance_of_shard, *args)`` on ``shard`` and return its result here."""

        def call() -> Awaitable[T] | T:
            return fn(self.instance(shard), *args)

        return cast(T, await self.smp.submit_to(shard, call))

    async def invoke_on_all(self, fn: Callable[..., Awaitable[T] | T], *args: Any) -> list[T]:
        """Run ``fn(instance, *args)`` on every shard concurrently; results in shard order."""
        return list(
            await asyncio.gather(*(self.invoke_on(s, fn, *args) for s in range(self.count)))
        )

    async def map_reduce(
        self,
        mapper: Callable[..., Awaitable[T] | T],
        reducer: Callable[[R, T], R],
        initial: R,
    ) -> R:
        """Map every shard's instance, then fold the results on the caller's shard."""
        acc = initial
        for value in await self.invoke_on_all(mapper):
            acc = reducer(acc, value)
        return acc

    async def stop(self) -> None:
        """Stop every instance on its own shard, last shard first; forget the instances."""
        for shard in reversed(range(self.count)):
            inst = self._instances[shard]
            if inst is None:
                continue
            stop = getattr(inst, "stop", None)
            if stop is not None:
                await self.smp.submit_to(shard, stop)
            self._instances[shard] = None
