"""``Sharded[S]`` over message links: each shard has its own instance, ``invoke_on`` runs a
method on another shard by message (only method names and plain data cross), errors and
cancellation travel, a stopped shard raises instead of hanging, one shard is a plain call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cachedaemon.core.sharded import Sharded
from cachedaemon.core.smp import Smp, start_local_shards
from cachedaemon.errors import InvalidArgument, ShardStopped


class Counter:
    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.value = 0
        self.started = asyncio.Event()
        self.cancelled = False

    def add(self, n: int) -> tuple[int, int]:
        self.value += n
        return self.shard, self.value

    def boom(self) -> None:
        raise InvalidArgument(f"bad input on shard {self.shard}")

    async def hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise


@pytest.fixture
async def shards() -> AsyncIterator[list[tuple[Smp, Sharded[Counter]]]]:
    out = []
    for smp in await start_local_shards(3):
        sharded: Sharded[Counter] = Sharded(smp, "counter")
        await sharded.start(Counter)
        out.append((smp, sharded))
    yield out
    for smp, sharded in out:
        await sharded.stop()
        await smp.stop()


async def test_each_shard_has_its_own_instance_and_calls_travel(shards) -> None:  # type: ignore[no-untyped-def]
    (_, s0), (_, s1), (_, s2) = shards
    assert s0.local() is not s1.local()
    assert await s0.invoke_on(1, Counter.add, 5) == [1, 5]  # by message: a tuple comes back a list
    assert await s2.invoke_on(1, "add", 2) == [1, 7]
    assert await s0.invoke_on(0, Counter.add, 1) == (0, 1)  # this shard: a direct call
    assert s1.local().value == 7 and s0.local().value == 1
    assert await s1.invoke_on_all(Counter.add, 1) == [[0, 2], (1, 8), [2, 1]]


async def test_only_methods_and_plain_data_cross(shards) -> None:  # type: ignore[no-untyped-def]
    (_, s0), _, _ = shards
    with pytest.raises(TypeError, match="cannot cross shards"):
        await s0.invoke_on(1, lambda c: c.add(1))
    with pytest.raises(Exception, match="only plain data"):
        await s0.invoke_on(1, Counter.add, object())


async def test_errors_arrive_on_the_caller_as_themselves(shards) -> None:  # type: ignore[no-untyped-def]
    (_, s0), _, _ = shards
    with pytest.raises(InvalidArgument, match="bad input on shard 2"):
        await s0.invoke_on(2, Counter.boom)


async def test_cancelling_the_caller_cancels_the_remote_task(shards) -> None:  # type: ignore[no-untyped-def]
    (_, s0), (_, s1), _ = shards
    call = asyncio.ensure_future(s0.invoke_on(1, Counter.hang))
    await asyncio.wait_for(s1.local().started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):
        if s1.local().cancelled:
            break
        await asyncio.sleep(0.01)
    assert s1.local().cancelled


async def test_a_stopped_shard_raises_instead_of_hanging(shards) -> None:  # type: ignore[no-untyped-def]
    (_, s0), (smp1, s1), _ = shards
    pending = asyncio.ensure_future(s0.invoke_on(1, Counter.hang))
    await asyncio.wait_for(s1.local().started.wait(), 5)
    await smp1.stop()
    with pytest.raises(ShardStopped):
        await pending
    with pytest.raises(ShardStopped):
        await s0.invoke_on(1, Counter.add, 1)


async def test_a_single_shard_is_a_plain_call() -> None:
    smp = Smp.single()
    sharded: Sharded[Counter] = Sharded(smp, "counter")
    await sharded.start(Counter)
    assert await sharded.invoke_on(0, Counter.add, 3) == (0, 3)
    with pytest.raises(ShardStopped):
        await sharded.invoke_on(1, Counter.add, 3)
    await sharded.stop()
    with pytest.raises(ShardStopped):
        sharded.local()
