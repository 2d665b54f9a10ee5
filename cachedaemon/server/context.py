"""What a handler sees: the per-shard :class:`ShardContext` and the per-request :class:`Call`.

A :class:`ShardContext` is built on its shard's loop at start-up and used only there: it holds
that shard's object store (S3 clients are loop-bound), the ``Sharded`` cache service (its
``local()`` instance is this shard's), the single-flight table for cache fills, the ETags this
shard learnt for entries without one, and the in-flight request count the drain waits on.
:class:`ServerState` holds the shard's life-cycle flags (ready, draining), set by shard 0's
orchestration (by message on the other shards), and its :class:`~cachedaemon.core.smp.Smp`,
through which it reaches the other shards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cachedaemon.config import Settings
from cachedaemon.errors import Unavailable
from cachedaemon.metastore.registry import Placement
from cachedaemon.server.http import Request
from cachedaemon.server.singleflight import SingleFlight


class ServerState:
    """One shard's life-cycle flags, and its way to the other shards. ``shards`` serve
    requests; the metastore's own process, if ``placement`` has one, is one more."""

    def __init__(self, shards: int, smp: Any = None, *,
                 placement: Placement | None = None) -> None:
        self.shards = shards
        self.placement = placement or Placement(shards)
        self.processes = self.placement.processes
        self.ready = False  # startup recovery done, serving
        self.draining = False  # SIGTERM received: refuse new work
        self.smp: Any = smp  # this shard's Smp (cachedaemon.core.smp)


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
    app: Any = None  # this shard's request handler (server.app.make_handler)

    async def forward(self, shard: int, method: str, target: str, headers: dict[str, str],
                      body: bytes, remote: str) -> tuple[int, dict[str, str], bytes]:
        """Have ``shard`` answer a request this shard received (``server.app``)."""
        smp = self.state.smp
        if smp is None:
            raise Unavailable(f"shard {shard} is not serving")
        status, out_headers, out_body = await smp.call(
            shard, "shard", "forward", method, target, headers, body, remote)
        return int(status), dict(out_headers), bytes(out_body)

    def enter(self) -> None:
        self.inflight += 1
        if self.inflight == 1:
            self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()


@dataclass(slots=True)
class Call:
    """One request being handled: the request, the raw route params, the context."""

    request: Request
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
