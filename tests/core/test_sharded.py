"""Smp and Sharded: per-shard instances, cross-shard calls, exceptions, stop."""

import asyncio
import threading

import pytest

from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp, this_shard_id
from cachedaemon.errors import ShardStopped


class Counter:
    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.thread = threading.get_ident()
        self.value = 0
        self.stopped = False

    async def add(self, n: int) -> int:
        assert this_shard_id() == self.shard
        assert threading.get_ident() == self.thread
        self.value += n
        return self.value

    def fail(self) -> None:
        raise KeyError(f"no such thing on shard {self.shard}")

    async def stop(self) -> None:
        self.stopped = True


async def test_instances_live_on_their_own_shard_threads() -> None:
    smp = Smp(3)
    await smp.start()
    sharded: Sharded[Counter] = Sharded(smp, "counter")
    try:
        await sharded.start(Counter)
        assert sharded.local().shard == 0
        assert await sharded.invoke_on(2, Counter.add, 5) == 5
        assert await sharded.invoke_on(2, Counter.add, 1) == 6
        assert await sharded.invoke_on_all(lambda c: c.shard) == [0, 1, 2]
        total = await sharded.map_reduce(lambda c: c.value, lambda a, b: a + b, 0)
        assert total == 6
        threads = {sharded.instance(i).thread for i in range(3)}
        assert len(threads) == 3
    finally:
        instances = [sharded.instance(i) for i in range(3)]
        await sharded.stop()
        await smp.stop()
    assert all(c.stopped for c in instances)


async def test_cross_shard_exception_arrives_on_caller() -> None:
    smp = Smp(2)
    await smp.start()
    sharded: Sharded[Counter] = Sharded(smp, "counter")
    try:
        await sharded.start(Counter)
        with pytest.raises(KeyError, match="shard 1"):
            await sharded.invoke_on(1, Counter.fail)
    finally:
        await sharded.stop()
        await smp.stop()


async def test_call_to_stopped_shard_raises_instead_of_hanging() -> None:
    smp = Smp(2)
    await smp.start()
    started = asyncio.Event()

    async def forever() -> None:
        asyncio.get_running_loop().call_soon_threadsafe  # noqa: B018 - touch the loop
        await asyncio.sleep(3600)

    pending = asyncio.create_task(smp.submit_to(1, forever))
    await asyncio.sleep(0.05)
    started.set()
    await smp.stop()
    with pytest.raises(ShardStopped):
        await asyncio.wait_for(pending, 2)
    with pytest.raises(ShardStopped):
        await smp.submit_to(1, lambda: 1)


async def test_cancelling_caller_cancels_remote_task() -> None:
    smp = Smp(2)
    await smp.start()
    remote_cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            remote_cancelled.set()
            raise

    try:
        call = asyncio.create_task(smp.submit_to(1, slow))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await asyncio.to_thread(remote_cancelled.wait, 2)
    finally:
        await smp.stop()


async def test_single_shard_runs_on_callers_loop() -> None:
    smp = Smp(1)
    await smp.start()
    sharded: Sharded[Counter] = Sharded(smp, "one")
    await sharded.start(Counter)
    assert sharded.local().thread == threading.get_ident()
    assert await sharded.invoke_on(0, Counter.add, 2) == 2
    await sharded.stop()
    await smp.stop()
