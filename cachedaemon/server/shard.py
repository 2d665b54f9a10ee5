"""One shard's services, in its own process: object store, HTTP server, cache, domains.

Every shard — shard 0 in the main process and each worker process — builds a :class:`Shard`
from the same settings and runs the same steps (``docs/shards.md``):

1. :meth:`Shard.open`: its object store and its HTTP server on its own listening socket (and,
   with ``server.s3_listen``, its S3 endpoint on another, whose per-shard state is served to
   the other shards as the ``s3`` service: :mod:`cachedaemon.server.s3`). The metastore's
   own process (``metastore.process``) has no socket: it answers the domain requests the
   serving shards forward to it, and nothing else. From here
   ``/healthz`` answers, ``/readyz`` says 503 and ``/v1`` and S3 requests get 503 until the
   shard is told it is ready.
2. :meth:`Shard.start_services`: its cache service (shard 0's runs the coordinator and the
   start-up recovery; the others reach it by message) and its metastore domains.
3. :meth:`Shard.close`: top down — domains, cache, store, server.

A :class:`Shard` is also the ``shard`` service the other shards call: ``set_state`` (ready,
draining), ``drain``, ``stop``, ``forward`` (a domain request for a domain this shard owns),
``metrics_text`` and ``reload`` (SIGHUP's settings). Lives on its shard's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from cachedaemon.config import Settings, settings_from_dict
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp
from cachedaemon.metastore.registry import Placement
from cachedaemon.server import metrics
from cachedaemon.server.app import make_handler, serve_forwarded, start_shard_server
from cachedaemon.server.context import ServerState, ShardContext
from cachedaemon.server.fdlimit import Budget
from cachedaemon.server.http import HttpServer
from cachedaemon.server.services import (
    open_shard_store,
    reload_cache,
    start_cache,
    start_domains,
    stop_cache,
    stop_domains,
)

log = logging.getLogger("cachedaemon.server")


class Shard:
    """One shard's services and its ``shard`` service (see the module doc)."""

    def __init__(self, settings: Settings, smp: Smp, sock: socket.socket | None,
                 max_connections: int, budget: Budget,
                 s3_sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.smp = smp
        self.sock = sock
        self.s3_sock = s3_sock
        self.s3_server: HttpServer | None = None
        self.s3: Any = None  # the S3 endpoint's state on this shard (server.s3.app.S3Context)
        self.max_connections = max_connections
        self.budget = budget
        placement = Placement.from_settings(settings)
        self.state = ServerState(placement.serving, smp, placement=placement)
        self.store: Any = None
        self.server: HttpServer | None = None
        self.cache: Sharded[Any] | None = None
        self.domains: Sharded[Any] | None = None
        self.ctx: ShardContext | None = None
        self.stopped = asyncio.Event()  # a worker exits when it is set

    @property
    def id(self) -> int:
        return self.smp.id

    # --- start-up and shut-down ------------------------------------------------------------

    async def open(self) -> None:
        """The store and the HTTP server (not ready yet)."""
        self.store = open_shard_store(self.settings, self.id)
        ctx = ShardContext(shard=self.id, settings=self.settings, state=self.state,
                           store=self.store, cache=None, max_object_bytes=0)
        ctx.idle.set()
        self.ctx = ctx
        self.smp.register("shard", self)
        if self.sock is None:  # the metastore's process: it answers forwarded requests only
            make_handler(ctx)  # sets ctx.app, which serve_forwarded answers them with
            return
        self.server = await start_shard_server(ctx, self.sock, self.max_connections)
        if self.s3_sock is not None:
            from cachedaemon.server.s3.app import start_s3_server

            self.s3_server, self.s3 = await start_s3_server(ctx, self.s3_sock,
                                                            self.max_connections)
            self.smp.register("s3", self.s3)

    async def start_services(self) -> None:
        """The cache and the domains; then the handlers can use them."""
        assert self.ctx is not None
        s = self.settings
        self.cache = await start_cache(self.smp, s)
        self.domains = await start_domains(self.smp, self.cache, self.store, s,
                                           max_open_domains=self.budget.max_open_domains,
                                           max_open_files=self.budget.max_open_files)
        self.ctx.cache = self.cache
        self.ctx.max_object_bytes = await self.cache.local().object_limit()
        self.ctx.extensions["metastore"] = self.domains
        if self.id == 0:
            from cachedaemon.server.warm import HotSetPublisher, Warmer

            self.ctx.extensions["warmer"] = Warmer(self.ctx)
            publisher = self.ctx.extensions["publisher"] = HotSetPublisher(self.ctx)
            publisher.start()

    async def close(self) -> None:
        """Stop serving and stop the services, top down. Errors are logged, not raised."""
        if self.server is not None:
            self.server.abort_all()
        if self.s3_server is not None:
            self.s3_server.abort_all()
        if self.ctx is not None and self.ctx.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.idle.wait(), 5.0)
        await self.stop_warm(publish=False)
        if self.s3 is not None:
            await self.s3.close()  # the multipart parts it holds leave the cache's gate
            self.s3 = None
        if self.domains is not None:
            try:
                await stop_domains(self.domains)
            except Exception as exc:
                log.error("stopping the metastore domains failed: %s", exc, exc_info=exc)
            self.domains = None
        if self.cache is not None:
            try:
                await stop_cache(self.cache)
            except Exception as exc:
                log.error("stopping the cache failed: %s", exc, exc_info=exc)
            self.cache = None
        if self.store is not None:
            try:
                await self.store.close()
            except Exception as exc:
                log.error("closing the object store failed: %s", exc)
            self.store = None
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        if self.s3_sock is not None:
            with contextlib.suppress(OSError):
                self.s3_sock.close()

    async def stop_warm(self, *, publish: bool) -> None:
        """Shard 0: stop a running warm-up and the publishing loop; with ``publish``, publish
        the hot set once more first (a clean shutdown, while the store and the cache still
        run)."""
        if self.ctx is None:
            return
        warmer = self.ctx.extensions.pop("warmer", None)
        if warmer is not None:
            await warmer.stop()
        publisher = self.ctx.extensions.pop("publisher", None)
        if publisher is not None:
            await publisher.stop(publish=publish)

    # --- the "shard" service ---------------------------------------------------------------

    def set_state(self, ready: bool, draining: bool) -> None:
        self.state.ready = ready
        self.state.draining = draining

    async def drain(self, deadline: float) -> int:
        """Refuse new ``/v1`` work, close idle connections, and wait until no request runs
        (or ``deadline``, a monotonic time); return how many still run."""
        self.state.draining = True
        self.state.ready = False
        if self.server is not None:
            self.server.begin_shutdown()
        if self.s3_server is not None:
            self.s3_server.begin_shutdown()
        ctx = self.ctx
        if ctx is None:
            return 0
        remaining = deadline - time.monotonic()
        if ctx.inflight and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.idle.wait(), remaining)
        return ctx.inflight

    def stop(self) -> None:
        """A worker: stop now (shard 0 drained it first)."""
        self.stopped.set()

    async def reload(self, raw: dict[str, Any]) -> None:
        """Reloaded settings (SIGHUP, from shard 0; plain data): this process's log level and
        this shard's cache settings (shard 0's recomputes the limits first), object limit and
        settings for the handlers."""
        settings = settings_from_dict(raw)
        logging.getLogger().setLevel(settings.server.log_level.upper())
        self.settings = settings
        if self.cache is not None:
            await reload_cache(self.cache, settings)
            if self.ctx is not None:
                self.ctx.max_object_bytes = await self.cache.local().object_limit()
        if self.ctx is not None:
            self.ctx.settings = settings

    async def forward(self, method: str, target: str, headers: dict[str, str], body: bytes,
                      remote: str) -> tuple[int, dict[str, str], bytes]:
        assert self.ctx is not None
        return await serve_forwarded(self.ctx, method, target, headers, body, remote)

    def metrics_text(self) -> str:
        return metrics.render_local()

    # Warm-ups and hot set publishing run on shard 0 (cachedaemon.server.warm).

    def _warm_parts(self) -> tuple[Any, Any]:
        from cachedaemon.errors import Unavailable

        assert self.ctx is not None
        warmer = self.ctx.extensions.get("warmer")
        publisher = self.ctx.extensions.get("publisher")
        if warmer is None or publisher is None:
            raise Unavailable("warm-ups run on shard 0 once the cache is started")
        return warmer, publisher

    def warm_start(self, source: str, max_bytes: int | None, timeout_s: float | None
                   ) -> tuple[bool, dict[str, Any]]:
        warmer, _ = self._warm_parts()
        started, status = warmer.start(source, max_bytes, timeout_s)
        return bool(started), dict(status)

    async def warm_wait(self) -> dict[str, Any]:
        """Wait for the running warm-up (if any) to end; its status."""
        warmer, _ = self._warm_parts()
        return dict(await warmer.wait())

    def warm_status(self) -> dict[str, Any]:
        warmer, _ = self._warm_parts()
        return dict(warmer.status())

    async def publish_hotset(self) -> dict[str, Any]:
        _, publisher = self._warm_parts()
        return dict(await publisher.publish())
