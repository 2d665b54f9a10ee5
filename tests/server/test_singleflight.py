"""SingleFlight: one leader per key, followers share its landing."""

from __future__ import annotations

import asyncio

import pytest

from cachedaemon.server.singleflight import ShardFlightAborted, SingleFlight


async def test_run_shares_one_call() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.ensure_future(flights.run("k", work)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 10
    assert calls == 1 and not flights.in_flight("k")


async def test_begin_is_synchronous() -> None:
    flights: SingleFlight[None] = SingleFlight()
    fut = flights.begin("k")
    assert flights.joinable("k")
    with pytest.raises(RuntimeError):
        flights.begin("k")
    waiter = asyncio.ensure_future(flights.wait("k"))
    await asyncio.sleep(0)
    assert not waiter.done()
    flights.end("k", fut)
    assert await waiter is None
    assert await flights.wait("k") is None  # nothing in the air


async def test_leader_cancelled_followers_told() -> None:
    flights: SingleFlight[int] = SingleFlight()

    async def slow() -> int:
        await asyncio.sleep(10)
        return 1

    leader = asyncio.ensure_future(flights.run("k", slow))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.run("k", slow))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(ShardFlightAborted):
        await follower
    follower2 = asyncio.ensure_future(flights.wait("k"))
    assert await follower2 is None


async def test_follower_cancel_does_not_stop_leader() -> None:
    flights: SingleFlight[int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    leader = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.wait("k"))
    await asyncio.sleep(0)
    follower.cancel()
    gate.set()
    assert await leader == 7
