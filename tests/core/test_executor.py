"""The shard's thread pool in two: background work (a domain's, through ``call_domain``) never
holds up a request's thread jobs (``core/executor.py``, issue 18)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from cachedaemon.core import executor
from cachedaemon.core.executor import BACKGROUND_THREADS, ClassedExecutor, background_io
from cachedaemon.metastore.service import call_domain


class _OneShard:
    """A one-shard ``Sharded`` as ``call_domain`` sees it."""

    count = 1
    shard = 0

    def local(self) -> object:
        return self


async def _blocked_domain_jobs(n: int, release: threading.Event) -> list[asyncio.Task[Any]]:
    """``n`` domain operations, each blocked in a thread job until ``release``."""
    started = threading.Semaphore(0)

    def job() -> None:
        started.release()
        release.wait(10)

    async def op(service: object, name: str) -> None:
        await asyncio.to_thread(job)

    tasks = [asyncio.ensure_future(call_domain(cast(Any, _OneShard()), "d", op))
             for _ in range(n)]
    await asyncio.sleep(0.05)
    return tasks


async def test_domain_thread_jobs_never_hold_up_a_requests() -> None:
    loop = asyncio.get_running_loop()
    installed = executor.install(loop)
    release = threading.Event()
    # More blocked domain jobs than either pool has threads.
    tasks = await _blocked_domain_jobs(executor.foreground_threads() + BACKGROUND_THREADS,
                                       release)
    try:
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "served"), 2.0) == "served"
    finally:
        release.set()
        await asyncio.gather(*tasks)
        installed.shutdown()


async def test_work_started_in_the_background_stays_there() -> None:
    pool = ClassedExecutor(background_threads=1)
    names: list[str] = []

    def where() -> None:
        names.append(threading.current_thread().name)

    loop = asyncio.get_running_loop()
    loop.set_default_executor(pool)
    try:
        await asyncio.to_thread(where)
        with background_io():
            await asyncio.to_thread(where)
            task = asyncio.ensure_future(asyncio.to_thread(where))  # inherits the context
        await task
        await asyncio.to_thread(where)
    finally:
        pool.shutdown()
    assert [n.split("_")[0] for n in names] == [
        "cachedaemon-io", "cachedaemon-bg", "cachedaemon-bg", "cachedaemon-io"]
