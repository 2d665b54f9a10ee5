# ruff: noqa: E402
"""Benchmark: the cache service: staging writes, reservations, startup recovery, trim.

    .venv/bin/python bench/cache.py [--dir DIR] [--objects N] [--big] [--quick]

1. **Staging write + commit** throughput (MB/s, 10^6 bytes/s) for 64 KiB, 1 MiB and 16 MiB
   objects, appended in 64 KiB chunks (an HTTP body's usual chunk), against a plain blocking
   ``open/write/fsync/close/rename`` loop of the same data in the same run. Both with fsync
   (the cache's default: ``commit`` fdatasyncs before linking, so a power loss never exposes a
   torn entry) and without (``fsync_commits=False``). Rounds alternate between the two so
   disk drift hits both alike. Goal: ours >= 0.8x plain.
2. ``reserve_space`` + release round trips per second, from shard 0 and from shard 1 of an
   pair of shards linked by messages as the daemon's processes are (every reservation from
   shard 1 is a call to shard 0 and a release posted back).
3. Startup (recovery) time with N cached objects (default 100,000; ``--big`` adds 1,000,000):
   cold (no tracker file: rebuilt from the walk) and warm (tracker saved at the last stop).
4. Trim time with N objects: a manual trim (walk + LRU delete of 20 %) and an LRU-only trim
   (in memory, deletes in thread batches), with the worst event-loop stall seen meanwhile.

Files are created in a temporary directory under ``--dir`` (default: the system's temporary
directory; point it at the data disk) and deleted at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = str(Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import dataclasses
import os
import shutil
import tempfile
import time

from cachedaemon.cache import CacheService, start_cache, stop_cache
from cachedaemon.cache.keys import TRACKER_NAME, key_relpath
from cachedaemon.clock import NO_DEADLINE
from cachedaemon.config import CacheSettings, load_settings
from cachedaemon.core.smp import start_local_shards

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB


def settings(**kw: object) -> CacheSettings:
    base = load_settings(env={}).cache
    return dataclasses.replace(base, **{"max_bytes": 1 << 40, "max_objects": 10_000_000, **kw})


# --- 1. staging writes ---------------------------------------------------------------------------


def plain_write(dirpath: Path, name: str, data: bytes, sync: bool) -> None:
    tmp = dirpath / f"{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            os.write(fd, view[off : off + CHUNK])
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, dirpath / name)


async def ours_round(svc: CacheService, prefix: str, data: bytes, count: int) -> float:
    t0 = time.perf_counter()
    view = memoryview(data)
    for i in range(count):
        f = await svc.create_staging_file(f"{prefix}/o{i}", NO_DEADLINE)
        for off in range(0, len(data), CHUNK):
            await f.append(view[off : off + CHUNK])
        await f.commit()
    return time.perf_counter() - t0


def plain_round(d: Path, data: bytes, count: int, sync: bool) -> float:
    d.mkdir()
    t0 = time.perf_counter()
    for i in range(count):
        plain_write(d, f"o{i}", data, sync)
    return time.perf_counter() - t0


async def bench_staging(root: Path, quick: bool) -> list[tuple[str, float, float]]:
    rows: list[tuple[str, float, float]] = []
    plans = [(64 * KiB, 160 if quick else 640), (1 * MiB, 16 if quick else 64),
             (16 * MiB, 2 if quick else 6)]
    rounds = 4
    for sync in (True, False):
        svc = await CacheService.open_single(root / f"cache-{sync}", settings(),
                                             fsync_commits=sync)
        plain_dir = root / f"plain-{sync}"
        plain_dir.mkdir()
        try:
            for size, count in plans:
                data = os.urandom(size)
                ours_s = plain_s = 0.0
                for rnd in range(rounds):
                    prefix = f"s{size}/r{rnd}"
                    if rnd % 2 == 0:
                        ours_s += await ours_round(svc, prefix, data, count)
                        plain_s += plain_round(plain_dir / prefix.replace("/", "-"), data,
                                               count, sync)
                    else:
                        plain_s += plain_round(plain_dir / prefix.replace("/", "-"), data,
                                               count, sync)
                        ours_s += await ours_round(svc, prefix, data, count)
                total = rounds * size * count / 1e6
                label = "64 KiB" if size < MiB else f"{size // MiB} MiB"
                rows.append((f"{label} {'fsync' if sync else 'no fsync'}", total / ours_s,
                             total / plain_s))
        finally:
            await svc.stop()
    return rows


# --- 2. reservations -----------------------------------------------------------------------------


async def bench_reserve(root: Path, quick: bool) -> tuple[float, float]:
    n0, n1 = (5_000, 1_000) if quick else (50_000, 5_000)
    smps = await start_local_shards(2)
    caches = [await start_cache(smp, settings(), root / "reserve", fsync_commits=False)
              for smp in smps]
    cache = caches[0]
    try:
        svc = cache.local()
        t0 = time.perf_counter()
        for _ in range(n0):
            g = await svc.reserve_space(4096, 1, NO_DEADLINE)
            g.close()
        shard0 = n0 / (time.perf_counter() - t0)

        async def loop(s: CacheService) -> float:
            t = time.perf_counter()
            for _ in range(n1):
                g = await s.reserve_space(4096, 1, NO_DEADLINE)
                g.close()
            return time.perf_counter() - t

        shard1 = n1 / await loop(caches[1].local())
        st = await svc.stats()
        assert st.bytes_reserved == 0, st
    finally:
        for c in reversed(caches):
            await stop_cache(c)
        for smp in smps:
            await smp.stop()
    return shard0, shard1


# --- 3 and 4. startup and trim -------------------------------------------------------------------


def populate(root: Path, n: int) -> None:
    """``n`` 100-byte entries in 100 directories, written with plain syscalls."""
    payload = b"p" * 100
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    made: set[str] = set()
    for i in range(n):
        rel = key_relpath(f"d{i % 100}/obj{i}")
        parent = rel.rsplit("/", 1)[0]
        if parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        fd = os.open(root / rel, flags, 0o644)
        os.write(fd, payload)
        os.close(fd)


class StallMeter:
    """The longest gap between 1 ms ticks on the loop (an event-loop stall)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now

    def __enter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def bench_startup_and_trim(root: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}

    def note(what: str) -> None:
        print(f"#   {n:,} objects: {what}", flush=True)

    d = root / f"startup-{n}"
    d.mkdir()
    t0 = time.perf_counter()
    await asyncio.to_thread(populate, d, n)
    out["populate_s"] = time.perf_counter() - t0
    note(f"populated in {out['populate_s']:.1f}s")
    # Cold: no tracker file.
    t0 = time.perf_counter()
    svc = await CacheService.open_single(d, settings(max_objects=n))
    out["cold_s"] = time.perf_counter() - t0
    note(f"cold start {out['cold_s']:.2f}s")
    st = await svc.stats()
    assert st.objects == n, st
    await svc.stop()
    assert (d / TRACKER_NAME).exists()
    # Warm: tracker saved at stop.
    t0 = time.perf_counter()
    svc = await CacheService.open_single(d, settings(max_objects=n))
    out["warm_s"] = time.perf_counter() - t0
    note(f"warm start {out['warm_s']:.2f}s")
    # Manual trim: walk + LRU down to 0.8 n objects.
    with StallMeter() as meter:
        t0 = time.perf_counter()
        result = await svc.trim()
        out["trim_manual_s"] = time.perf_counter() - t0
    out["trim_manual_stall_ms"] = meter.worst * 1000
    out["trim_manual_objects"] = result.objects_freed
    note(f"manual trim {out['trim_manual_s']:.2f}s")
    # LRU-only trim (walks throttled: one just ran): 0.8 n -> 0.64 n objects.
    coord = svc.coordinator
    coord.max_objects = int(n * 0.8)
    with StallMeter() as meter:
        t0 = time.perf_counter()
        async with await coord._trim_sem.get_units(1):
            result = await coord._trim_once(manual=False, fraction=0.8)
        out["trim_lru_s"] = time.perf_counter() - t0
    out["trim_lru_stall_ms"] = meter.worst * 1000
    out["trim_lru_objects"] = result.objects_freed
    await svc.stop()
    await asyncio.to_thread(shutil.rmtree, d, True)  # ignore_errors: readdir races on big dirs
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where to create the temporary files (use the data disk)")
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--big", action="store_true", help="also startup/trim with 1,000,000 objects")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    ap.add_argument("--only", default="staging,reserve,startup",
                    help="comma-separated parts to run: staging, reserve, startup")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    root = Path(tempfile.mkdtemp(prefix=".bench-cache-", dir=args.dir))
    try:
        print(f"# bench/cache.py  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
              f"dir {root})")
        rows = await bench_staging(root, args.quick) if "staging" in parts else []
        print("\n## staging write + commit (64 KiB appends) vs open/write/[fsync]/rename")
        print(f"{'object size':<22}{'ours MB/s':>12}{'plain MB/s':>12}{'ratio':>8}")
        for label, ours, plain in rows:
            print(f"{label:<22}{ours:>12.1f}{plain:>12.1f}{ours / plain:>8.2f}")
        if "reserve" in parts:
            s0, s1 = await bench_reserve(root, args.quick)
            print("\n## reserve_space + release round trips")
            print(f"from shard 0: {s0:,.0f}/s   from shard 1 (hop to shard 0): {s1:,.0f}/s")
        sizes = ([args.objects] if "startup" in parts else []) + (
            [1_000_000] if args.big else [])
        print("\n## startup (recovery) and trim")
        print(f"{'objects':>10}{'populate s':>12}{'cold start s':>14}{'warm start s':>14}"
              f"{'manual trim s':>15}{'(stall ms)':>11}{'LRU trim s':>12}{'(stall ms)':>11}")
        for n in sizes:
            r = await bench_startup_and_trim(root, n)
            print(f"{n:>10,}{r['populate_s']:>12.1f}{r['cold_s']:>14.2f}{r['warm_s']:>14.2f}"
                  f"{r['trim_manual_s']:>15.2f}{r['trim_manual_stall_ms']:>11.1f}"
                  f"{r['trim_lru_s']:>12.2f}{r['trim_lru_stall_ms']:>11.1f}")
            print(f"{'':>10}  (manual trim freed {r['trim_manual_objects']:,.0f} objects, "
                  f"LRU trim {r['trim_lru_objects']:,.0f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
