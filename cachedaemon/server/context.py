"""What a handler sees: the per-shard :class:`ShardContext` and the per-request :class:`Call`.

A :class:`ShardContext` is built on its shard's loop at start-up and used only there: it holds
that shard's object store (S3 clients are loop-bound), the ``Sharded`` cache service (its
``local()`` instance is this shard's), the single-flight table for cache fills, the ETags this
shard learnt for entries without one, and the in-flight request count the drain waits on. :class:`ServerState` is process-wide (ready and
draining flags): shard 0's runtime writes it, every shard reads it; plain attribute reads and
writes of bools are atomic under the GIL, which is all the synchronisation it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cachedaemon.config import Settings
from cachedaemon.errors import Unavailable
from cachedaemon.server.singleflight import SingleFlight


class ServerState:
    """Process-wide life-cycle flags, and how to reach every shard's context."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.ready = False  # startup recovery done, serving
        self.draining = False  # SIGTERM received: refuse new work
        self.smp: Any = None  # the Smp, for cross-shard calls
        self.contexts: list[ShardContext | None] = [None] * shards


@dataclass
class ShardContext:
    shard: int
    settings: Settings
    state: ServerState
    store: Any  # ObjectStore of this shard
    cache: Any  # Sharded[CacheService]
    max_object_bytes: int
    flights: SingleFlight[Any] = field(default_factory=SingleFlight)
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    #: ETags of entries without an etag xattr: key -> (inode, size, mtime_ns, etag), trusted
    #: only for that very file.
    etags: dict[str, tuple[int, int, int, str]] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)

    async def broadcast(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(ctx, *args)`` on every shard (each on its own loop), concurrently."""
        smp = self.state.smp
        contexts = self.state.contexts
        if smp is None:
            await fn(self, *args)
            return
        calls = [smp.submit_to(shard, fn, c, *args)
                 for shard, c in enumerate(contexts) if c is not None]
        await asyncio.gather(*calls)

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


@dataclass(slots=True)
class Call:
    """One request being handled: the aiohttp request, the raw route params, the context."""

    request: web.BaseRequest
    params: dict[str, str]
    ctx: ShardContext
    route_template: str


def metastore_domains(call: Call) -> Any:
    """The daemon's ``Sharded[DomainService]`` (``ctx.extensions["metastore"]``, set at
    start-up), for the routes of the metastore (``kv``, ``l1``); ``503 unavailable`` without it."""
    domains = call.ctx.extensions.get("metastore")
    if domains is None:
        raise Unavailable("the metastore is not running")
    return domains
