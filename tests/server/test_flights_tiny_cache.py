"""Single-flight reads over a cache too small to keep what the flights fill.

The in-flight rule of ``docs/concurrency.md``: a follower of a flight takes no reference from
the leader; when it wakes it looks the key up in the cache again, and if the fill is gone
already (trimmed by the next leader's fill, or never committed) it reads the bucket itself.
Here several keys are missed at once, each by several readers, on a daemon whose 2 MiB cache
holds two of the objects: every reader must get the whole, right body.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp

from tests.server.conftest import part_files
from tests.support.daemon import DaemonProcess
from tests.support.http import fetch


async def test_followers_whose_fill_was_trimmed_read_the_bucket(
        small_daemon: DaemonProcess) -> None:
    d = small_daemon
    bodies = {f"flight-tiny/{i}": os.urandom(900_000) for i in range(6)}
    async with aiohttp.ClientSession() as s:
        for key, body in bodies.items():
            assert (await fetch("PUT", f"{d.url}/v1/objects/{key}", data=body,
                                session=s)).status == 201
        for round_ in range(2):
            for key in bodies:  # every read below starts as a miss
                await fetch("DELETE", f"{d.url}/v1/cache/objects/{key}", session=s)
            keys = [k for k in bodies for _ in range(5)]
            replies = await asyncio.gather(*(fetch("GET", f"{d.url}/v1/objects/{k}", session=s)
                                             for k in keys))
            for key, reply in zip(keys, replies, strict=True):
                assert reply.status == 200, (round_, key, reply.status)
                assert hashlib.sha256(reply.body).digest() == \
                    hashlib.sha256(bodies[key]).digest(), (round_, key)
        st = (await fetch("GET", f"{d.url}/v1/cache", session=s)).json()
    assert st["bytes_used"] <= 2 * 1024 * 1024
    assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
    assert not part_files(d.data_dir)
