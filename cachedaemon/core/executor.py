"""ClassedExecutor: a shard's default thread pool, split in two so that background work (the
metastore's WAL syncs, SST reads and writes, compactions) never queues ahead of the thread
jobs of the requests the shard serves (a read fill's bucket read, staging write and seal).

Seastar gives each scheduling group its own I/O queue; a Python shard's blocking calls all go
through one ``ThreadPoolExecutor`` (``asyncio.to_thread``), and with a kv load on the shard its
six threads were busy with ``fsync``s while a fill's thread jobs waited behind them (issue 18).
Work runs in the background pool while :data:`BACKGROUND` is set in its context: code enters
it with :func:`background_io` (``metastore.service.call_domain`` does, for everything a domain
does on a request's behalf; tasks started meanwhile inherit it). Everything else — requests,
the cache — uses the foreground pool, as before.

Installed on each shard's loop by :func:`install` (``set_default_executor``); owned by that
loop, any shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: Set while code runs on behalf of background work (see the module docstring).
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("cachedaemon_background_io",
                                                                   default=False)

#: Threads of the background pool: enough for a WAL sync, an SST upload and a compaction's reads
#: at once; the foreground pool keeps ``ThreadPoolExecutor``'s default (CPUs + 4, at most 32).
BACKGROUND_THREADS = 4


@contextlib.contextmanager
def background_io() -> Iterator[None]:
    """Within it, thread jobs (and those of tasks started within it) use the background pool."""
    token = BACKGROUND.set(True)
    try:
        yield
    finally:
        BACKGROUND.reset(token)


class ClassedExecutor(ThreadPoolExecutor):
    """The foreground pool itself, with a background pool beside it (see the module
    docstring). A ``ThreadPoolExecutor`` so that ``loop.set_default_executor`` takes it."""

    def __init__(self, background_threads: int = BACKGROUND_THREADS) -> None:
        super().__init__(thread_name_prefix="cachedaemon-io")
        self.background = ThreadPoolExecutor(max_workers=background_threads,
                                             thread_name_prefix="cachedaemon-bg")

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if BACKGROUND.get():
            return self.background.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.background.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)


def install(loop: asyncio.AbstractEventLoop | None = None) -> ClassedExecutor:
    """Make a new :class:`ClassedExecutor` the default executor of ``loop`` (the running one)."""
    loop = loop or asyncio.get_running_loop()
    executor = ClassedExecutor()
    loop.set_default_executor(executor)
    return executor


def foreground_threads() -> int:
    """The foreground pool's size (``ThreadPoolExecutor``'s default)."""
    return min(32, (os.cpu_count() or 1) + 4)
