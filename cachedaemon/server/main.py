"""Running the daemon: ``run(settings) -> exit status``, called by ``cachedaemon serve``.

Shards are processes (``docs/shards.md``). This module is shard 0's side — the main process,
the one systemd, Docker and signals see — and the worker's entry (:func:`run_worker`).

Start-up (shard 0), bottom up: data directory (created, checked writable), the descriptor
budget (``server/fdlimit``), the listening sockets of every shard (bound before anything slow,
so "port in use" fails fast; with ``server.s3_listen`` a second set for the S3 endpoint, and
each shard's connection budget split between its two listeners), the shard links and the worker processes (they start in
parallel and wait for shard 0's services by message), shard 0's own store and a reachability
probe of the bucket, its HTTP server (``/readyz`` 503 and ``/v1`` 503 ``unavailable`` until
ready), the bucket identity check, its cache (the coordinator: start-up recovery) and
domains. When every worker has reported ready, every shard is told it is ready, the line
``cachedaemon listening on http://HOST:PORT`` is printed on stdout and systemd is told
``READY=1``.

Shut-down on SIGTERM/SIGINT, top down: ``STOPPING=1``; every shard drains (``/readyz`` 503, new
``/v1`` requests 503 ``unavailable``, in-flight requests get up to ``server.shutdown_timeout``);
the workers are told to stop and exit (a worker still running a moment later is killed), then
shard 0 stops its services (the cache index is written out). Exit 0. A worker that dies is
restarted (``server/supervisor``); a death loop, or a failed start, exits 1 with one
``cachedaemon: cannot start: ...`` line (invalid configuration never gets here: the CLI exits
2 first).

SIGHUP (systemd's ``ExecReload=``) reloads: shard 0 reads the settings again and applies the
cache's and the log level on itself, then tells every worker by message (:meth:`Daemon.reload`,
:meth:`Shard.reload`); anything else waits for a restart, and a bad file changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cachedaemon.config import (
    Settings,
    merge_reloadable,
    reload_settings,
    settings_from_dict,
    settings_to_dict,
)
from cachedaemon.core import executor, priority
from cachedaemon.core.channel import ShardLinks
from cachedaemon.core.failpoints import failpoint
from cachedaemon.core.foreground import ForegroundBoard
from cachedaemon.core.scheduling import scheduler
from cachedaemon.core.smp import Smp, new_link_dir
from cachedaemon.errors import CacheDaemonError, ConfigError
from cachedaemon.metastore.registry import Placement
from cachedaemon.server import sdnotify
from cachedaemon.server.fdlimit import Budget, BudgetError, per_shard, plan
from cachedaemon.server.services import check_bucket_identity, probe_store
from cachedaemon.server.shard import Shard
from cachedaemon.server.supervisor import Supervisor, WorkerSpec

log = logging.getLogger("cachedaemon.server")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
PROBE_TIMEOUT_S = 15.0
#: How long shard 0 waits for the workers to start (a cold Python import is most of it).
WORKER_START_TIMEOUT_S = 60.0


class StartupError(Exception):
    """Start-up cannot proceed; the message names the cause."""


def run(settings: Settings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit status."""
    configure_logging(settings, shard=0)
    # Register every handler module's routes before any shard serves.
    import cachedaemon.server.handlers  # noqa: F401

    try:
        import uvloop

        return uvloop.run(Daemon(settings).main())
    except KeyboardInterrupt:  # a second ^C during shut-down
        return 130


class _JsonFormatter(logging.Formatter):
    def __init__(self, shard: int) -> None:
        super().__init__()
        self.shard = shard

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "cachedaemon.access":
            return record.getMessage()
        out = {"ts": record.created, "level": record.levelname.lower(), "shard": self.shard,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: Settings, shard: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.server.log_format == "json":
        handler.setFormatter(_JsonFormatter(shard))
    else:
        tag = f" shard {shard}" if settings.server.shards > 1 else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s"))
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


class Daemon:
    """Shard 0: the daemon's main process (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Shards that serve requests; with the metastore's own process, one more process.
        placement = Placement.from_settings(settings)
        self.serving = placement.serving
        self.count = placement.processes
        self.sockets: list[socket.socket] = []
        self.s3_sockets: list[socket.socket] = []
        self.s3_url = ""
        self.smp: Smp | None = None
        self.links_dir: str | None = None
        self.secret = b""
        self.supervisor: Supervisor | None = None
        self.board: ForegroundBoard | None = None
        self.shard: Shard | None = None
        self.budget: Budget | None = None
        self.ready = False
        self.stop_requested = asyncio.Event()
        self.fatal: str | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        executor.install(loop)  # requests' thread jobs never queue behind the metastore's
        scheduler(loop).set_share(self.settings.metastore.cpu_share)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        try:
            url = await self.start()
        except ConfigError as exc:
            print(f"cachedaemon: {exc}", file=sys.stderr, flush=True)
            await self.stop()
            return EXIT_USAGE
        except (StartupError, CacheDaemonError, OSError, TimeoutError) as exc:
            print(f"cachedaemon: cannot start: {exc or 'timed out'}", file=sys.stderr,
                  flush=True)
            if self.supervisor is not None:
                self.supervisor.kill_all()  # they never served: nothing to drain or wait for
            await self.stop()
            return EXIT_FAILED
        if not self.stop_requested.is_set():  # a signal during start-up: just stop
            print(f"cachedaemon listening on {url}", flush=True)
            if self.s3_url:
                print(f"cachedaemon S3 endpoint on {self.s3_url}", flush=True)
            log.info("ready: %s, %d shard(s), bucket %s, cache %s", url, self.serving,
                     self.settings.remote.url, self.settings.cache_dir)
            sdnotify.notify("READY=1")
        await self.stop_requested.wait()
        if self.fatal is None:
            log.info("stopping: draining in-flight requests (up to %.1fs)",
                     self.settings.server.shutdown_timeout)
        sdnotify.notify("STOPPING=1")
        await self.stop()
        log.info("stopped")
        return EXIT_FAILED if self.fatal is not None else EXIT_OK

    def _on_signal(self, sig: int) -> None:
        if self.stop_requested.is_set():
            log.warning("second %s: already stopping", signal.Signals(sig).name)
            return
        if self.shard is not None:
            self.shard.state.draining = True
        self.stop_requested.set()

    def _on_reload(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> None:
        """SIGHUP: read the settings again (the config file, the environment, the same flags);
        shard 0 applies the cache's and the log level, then every worker does (by message,
        plain data). A bad file changes nothing."""
        try:
            reread = reload_settings(self.settings)
        except ConfigError as exc:
            log.error("reload refused, the running settings stay: %s", exc)
            return
        merged, applied, later = merge_reloadable(self.settings, reread)
        self.settings = merged  # restarted workers get these too
        if self.shard is not None and self.smp is not None:
            await self.shard.reload(settings_to_dict(merged))  # shard 0 first: the limits
            for i in range(1, self.count):
                with contextlib.suppress(CacheDaemonError):
                    await self.smp.call(i, "shard", "reload", settings_to_dict(merged),
                                        deadline=time.monotonic() + 10.0)
        log.info("reload: applied %s%s", ", ".join(applied) or "nothing (no change)",
                 f"; a restart applies {', '.join(later)}" if later else "")

    def _on_fatal(self, reason: str) -> None:
        self.fatal = reason
        print(f"cachedaemon: {reason}", file=sys.stderr, flush=True)
        self.stop_requested.set()

    def _on_worker_death(self, shard: int) -> None:
        if self.shard is not None and self.shard.cache is not None:
            self.shard.cache.local().release_shard(shard)

    async def start(self) -> str:
        s = self.settings
        check_data_dir(s.storage.data_dir)
        try:
            self.budget = budget = plan(s, shards_per_process=1)
        except BudgetError as exc:
            raise StartupError(str(exc)) from exc
        max_connections = per_shard(budget.connections, self.serving)
        self.sockets = bind_sockets(s.server.host, s.server.port, self.serving)
        port = self.sockets[0].getsockname()[1]
        host = s.server.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        if s.server.s3_listen is not None:
            self.s3_sockets = bind_sockets(s.server.s3_host, s.server.s3_port, self.serving)
            max_connections = max(1, max_connections // 2)
            s3_host, s3_port = s.server.s3_host, self.s3_sockets[0].getsockname()[1]
            self.s3_url = f"http://{'[' + s3_host + ']' if ':' in s3_host else s3_host}:{s3_port}"

        if self.count > 1:
            self.links_dir, self.secret = new_link_dir()
            links = ShardLinks(0, self.links_dir, self.secret)
            await links.listen()
            if self.count > self.serving:  # the metastore's process watches the serving shards
                self.board = ForegroundBoard.in_dir(self.links_dir, self.serving, create=True)
                scheduler().publish_to(self.board, 0)
            self.smp = Smp(0, self.count, links)
            self.supervisor = Supervisor(
                self.count, self._worker_spec, self._worker_sockets,
                on_death=self._on_worker_death, on_fatal=self._on_fatal,
                state=lambda: (self.ready and not self.stop_requested.is_set(),
                               self.stop_requested.is_set()))
            self.smp.register("shards", self.supervisor)
            await self.supervisor.start()  # they load and link while shard 0 starts
        else:
            self.smp = Smp.single()
        self.shard = shard = Shard(s, self.smp, self.sockets[0], max_connections, budget,
                                   self.s3_sockets[0] if self.s3_sockets else None)
        await shard.open()
        try:
            await asyncio.wait_for(probe_store(shard.store), PROBE_TIMEOUT_S)
        except (TimeoutError, CacheDaemonError, OSError) as exc:
            raise StartupError(f"cannot reach the bucket {s.remote.url}: {exc or 'timed out'}") \
                from exc
        await failpoint("server.start.before_recovery")
        await check_bucket_identity(shard.store, s)
        if self.s3_sockets:
            from cachedaemon.server.s3.app import prepare_uploads

            await prepare_uploads(s.storage.data_dir)  # no shard serves S3 before ready
        await shard.start_services()
        if self.supervisor is not None:
            await self.supervisor.wait_ready(WORKER_START_TIMEOUT_S)
        await self._warm_at_start(shard)
        self.ready = True
        await self._tell_all("set_state", True, False)
        return url

    async def _warm_at_start(self, shard: Shard) -> None:
        """``--warm-from``: start the warm-up on shard 0 (every shard serves already, so the
        warm-up's fills follow the per-key order); with ``cache.warm_before_ready``, wait for
        it (bounded by ``cache.warm_timeout``) before reporting ready."""
        source = self.settings.cache.warm_from
        if not source:
            return
        _, status = shard.warm_start(source, None, None)
        log.info("warm-up from %s started%s", source,
                 "; ready once it is done" if self.settings.cache.warm_before_ready else
                 " in the background")
        if self.settings.cache.warm_before_ready:
            status = await shard.warm_wait()
            log.info("warm-up %s: %d objects, %d bytes", status["state"], status["keys_done"],
                     status["bytes_done"])

    def _worker_sockets(self, shard: int) -> dict[str, socket.socket]:
        if shard >= self.serving:
            return {}  # the metastore's process serves no connection
        socks = {"http": self.sockets[shard]}
        if self.s3_sockets:
            socks["s3"] = self.s3_sockets[shard]
        return socks

    def _worker_spec(self, shard: int) -> WorkerSpec:
        assert self.links_dir is not None and self.budget is not None
        settings = settings_to_dict(self.settings)
        settings["_budget"] = [self.budget.limit, self.budget.connections,
                               self.budget.max_open_domains, self.budget.max_open_files,
                               self.budget.own_files]
        spec = WorkerSpec(shard, self.count, self.links_dir, self.secret.hex(), settings)
        if shard >= self.serving:  # the metastore's process, below the serving shards
            ms = self.settings.metastore
            spec.priority = [ms.nice, ms.io_class, ms.cpu_policy]
        return spec

    async def _tell_all(self, method: str, *args: Any, deadline: float | None = None
                        ) -> list[Any]:
        """The ``shard`` service's ``method`` on every shard, each bounded by ``deadline``
        (default: 10 s from now); a shard that is down or starting is skipped."""
        assert self.smp is not None
        if deadline is None:
            deadline = time.monotonic() + 10.0
        results = await asyncio.gather(
            *(self.smp.call(i, "shard", method, *args, deadline=deadline)
              for i in range(self.count)),
            return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, BaseException) and i and not isinstance(r, CacheDaemonError):
                log.warning("shard %d: %s failed: %r", i, method, r)
        return [0 if isinstance(r, BaseException) else r for r in results]

    async def stop(self) -> None:
        s = self.settings
        if self.shard is not None and self.smp is not None:
            deadline = time.monotonic() + s.server.shutdown_timeout
            left = await self._tell_all("drain", deadline, deadline=deadline + 1.0)
            if sum(left):
                log.warning("%d request(s) still running after %.1fs: aborting them",
                            sum(left), s.server.shutdown_timeout)
        if self.shard is not None:
            # The hot set once more, for the next node to warm from (docs/cache.md): drained,
            # while every shard still runs (publishing flushes their reads to shard 0 first).
            await self.shard.stop_warm(publish=True)
        if self.supervisor is not None and self.smp is not None:
            self.supervisor.stopping_soon()
            for i in range(1, self.count):
                with contextlib.suppress(CacheDaemonError):
                    self.smp.post(i, "shard", "stop")
            await self.supervisor.stop(timeout=10.0)
        if self.shard is not None:
            await self.shard.close()
            self.shard = None
        for sock in (*self.sockets, *self.s3_sockets):
            with contextlib.suppress(OSError):
                sock.close()
        if self.smp is not None:
            await self.smp.stop()
            self.smp = None
        if self.links_dir is not None:
            shutil.rmtree(self.links_dir, ignore_errors=True)
            self.links_dir = None


async def run_worker(spec: dict[str, Any]) -> int:
    """A worker shard's life: link to shard 0, start the shard's services, report ready, serve
    until shard 0 says stop (or goes away: then the process exits at once)."""
    from cachedaemon.server.worker import link_to_shard0

    # First, before any thread starts: threads take the process's priorities when created.
    lowered = priority.lower(*spec["priority"]) if spec.get("priority") else None
    executor.install()  # requests' thread jobs never queue behind the metastore's
    raw = dict(spec["settings"])
    limit, connections, domains, files, own = raw.pop("_budget")
    settings = settings_from_dict(raw)
    sched = scheduler()
    sched.set_share(settings.metastore.cpu_share)
    shard_id, count = spec["shard"], spec["count"]
    placement = Placement.from_settings(settings)
    if placement.own_process:  # the serving shards show their requests to the metastore's
        board = ForegroundBoard.in_dir(spec["links_dir"], placement.serving)
        if shard_id == placement.metastore_shard:
            sched.watch(board)
        else:
            sched.publish_to(board, shard_id)
    configure_logging(settings, shard=shard_id)
    import cachedaemon.server.handlers  # noqa: F401

    sock = None
    if "http" in spec["fds"]:
        sock = socket.socket(fileno=spec["fds"]["http"])
        sock.setblocking(False)
    if lowered is not None:
        nice, io_class, cpu_policy = spec["priority"]
        log.info("metastore: a process of its own (shard %d, cpu policy %s, nice %d, "
                 "I/O class %s)%s", shard_id, cpu_policy, nice, io_class,
                 "".join(f"; {p}" for p in lowered))
    s3_sock = None
    if "s3" in spec["fds"]:
        s3_sock = socket.socket(fileno=spec["fds"]["s3"])
        s3_sock.setblocking(False)
    links = await link_to_shard0(spec)
    smp = Smp(shard_id, count, links)
    budget = Budget(limit, connections, domains, files, own)
    max_connections = per_shard(connections, settings.server.shards)
    if s3_sock is not None:
        max_connections = max(1, max_connections // 2)  # as shard 0 splits it
    shard = Shard(settings, smp, sock, max_connections, budget, s3_sock)
    try:
        await shard.open()
        await shard.start_services()
        state = await smp.call(0, "shards", "ready", shard_id)
        shard.set_state(bool(state[0]), bool(state[1]))
        await shard.stopped.wait()
    finally:
        await shard.close()
        await smp.stop()
    return 0


def main() -> int:  # pragma: no cover - manual use
    from cachedaemon.config import load_settings

    return run(load_settings(None, os.environ, {}))
