"""A small program that runs a cache and crashes inside it (run by test_crash.py).

Usage: ``python crash_worker.py CACHE_DIR SCENARIO`` with ``CACHEDAEMON_FAILPOINTS`` set to
arm a ``crash`` fail point. ``setup`` commits a few entries and stops cleanly; the other
scenarios reach the armed fail point and die with exit status 137 (``os._exit``: no cleanup, no
flush, as kill -9). If a scenario gets to its end instead, it stops cleanly and exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from cachedaemon.cache import CacheService
from cachedaemon.clock import deadline_after
from cachedaemon.config import load_settings

BASE = {"base/one": 1000, "base/two": 2000, "three": 3000, "victim": 3000}


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
        staging_chunk_bytes=4096, min_free_bytes=0,
    )
    svc = await CacheService.open_single(root, settings)
    await svc.coordinator.wait_reconciled()
    if scenario == "setup":
        for key, n in BASE.items():
            await write(svc, key, n)
    elif scenario == "commit":  # after link, before unlink and before the COMMIT record
        await write(svc, "fresh/key", 12_345)
    elif scenario == "commit_replace":  # right after the rename over "victim"
        await write(svc, "victim", 20_000, replace=True)
    elif scenario == "append":  # in the middle of appending (3rd append)
        await write(svc, "partial", 50_000)
    elif scenario == "begin":  # BEGIN journaled, the .part not made yet
        await write(svc, "begun", 10)
    elif scenario == "many":  # commits while the journal's writer crashes somewhere
        for i in range(20):
            await write(svc, f"m/{i}", 1000 + i)
    elif scenario == "trim":  # a trim of everything (deletes in a thread job)
        coord = svc.coordinator
        async with await coord._trim_sem.get_units(1):
            await coord._trim_once(manual=True, fraction=0.0)
    elif scenario == "invalidate":
        await svc.invalidate("base/one")
    elif scenario == "compact":  # a snapshot (journal compaction) with commits around it
        for i in range(5):
            await write(svc, f"c/{i}", 500 + i)
        store = svc.coordinator.store
        store.compact()
        assert store._compacting is not None
        await store._compacting
        await write(svc, "c/after", 77)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    await svc.stop()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
