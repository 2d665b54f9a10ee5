"""A small program that runs a cache and crashes inside it (run by test_crash.py).

Usage: ``python crash_worker.py CACHE_DIR SCENARIO`` with ``CACHEDAEMON_FAILPOINTS`` set to
arm a ``crash`` fail point. It commits a few entries, then runs the scenario, which reaches the
armed fail point and dies with exit status 137 (``os._exit``: no cleanup, as kill -9). If it
gets to the end instead, it exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from cachedaemon.cache import CacheService
from cachedaemon.clock import deadline_after
from cachedaemon.config import load_settings

KEYS = ["base/one", "base/two", "three", "victim"]


def content(key: str, n: int) -> bytes:
    unit = (key + ":").encode()
    return (unit * (n // len(unit) + 1))[:n]


async def write(svc: CacheService, key: str, n: int, replace: bool = False) -> None:
    staging = await svc.create_staging_file(key, deadline_after(5.0))
    data = content(key, n)
    for off in range(0, n, 5000):
        await staging.append(data[off : off + 5000])
    await staging.commit(replace=replace)


async def main(root: Path, scenario: str) -> None:
    settings = dataclasses.replace(
        load_settings(env={}).cache, max_bytes=10 * 1024 * 1024, staging_initial_bytes=4096,
        staging_chunk_bytes=4096,
    )
    svc = await CacheService.open_single(root, settings)
    if scenario == "setup":
        for i, key in enumerate(KEYS[:3]):
            await write(svc, key, 1000 * (i + 1))
        await write(svc, "victim", 3000)
        await svc.stop()
        return
    if scenario == "commit":  # crash after link, before unlink
        await write(svc, "fresh/key", 12_345)
    elif scenario == "commit_replace":  # crash right after the rename over "victim"
        await write(svc, "victim", 20_000, replace=True)
    elif scenario == "append":  # crash in the middle of appending (3rd append)
        await write(svc, "partial", 50_000)
    elif scenario == "tracker":  # crash while saving the tracker (at stop)
        await write(svc, "tracked", 7000)
        await svc.get("base/one")
        await svc.stop()
        return
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    await svc.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
