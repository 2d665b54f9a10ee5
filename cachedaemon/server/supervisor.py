"""Shard 0's supervision of the worker shards: start them, notice deaths, restart, give up.

Shards ``1..N-1`` are child processes (``docs/shards.md``). The :class:`Supervisor` runs on
shard 0's loop. It starts each worker as ``python -m cachedaemon.server.worker`` with its
listening socket(s) inherited (``pass_fds``) and a :class:`WorkerSpec` on standard input (the
resolved settings, the link directory and secret, which shard it is). It then waits on each
process: a worker that exits while the daemon is not stopping is a **death** — logged, reported
to ``on_death`` (shard 0 releases what the dead shard held) and restarted after a short pause
(well within 2 s). :data:`DEATH_LOOP` deaths within :data:`DEATH_WINDOW_S` seconds call
``on_fatal`` instead: the daemon stops with exit status 1 rather than restart forever.

:meth:`Supervisor.stop` waits for the workers to exit (shard 0 tells them to, by message) and
kills any that outlive the deadline. Workers also exit by themselves when shard 0 goes away
(``docs/shards.md``), so no orphan outlives the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("cachedaemon.shards")

#: Deaths within DEATH_WINDOW_S seconds that stop the daemon.
DEATH_LOOP = 5
DEATH_WINDOW_S = 30.0
#: Pause before a dead worker is started again.
RESTART_DELAY_S = 0.2


@dataclass
class WorkerSpec:
    """What a worker shard is told at start (JSON on its standard input)."""

    shard: int
    count: int
    links_dir: str
    secret: str  # hex
    settings: dict[str, Any]
    #: Inherited listening sockets by role ("http", "s3"): their descriptor numbers.
    fds: dict[str, int] = field(default_factory=dict)
    #: ``module:function`` run by the worker (tests use their own).
    entry: str = "cachedaemon.server.main:run_worker"
    parent_pid: int = 0
    #: ``[nice, io_class, cpu_policy]`` the worker lowers itself to first, before any thread
    #: starts (the metastore's process; ``core/priority.lower``).
    priority: list[Any] | None = None


def worker_interpreter() -> tuple[str, dict[str, str]]:
    """The interpreter to start workers with, and environment to add.

    Our own interpreter, as a rule. When the service user may not run it by that path (an
    interpreter under a directory the user cannot search, reached by a symlink from the venv),
    the same Python version found on ``PATH``, told where our modules are (this process's
    ``sys.path``), so the worker runs the very code shard 0 runs."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (shutil.which(version), f"/usr/bin/{version}"):
        if candidate and os.access(candidate, os.X_OK):
            log.info("starting worker shards with %s (this user cannot run %s)", candidate,
                     sys.executable)
            import cachedaemon

            ours = os.path.dirname(os.path.dirname(os.path.abspath(cachedaemon.__file__)))
            path = [ours, *(p for p in sys.path if p and p != ours)]
            return candidate, {"PYTHONPATH": os.pathsep.join(path)}
    return sys.executable, {}


class Supervisor:
    """The worker shards of one daemon (see the module doc). Lives on shard 0."""

    def __init__(self, count: int, make_spec: Callable[[int], WorkerSpec],
                 sockets: Callable[[int], dict[str, socket.socket]], *,
                 on_death: Callable[[int], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 state: Callable[[], tuple[bool, bool]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.count = count
        self._make_spec = make_spec
        self._sockets = sockets
        self._on_death = on_death
        self._on_fatal = on_fatal
        self._state = state or (lambda: (False, False))
        self._env = env
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._deaths: collections.deque[float] = collections.deque()
        self._stopping = False
        self._joined: dict[int, int] = {}  # shard -> pid that said hello
        self._ready: set[int] = set()  # shards whose services are up
        self._joined_changed = asyncio.Event()
        self.restarts = 0

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def pids(self) -> dict[int, int]:
        return {shard: proc.pid for shard, proc in self._procs.items()}

    # --- the "shards" service (called by workers) ---------------------------------------------

    def hello(self, shard: int, pid: int) -> None:
        """A worker is up and linked to shard 0."""
        self._joined[shard] = pid
        self._joined_changed.set()

    def ready(self, shard: int) -> tuple[bool, bool]:
        """A worker's services are up; answers the daemon's (ready, draining) for it to take."""
        self._ready.add(shard)
        self._joined_changed.set()
        return self._state()

    async def wait_ready(self, timeout: float) -> None:
        """Until every worker reported ready (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while len(self._ready & set(self._procs)) < self.count - 1:
                self._joined_changed.clear()
                await self._joined_changed.wait()

    def stopping_soon(self) -> None:
        """The daemon is stopping: exits from now on are not deaths."""
        self._stopping = True

    async def wait_joined(self, timeout: float) -> None:
        """Until every worker said hello (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while any(self._joined.get(s) != p.pid for s, p in self._procs.items()) or \
                    len(self._procs) < self.count - 1:
                self._joined_changed.clear()
                await self._joined_changed.wait()

    async def start(self) -> None:
        for shard in range(1, self.count):
            await self._spawn(shard)

    async def _spawn(self, shard: int) -> None:
        spec = self._make_spec(shard)
        socks = self._sockets(shard)
        spec.fds = {role: s.fileno() for role, s in socks.items()}
        spec.parent_pid = os.getpid()
        executable, extra_env = worker_interpreter()
        env = self._env
        if extra_env:
            env = {**(env if env is not None else os.environ), **extra_env}
        proc = await asyncio.create_subprocess_exec(
            executable, "-m", "cachedaemon.server.worker",
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=None,
            pass_fds=tuple(spec.fds.values()), env=env)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(asdict(spec)).encode())
        proc.stdin.close()
        self._procs[shard] = proc
        self._watchers[shard] = asyncio.ensure_future(self._watch(shard, proc))
        log.debug("shard %d started as process %d", shard, proc.pid)

    async def _watch(self, shard: int, proc: asyncio.subprocess.Process) -> None:
        status = await proc.wait()
        if self._stopping or self._procs.get(shard) is not proc:
            return
        self._ready.discard(shard)
        self._joined.pop(shard, None)
        how = f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"
        log.error("shard %d (process %d) died with %s", shard, proc.pid, how)
        if self._on_death is not None:
            try:
                self._on_death(shard)
            except Exception as exc:
                log.error("releasing what shard %d held failed: %r", shard, exc, exc_info=exc)
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > DEATH_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= DEATH_LOOP:
            reason = (f"{len(self._deaths)} shard deaths within {DEATH_WINDOW_S:g}s; "
                      "stopping instead of restarting")
            log.error("%s", reason)
            if self._on_fatal is not None:
                self._on_fatal(reason)
            return
        await asyncio.sleep(RESTART_DELAY_S)
        if self.stopping:  # stop() may have begun during the pause
            return
        self.restarts += 1
        try:
            await self._spawn(shard)
        except OSError as exc:
            log.error("cannot restart shard %d: %s", shard, exc)
            if self._on_fatal is not None:
                self._on_fatal(f"cannot restart shard {shard}: {exc}")

    async def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every worker to exit, then kill what is left."""
        self._stopping = True
        procs = list(self._procs.values())
        deadline = time.monotonic() + timeout
        for proc in procs:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(proc.wait(), remaining)
            except TimeoutError:
                log.warning("shard process %d did not stop in time: killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._watchers.values():
            task.cancel()
        self._procs.clear()

    def kill_all(self) -> None:
        """Kill every worker now (a failed start)."""
        self._stopping = True
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
