"""The shard runtime (Seastar's ``smp``): N event loops, one per thread, and messages between them.

Shard 0 is the loop that calls :meth:`Smp.start` (the main thread's loop); shards 1..N-1 each get
a thread running their own event loop (uvloop when available). A shard's state is touched only
from its own loop; work moves between shards only through :meth:`Smp.submit_to`, which runs a
function on the target loop and delivers its result (or exception) back on the caller's loop.
With one shard everything runs on one loop and ``submit_to`` is a plain call.

Cancelling the caller cancels the remote task. A call to a shard that is stopped (or stops
while the call is pending) raises :class:`ShardStopped` instead of hanging.

:func:`this_shard_id` answers which shard the current thread is.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from cachedaemon.errors import ShardStopped

T = TypeVar("T")

log = logging.getLogger("cachedaemon.smp")

_local = threading.local()


def this_shard_id() -> int:
    """The shard the calling thread runs (0 outside any shard thread)."""
    return cast(int, getattr(_local, "shard", 0))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop when installed, else the default one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())


class _Shard:
    __slots__ = ("id", "loop", "pending", "running", "thread")

    def __init__(self, shard_id: int) -> None:
        self.id = shard_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.running = False
        # Caller-side futures of calls in flight to this shard: failed on stop.
        self.pending: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = set()


class Smp:
    """Owns the shard threads and their loops. Started and stopped from shard 0's loop."""

    def __init__(self, shards: int, *, name: str = "cachedaemon", use_uvloop: bool = True) -> None:
        if shards < 1:
            raise ValueError("at least one shard is needed")
        self.name = name
        self._use_uvloop = use_uvloop
        self._shards = [_Shard(i) for i in range(shards)]
        self._lock = threading.Lock()
        self._started = False

    @property
    def count(self) -> int:
        return len(self._shards)

    def loop(self, shard: int) -> asyncio.AbstractEventLoop:
        loop = self._shards[shard].loop
        if loop is None:
            raise ShardStopped(f"shard {shard} of {self.name} is not running")
        return loop

    async def start(self) -> None:
        """Adopt the running loop as shard 0 and start the other shards' threads."""
        if self._started:
            raise RuntimeError("Smp already started")
        self._started = True
        _local.shard = 0
        first = self._shards[0]
        first.loop = asyncio.get_running_loop()
        first.running = True
        for shard in self._shards[1:]:
            ready = threading.Event()
            shard.thread = threading.Thread(
                target=self._run_shard, args=(shard, ready), name=f"{self.name}-shard-{shard.id}",
                daemon=True,
            )
            shard.thread.start()
            await asyncio.to_thread(ready.wait)

    def _run_shard(self, shard: _Shard, ready: threading.Event) -> None:
        _local.shard = shard.id
        loop = new_event_loop() if self._use_uvloop else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        shard.loop = loop
        shard.running = True
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def submit_to(self, shard: int, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on ``shard``'s loop; awaitable results are awaited there."""
        target = self._shards[shard]
        if not target.running or target.loop is None:
            raise ShardStopped(f"shard {shard} of {self.name} is not running")
        caller_loop = asyncio.get_running_loop()
        if target.loop is caller_loop:
            result = fn(*args)
            if inspect.isawaitable(result):
                return await result
            return result

        result_future: asyncio.Future[Any] = caller_loop.create_future()
        entry = (caller_loop, result_future)
        remote_task: list[asyncio.Task[Any]] = []

        def deliver(setter: Callable[[], object]) -> None:
            if not result_future.done():
                setter()

        async def run() -> Any:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
            return result

        def on_done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                outcome: Callable[[], object] = result_future.cancel
            elif (exc := task.exception()) is not None:
                outcome = lambda: result_future.set_exception(exc)  # noqa: E731
            else:
                value = task.result()
                outcome = lambda: result_future.set_result(value)  # noqa: E731
            with contextlib.suppress(RuntimeError):  # caller's loop already closed
                caller_loop.call_soon_threadsafe(deliver, outcome)

        def launch() -> None:
            task = asyncio.ensure_future(run())
            remote_task.append(task)
            task.add_done_callback(on_done)

        with self._lock:
            if not target.running:
                raise ShardStopped(f"shard {shard} of {self.name} is not running")
            target.pending.add(entry)
        try:
            target.loop.call_soon_threadsafe(launch)
            try:
                return await result_future
            except asyncio.CancelledError:
                if remote_task:
                    with contextlib.suppress(RuntimeError):
                        target.loop.call_soon_threadsafe(remote_task[0].cancel)
                elif target.running:
                    # Not launched yet: cancel as soon as it is.
                    def cancel_when_launched() -> None:
                        if remote_task:
                            remote_task[0].cancel()

                    with contextlib.suppress(RuntimeError):
                        target.loop.call_soon_threadsafe(cancel_when_launched)
                raise
        finally:
            with self._lock:
                target.pending.discard(entry)

    async def stop(self) -> None:
        """Stop shards N-1..1 (their tasks are cancelled) and join their threads."""
        for shard in reversed(self._shards[1:]):
            with self._lock:
                shard.running = False
                pending = list(shard.pending)
                shard.pending.clear()
            for caller_loop, fut in pending:
                err = ShardStopped(f"shard {shard.id} of {self.name} stopped during the call")

                def fail(f: asyncio.Future[Any] = fut, e: ShardStopped = err) -> None:
                    if not f.done():
                        f.set_exception(e)

                with contextlib.suppress(RuntimeError):
                    caller_loop.call_soon_threadsafe(fail)
            if shard.loop is not None:
                with contextlib.suppress(RuntimeError):
                    shard.loop.call_soon_threadsafe(shard.loop.stop)
            if shard.thread is not None:
                await asyncio.to_thread(shard.thread.join)
            shard.loop = None
        self._shards[0].running = False


async def maybe_await(value: T | Awaitable[T]) -> T:
    """Await ``value`` if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value
