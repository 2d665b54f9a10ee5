"""Shard links: calls, posts, errors as data, cancellation, deadlines, peers that go away."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cachedaemon.core import messages as m
from cachedaemon.core.channel import ShardLinks, socket_path
from cachedaemon.errors import DeadlineExceeded, InvalidRange, NotFound, ShardStopped

SECRET = b"s" * 32


@dataclass
class Stats:
    used: int
    name: str


class Service:
    def __init__(self) -> None:
        self.log: list[object] = []
        self.started = asyncio.Event()
        self.cancelled = False

    def note(self, value: object) -> None:
        self.log.append(value)

    def add(self, a: int, b: int) -> int:
        return a + b

    async def slow_add(self, a: int, b: int) -> int:
        await asyncio.sleep(0.01)
        return a + b

    def echo(self, value: object) -> object:
        return value

    def stats(self) -> Stats:
        return Stats(7, "x")

    def fail(self) -> None:
        raise InvalidRange("no such range", 42)

    async def fail_later(self) -> None:
        await asyncio.sleep(0)
        raise NotFound("gone")

    async def hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def seen(self) -> list[object]:
        return self.log


@pytest.fixture
async def pair() -> AsyncIterator[tuple[ShardLinks, ShardLinks, Service]]:
    with tempfile.TemporaryDirectory() as d:
        a, b = ShardLinks(0, d, SECRET), ShardLinks(1, d, SECRET)
        await a.listen()
        await b.listen()
        svc = Service()
        b.register("svc", svc)
        yield a, b, svc
        await a.close()
        await b.close()


async def test_calls_return_results_and_plain_data_round_trips(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, _ = pair
    assert await a.call(1, "svc", "add", [2, 3]) == 5
    assert await a.call(1, "svc", "slow_add", [2, 3]) == 5
    value = {"k": [1, 2.5, None, True, b"\x00\xff", "é"]}
    assert await a.call(1, "svc", "echo", [value]) == value
    assert await a.call(1, "svc", "stats", [], result_type=Stats) == Stats(7, "x")
    assert await a.call(1, "svc", "stats", []) == {"used": 7, "name": "x"}


async def test_posts_and_calls_run_in_the_order_sent(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, _ = pair
    for i in range(500):
        a.post(1, "svc", "note", [i])  # the first ones go out before the link exists
    assert await a.call(1, "svc", "seen", []) == list(range(500))


async def test_errors_come_back_as_the_same_class_with_their_fields(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, _ = pair
    with pytest.raises(InvalidRange) as info:
        await a.call(1, "svc", "fail", [])
    assert info.value.size == 42 and info.value.message == "no such range"
    with pytest.raises(NotFound, match="gone"):
        await a.call(1, "svc", "fail_later", [])
    with pytest.raises(AttributeError):
        await a.call(1, "svc", "nope", [])
    with pytest.raises(m.MessageError):
        await a.call(1, "svc", "__init__", [])


async def test_only_plain_data_crosses(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, _ = pair
    with pytest.raises(m.MessageError, match="only plain data"):
        await a.call(1, "svc", "echo", [object()])
    with pytest.raises(m.MessageError):
        await a.call(1, "svc", "echo", [lambda: 1])


async def test_cancelling_the_caller_cancels_the_remote_task(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, svc = pair
    call = asyncio.ensure_future(a.call(1, "svc", "hang", []))
    await asyncio.wait_for(svc.started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):
        if svc.cancelled:
            break
        await asyncio.sleep(0.01)
    assert svc.cancelled


async def test_a_deadline_travels_and_cancels_the_remote_work(pair) -> None:  # type: ignore[no-untyped-def]
    a, _, svc = pair
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await a.call(1, "svc", "hang", [], deadline=time.monotonic() + 0.1)
    assert time.monotonic() - t0 < 2 and svc.cancelled


async def test_a_shard_that_goes_away_fails_pending_and_later_calls(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, svc = pair
    call = asyncio.ensure_future(a.call(1, "svc", "hang", []))
    await asyncio.wait_for(svc.started.wait(), 5)
    await b.close()
    with pytest.raises(ShardStopped):
        await call
    with pytest.raises(ShardStopped):
        await a.call(1, "svc", "add", [1, 1])
    # A shard restarted at the same path is reachable again.
    c = ShardLinks(1, a.directory, SECRET)
    await c.listen()
    c.register("svc", Service())
    assert await a.call(1, "svc", "add", [1, 1]) == 2
    await c.close()


async def test_calls_wait_for_a_service_that_registers_later(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = pair
    a.post(1, "late", "note", ["first"])
    call = asyncio.ensure_future(a.call(1, "late", "seen", []))
    await asyncio.sleep(0.05)
    assert not call.done()
    late = Service()
    b.register("late", late)
    assert await asyncio.wait_for(call, 5) == ["first"]


async def test_a_link_without_the_secret_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    _, b, _ = pair
    r, w = await asyncio.open_unix_connection(socket_path(b.directory, 1))
    w.write(m.encode_frame(m.HELLO, 5, None, b"wrong" * 7, os.getpid()))
    w.write(m.encode_frame(m.CALL, 1, "svc.add", None, [1, 2]))
    assert await asyncio.wait_for(r.read(), 5) == b""  # closed, nothing answered


def test_frames_round_trip_and_garbage_is_refused() -> None:
    frame = m.encode_frame(m.CALL, 9, "svc.add", 1.5, [1, "two", b"3"])
    kind, ident, a, b, payload = m.decode_frame(frame[4:])
    assert (kind, ident, a, b, m.decode_value(payload)) == (m.CALL, 9, "svc.add", 1.5,
                                                             [1, "two", b"3"])
    with pytest.raises(m.MessageError):
        m.decode_frame(b"\xc1garbage")
