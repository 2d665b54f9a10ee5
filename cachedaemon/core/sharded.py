"""``Sharded[S]``: a service with one instance per shard (Seastar's ``sharded<S>``).

Every shard constructs its own instance (:meth:`Sharded.start`, on that shard) and registers it
under the service's name with its :class:`~cachedaemon.core.smp.Smp`. ``local()`` is this
shard's instance. ``invoke_on(shard, method, *args)`` runs ``instance.method(*args)`` on
``shard`` and returns the result here: a direct call on this shard, a message to any other —
so ``method`` is a method *name* (or the service class's method itself, whose name is used)
and the arguments are plain data. ``post`` sends without waiting; ``invoke_on_all`` fans out
to every shard concurrently. ``stop()`` stops and unregisters this shard's instance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from cachedaemon.core.smp import Smp, maybe_await
from cachedaemon.errors import ShardStopped

S = TypeVar("S")
T = TypeVar("T")


def method_name(method: str | Callable[..., Any]) -> str:
    """The name a method travels under: a string as is, a function by its ``__name__``."""
    if isinstance(method, str):
        return method
    name = getattr(method, "__name__", "")
    if not name or name == "<lambda>":
        raise TypeError(f"{method!r} cannot cross shards: pass a method of the service")
    return str(name)


class Sharded(Generic[S]):
    """This shard's handle on a per-shard service (see the module doc)."""

    def __init__(self, smp: Smp, name: str) -> None:
        self.smp = smp
        self.name = name
        self._instance: S | None = None

    @property
    def count(self) -> int:
        return self.smp.count

    @property
    def shard(self) -> int:
        return self.smp.id

    async def start(self, factory: Callable[[int], S | Awaitable[S]]) -> S:
        """Construct this shard's instance and serve it under the service's name."""
        instance = await maybe_await(factory(self.smp.id))
        self._instance = instance
        self.smp.register(self.name, instance)
        return instance

    def local(self) -> S:
        """This shard's instance."""
        if self._instance is None:
            raise ShardStopped(f"{self.name} is not running on shard {self.smp.id}")
        return self._instance

    async def invoke_on(self, shard: int, method: str | Callable[..., Any], *args: Any,
                        deadline: float | None = None,
                        result_type: type[T] | None = None) -> Any:
        """``method(*args)`` of ``shard``'s instance (see the module doc)."""
        return await self.smp.call(shard, self.name, method_name(method), *args,
                                   deadline=deadline, result_type=result_type)

    def post(self, shard: int, method: str | Callable[..., Any], *args: Any) -> None:
        """``method(*args)`` of ``shard``'s instance, not waited for."""
        self.smp.post(shard, self.name, method_name(method), *args)

    async def invoke_on_all(self, method: str | Callable[..., Any], *args: Any,
                            result_type: type[T] | None = None) -> list[Any]:
        """``method(*args)`` on every shard, concurrently; results in shard order."""
        name = method_name(method)
        return list(await asyncio.gather(*(
            self.smp.call(s, self.name, name, *args, result_type=result_type)
            for s in range(self.count))))

    async def stop(self) -> None:
        """Stop this shard's instance (its ``stop()``, if any) and stop serving it."""
        instance = self._instance
        if instance is None:
            return
        self.smp.unregister(self.name)
        self._instance = None
        stop = getattr(instance, "stop", None)
        if stop is not None:
            await maybe_await(stop())
