"""Gate: holders, close() waiting for them, refusing entry once closing."""

import asyncio

import pytest

from cachedaemon.core.gate import Gate
from cachedaemon.errors import GateClosed


async def test_close_waits_for_running_holders() -> None:
    gate = Gate("svc")
    order: list[str] = []

    async def work(i: int) -> None:
        async with gate.hold():
            await asyncio.sleep(0.01 * i)
            order.append(f"work{i}")

    tasks = [asyncio.create_task(work(i)) for i in range(1, 4)]
    await asyncio.sleep(0)
    assert gate.count == 3
    await gate.close()
    order.append("closed")
    assert order == ["work1", "work2", "work3", "closed"]
    assert gate.count == 0
    await asyncio.gather(*tasks)


async def test_closed_gate_refuses_and_names_itself() -> None:
    gate = Gate("cache")
    await gate.close()
    with pytest.raises(GateClosed, match="gate cache is closed"):
        gate.hold()
    assert gate.try_hold() is None
    with pytest.raises(GateClosed):
        gate.check()


async def test_long_holder_can_check_for_closing() -> None:
    gate = Gate("g")
    holder = gate.hold()
    closer = asyncio.create_task(gate.close())
    await asyncio.sleep(0)
    assert gate.is_closed and not closer.done()
    with pytest.raises(GateClosed):
        gate.check()
    holder.release()
    holder.release()  # idempotent: must not count twice
    await asyncio.wait_for(closer, 1)
    assert gate.count == 0


async def test_holder_released_on_exception() -> None:
    gate = Gate("g")
    with pytest.raises(ValueError), gate.hold():
        raise ValueError("boom")
    assert gate.count == 0
    await asyncio.wait_for(gate.close(), 1)
