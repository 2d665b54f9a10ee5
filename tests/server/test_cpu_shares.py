"""The metastore's CPU share in a real daemon (issue 18, ``core/scheduling.py``): its work pauses
only while object requests are in flight, and the pauses show in the metrics. With one shard the
metastore shares the shard's loop; with two it runs in a process of its own, which learns of
the serving shards' requests through the shared foreground board."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from cachedaemon.client import AsyncClient
from tests.support.daemon import start_daemon
from tests.support.http import fetch


def paused_seconds(text: str) -> float:
    m = re.search(r"^cachedaemon_background_paused_seconds_total ([\d.e+-]+)$", text, re.M)
    assert m is not None, "no cachedaemon_background_paused_seconds_total in /metrics"
    return float(m.group(1))


@pytest.mark.parametrize("shards", [1, 2])
def test_metastore_work_pauses_for_object_requests_only(tmp_path: Path, shards: int) -> None:
    value = os.urandom(1024)
    # With two shards the metastore's process pauses only while the CPU is contended
    # (core/cpu_pressure.py): every process of the daemon on one CPU makes sure it is, on any
    # machine.
    cpu = min(os.sched_getaffinity(0))
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if shards > 1 else None
    with start_daemon(tmp_path / "d", "--metastore-memtable-bytes", "256KiB",
                      "--metastore-cpu-share", "0.2", shards=shards, preexec_fn=pin) as d:
        async def metrics() -> float:
            return paused_seconds((await fetch("GET", f"{d.url}/metrics")).body.decode())

        async def scenario() -> None:
            async with AsyncClient(d.url) as client:
                async def kv(rounds: int) -> None:
                    for i in range(rounds):
                        await client.kv_batch("shares", [
                            ("put", f"k{(i * 64 + j) % 4000:06d}", value) for j in range(64)])

                start = await metrics()
                await kv(40)  # alone: nothing to give way to
                await client.compact("shares")
                assert await metrics() == start

                body = os.urandom(64 * 1024)
                assert (await fetch("PUT", f"{d.url}/v1/objects/hot", data=body)).status == 201
                stop = asyncio.Event()

                async def reader() -> None:
                    while not stop.is_set():
                        r = await fetch("GET", f"{d.url}/v1/objects/hot")
                        assert r.status == 200 and r.body == body

                readers = [asyncio.ensure_future(reader()) for _ in range(4)]
                try:
                    deadline = time.monotonic() + 20
                    while await metrics() == start and time.monotonic() < deadline:
                        await kv(10)
                        await client.compact("shares")
                finally:
                    stop.set()
                    await asyncio.gather(*readers)
                assert await metrics() > start, "the metastore never gave way to the readers"
                assert (await client.kv_get("shares", "k000001")) == value

        asyncio.run(scenario())
