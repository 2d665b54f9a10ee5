"""Running the daemon: ``run(settings) -> exit status``, called by ``cachedaemon serve``.

Start-up, bottom up: data directory (created, checked writable), the listening sockets (bound
before anything slow, so "port in use" fails fast), the shards (:class:`Smp`; shard 0 is the
main uvloop loop), one object store per shard (S3 clients are loop-bound) and a reachability
probe of the bucket, one HTTP server per shard on the same port (``SO_REUSEPORT``; until
recovery ends ``/readyz`` is 503 and ``/v1`` requests 503 ``unavailable``), the cache service
on every shard (shard 0 coordinates the accounting; start-up recovery: tracker load, walk,
``.part`` clean-up), the metastore domains. Then ``/readyz`` turns 200, the line
``cachedaemon listening on http://HOST:PORT`` is printed on stdout and systemd is told
``READY=1``.

Shut-down on SIGTERM/SIGINT, top down: ``STOPPING=1``; ``/readyz`` 503 and new ``/v1`` requests
503 ``unavailable``; in-flight requests get up to ``server.shutdown_timeout`` to finish, then
the HTTP servers close (still-running handlers are cancelled, and their cleanup discards partial
work); then the cache services stop (the tracker is saved), the stores close, the shards stop.
Exit 0. A start-up failure prints one ``cachedaemon: cannot start: ...`` line naming the cause
and exits 1 (invalid configuration never gets here: the CLI exits 2 first).

SIGHUP (systemd's ``ExecReload=``) reloads: the settings are read again and the cache's limits
and the log level applied on every shard (:meth:`Daemon.reload`); anything else waits for a
restart, and a bad file changes nothing (logged).

Runs on the main thread; the signal handlers are installed on shard 0's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cachedaemon.config import Settings, merge_reloadable, reload_settings
from cachedaemon.core.failpoints import failpoint
from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp
from cachedaemon.errors import CacheDaemonError, ConfigError
from cachedaemon.server import sdnotify
from cachedaemon.server.app import start_shard_server
from cachedaemon.server.context import ServerState, ShardContext
from cachedaemon.server.fdlimit import BudgetError, per_shard, plan
from cachedaemon.server.http import HttpServer
from cachedaemon.server.services import (
    check_bucket_identity,
    open_shard_store,
    probe_store,
    reload_cache,
    start_cache,
    start_domains,
    stop_cache,
    stop_domains,
)

log = logging.getLogger("cachedaemon.server")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PROBE_TIMEOUT_S = 15.0


class StartupError(Exception):
    """Start-up cannot proceed; the message names the cause."""


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit status."""
    configure_logging(settings)
    # Register every handler module's routes before any shard serves.
    import cachedaemon.server.handlers  # noqa: F401

    try:
        import uvloop

        return uvloop.run(Daemon(settings).main())
    except KeyboardInterrupt:  # a second ^C during shut-down
        return 130


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "cachedaemon.access":
            return record.getMessage()
        out = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.server.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.server.log_level.upper())
    logging.getLogger("aiohttp.access").disabled = True
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (SO_REUSEPORT when more than one)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    family, _, _, _, addr = infos[0]
    socks: list[socket.socket] = []
    try:
        # A plain (non-reuseport) bind first: it fails if anybody, including another
        # cachedaemon with SO_REUSEPORT sockets, already has the port. With one shard it is
        # the listening socket; with more it only reserves the port number for a moment.
        probe = socket.socket(family, socket.SOCK_STREAM)
        socks.append(probe)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"cannot listen on {host}:{port}: address already in use") \
                    from exc
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        bound = probe.getsockname()
        if count > 1:
            probe.close()
            socks.clear()
            for _ in range(count):
                s = socket.socket(family, socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    s.bind(bound)
                except OSError as exc:
                    raise StartupError(
                        f"cannot listen on {host}:{bound[1]}: {exc.strerror}") from exc
        for s in socks:
            s.listen(1024)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cachedaemon-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"data directory {path} is not usable: {exc.strerror or exc}") from exc


class _ShardServer:
    """One shard's HTTP server and context (lives on that shard)."""

    def __init__(self, ctx: ShardContext, server: HttpServer) -> None:
        self.ctx = ctx
        self.server = server

    async def drain(self, deadline: float) -> int:
        """Stop accepting, close idle connections, and wait until no request runs (or the
        deadline); return how many still run."""
        self.server.begin_shutdown()
        remaining = deadline - time.monotonic()
        if self.ctx.inflight and remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.idle.wait(), remaining)
        return self.ctx.inflight

    def reload(self, settings: Settings, max_object_bytes: int) -> None:
        self.ctx.settings = settings
        self.ctx.max_object_bytes = max_object_bytes

    async def stop(self) -> None:
        """Drop what is left: running handlers are cancelled and clean up after themselves."""
        self.server.abort_all()
        if self.ctx.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.idle.wait(), 5.0)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = ServerState(settings.server.shards)
        self.smp: Smp | None = None
        self.stores: Sharded[Any] | None = None
        self.cache: Sharded[Any] | None = None
        self.domains: Sharded[Any] | None = None
        self.servers: Sharded[_ShardServer] | None = None
        self.sockets: list[socket.socket] = []
        self.stop_requested = asyncio.Event()
        self._reloads: set[asyncio.Task[None]] = set()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            url = await self.start()
        except ConfigError as exc:
            print(f"cachedaemon: {exc}", file=sys.stderr, flush=True)
            await self.stop()
            return EXIT_USAGE
        except (StartupError, CacheDaemonError, OSError) as exc:
            print(f"cachedaemon: cannot start: {exc}", file=sys.stderr, flush=True)
            await self.stop()
            return EXIT_FAILED
        if not self.stop_requested.is_set():  # a signal during start-up: just stop
            print(f"cachedaemon listening on {url}", flush=True)
            log.info("ready: %s, %d shard(s), bucket %s, cache %s", url, self.state.shards,
                     self.settings.remote.url, self.settings.cache_dir)
            sdnotify.notify("READY=1")
        await self.stop_requested.wait()
        log.info("stopping: draining in-flight requests (up to %.1fs)",
                 self.settings.server.shutdown_timeout)
        sdnotify.notify("STOPPING=1")
        await self.stop()
        log.info("stopped")
        return EXIT_OK

    def _on_signal(self, sig: int) -> None:
        if self.stop_requested.is_set():
            log.warning("second %s: already stopping", signal.Signals(sig).name)
            return
        self.state.draining = True
        self.stop_requested.set()

    def _on_reload(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """SIGHUP (systemd ``ExecReload=``): read the settings again (the config file, the
        environment, the same flags) and apply the cache's and the log level on every shard;
        a bad file changes nothing."""
        try:
            reread = reload_settings(self.settings)
        except ConfigError as exc:
            log.error("reload refused, the running settings stay: %s", exc)
            return
        merged, applied, later = merge_reloadable(self.settings, reread)
        logging.getLogger().setLevel(merged.server.log_level.upper())
        if self.cache is not None and self.servers is not None:
            await reload_cache(self.cache, merged)
            limit: int = await self.cache.invoke_on(0, _max_object_bytes, merged)
            await self.servers.invoke_on_all(_ShardServer.reload, merged, limit)
        self.settings = merged
        log.info("reload: applied %s%s", ", ".join(applied) or "nothing (no change)",
                 f"; a restart applies {', '.join(later)}" if later else "")

    async def start(self) -> str:
        s = self.settings
        check_data_dir(s.storage.data_dir)
        try:
            budget = plan(s)
        except BudgetError as exc:
            raise StartupError(str(exc)) from exc
        max_connections = per_shard(budget.connections, s.server.shards)
        self.sockets = bind_sockets(s.server.host, s.server.port, s.server.shards)
        port = self.sockets[0].getsockname()[1]
        host = s.server.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

        self.smp = Smp(s.server.shards)
        await self.smp.start()
        self.stores = Sharded(self.smp, "object-store")
        await self.stores.start(lambda shard: open_shard_store(s, shard))
        try:
            probe: Any = probe_store
            await asyncio.wait_for(self.stores.invoke_on(0, probe), PROBE_TIMEOUT_S)
        except (TimeoutError, CacheDaemonError, OSError) as exc:
            raise StartupError(f"cannot reach the bucket {s.remote.url}: {exc or 'timed out'}") \
                from exc

        # The HTTP servers come up first: /healthz answers and /readyz says 503 while the
        # cache and the metastore recover; /v1 requests get 503 unavailable until then.
        self.state.smp = self.smp
        self.servers = Sharded(self.smp, "http")
        sockets = self.sockets
        stores = self.stores
        state = self.state

        async def make(shard: int) -> _ShardServer:
            ctx = ShardContext(shard=shard, settings=s, state=state,
                               store=stores.instance(shard), cache=None, max_object_bytes=0)
            ctx.idle.set()
            state.contexts[shard] = ctx
            server = await start_shard_server(ctx, sockets[shard], max_connections)
            return _ShardServer(ctx, server)

        await self.servers.start(make)
        await failpoint("server.start.before_recovery")

        # A cache left by another bucket (or by this one before it was created again) is
        # dropped, not served.
        await check_bucket_identity(self.stores, s)
        self.cache = await start_cache(self.smp, s)
        # Metastore domains start after the cache (their SSTs go through it), stop before it.
        self.domains = await start_domains(self.smp, self.stores, self.cache, s,
                                           max_open_domains=budget.max_open_domains,
                                           max_open_files=budget.max_open_files)
        limit_fn: Any = _max_object_bytes
        max_object_bytes: int = await self.cache.invoke_on(0, limit_fn, s)
        cache = self.cache
        domains = self.domains

        def attach(srv: _ShardServer) -> None:
            srv.ctx.cache = cache
            srv.ctx.max_object_bytes = max_object_bytes
            srv.ctx.extensions["metastore"] = domains

        await self.servers.invoke_on_all(attach)
        self.state.ready = True
        return url

    async def stop(self) -> None:
        self.state.draining = True
        self.state.ready = False
        if self.servers is not None:
            deadline = time.monotonic() + self.settings.server.shutdown_timeout
            left = await self.servers.invoke_on_all(lambda srv: srv.drain(deadline))
            if sum(left):
                log.warning("%d request(s) still running after %.1fs: aborting them",
                            sum(left), self.settings.server.shutdown_timeout)
            await self.servers.stop()
            self.servers = None
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
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
        if self.stores is not None:
            try:
                await self.stores.invoke_on_all(lambda store: store.close())
            except Exception as exc:
                log.error("closing the object stores failed: %s", exc)
            self.stores = None
        if self.smp is not None:
            await self.smp.stop()
            self.smp = None


async def _max_object_bytes(svc: Any, settings: Settings) -> int:
    limit = settings.cache.max_object_bytes
    cache_max = int((await svc.stats()).max_bytes)
    return cache_max if limit is None else min(limit, cache_max)


def main() -> int:  # pragma: no cover - manual use
    from cachedaemon.config import load_settings

    return run(load_settings(None, os.environ, {}))
