# ruff: noqa: E402
"""Benchmark: the cache service: staging writes, reservations, restart to ready, trim.

    .venv/bin/python bench/cache.py [--dir DIR] [--sizes 100000,1000000,5000000]
                                    [--only staging,reserve,restart,trim,classes] [--quick]

1. **Staging write + commit** throughput (MB/s, 10^6 bytes/s) for 64 KiB, 1 MiB and 16 MiB
   objects, appended in 64 KiB chunks (an HTTP body's usual chunk), against a plain blocking
   ``open/write/fsync/close/rename`` loop of the same data in the same run. Both with fsync
   (the cache's default: ``commit`` fdatasyncs before linking, so a power loss never exposes a
   torn entry) and without (``fsync_commits=False``). Rounds alternate between the two so
   disk drift hits both alike. Goal: ours >= 0.8x plain.
2. ``reserve_space`` + release round trips per second, from shard 0 and from shard 1 of an
   pair of shards linked by messages as the daemon's processes are (every reservation from
   shard 1 is a call to shard 0 and a release posted back).
3. **Restart to ready** with N entries (``--sizes``), before and after in the same run on the
   same files: *before* is the code of ``--before-rev`` (extracted with ``git archive``; its
   start loads the access-time tracker and walks the directory), *after* this checkout's (its
   start reads the index). Each start runs in a fresh process and is timed from the
   ``open_single`` call to its return (ready), cold (page, dentry and inode caches dropped
   first: root only, and machine-wide) and warm (right after another start). After a cold start
   of *after*, the background walk that checks the index runs while a probe does one hit per
   millisecond: its latency and the loop's lateness, during the walk and after it. Also the
   index's bytes per entry against the tracker's (tracemalloc).
4. Trim time with N objects (``--objects``): a manual trim (walk + LRU delete of 20 %) and an
   LRU-only trim (in memory, deletes in thread batches), with the worst event-loop stall.
5. **Reservation classes** (issue 18; only with ``--only classes``): a real two-shard daemon
   on a ``file://`` bucket with a full cache (32 MiB; 1,200 objects of 128 KiB in the bucket),
   readers GETting random objects (nearly every GET a miss that fills the cache, evicting), with
   and without a compaction-heavy kv load (writers of 64-KiB batches into two domains with a
   1 MiB memtable, so SSTs are flushed every few batches, and a full compaction of each domain
   every 2 s, from a process of its own: every SST written and read goes through the cache
   with class ``metastore``).
   Prints the p50/p99 of the read fills (client-observed latency of the GETs that missed) of
   both runs, alternating, and their ratio (issue 18 asks p99 within 1.2x).

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
import gc
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from cachedaemon.cache import CacheService, start_cache, stop_cache
from cachedaemon.cache.keys import key_relpath
from cachedaemon.clock import NO_DEADLINE
from cachedaemon.config import CacheSettings, load_settings
from cachedaemon.core.smp import start_local_shards

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
REPO = Path(__file__).resolve().parents[1]
#: The last revision whose cache walked the directory at every start (before issue 16).
BEFORE_REV = "71845ed"


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


# --- 3. restart to ready: the walk of before against the index, before/after in one run --------

#: Runs in a fresh interpreter (``python -c``) with PYTHONPATH set to the tree under test (this
#: checkout, or the code from before the index, extracted with ``git archive``), so both are
#: measured on the same files in the same run. Prints one JSON line.
DRIVER = r"""
import asyncio, dataclasses, json, random, resource, sys, time
root, probe = sys.argv[1], sys.argv[2] == "1"
from cachedaemon.cache import CacheService
from cachedaemon.cache.keys import relpath_key
from cachedaemon.config import load_settings
base = load_settings(env={}).cache
names = {f.name for f in dataclasses.fields(base)}
kw = {"max_bytes": 1 << 40, "max_objects": 10_000_000}
if "min_free_bytes" in names:
    kw["min_free_bytes"] = 0
settings = dataclasses.replace(base, **kw)

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0.0

async def hits(svc, keys, stop, limit):
    # One hit (get) per millisecond: its latency, and how late the loop woke for it.
    lat, lag = [], []
    loop = asyncio.get_running_loop()
    while not stop() and len(lat) < limit:
        t = loop.time()
        await asyncio.sleep(0.001)
        t1 = time.perf_counter()
        lag.append(max(0.0, loop.time() - t - 0.001))
        assert await svc.get(random.choice(keys)) is not None
        lat.append(time.perf_counter() - t1)
    return {"n": len(lat), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "max_ms": pct(lat, 1.0), "lag_p99_ms": pct(lag, 0.99), "lag_max_ms": pct(lag, 1.0)}

async def main():
    t0 = time.perf_counter()
    svc = await CacheService.open_single(root, settings, fsync_commits=False)
    out = {"ready_s": time.perf_counter() - t0}
    out["objects"] = (await svc.stats()).objects
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    coord = svc.coordinator
    if probe and getattr(coord, "reconciling", False):
        keys = [relpath_key(e[0]) for e, _ in zip(coord.index.lru(), range(5000))]
        t1 = time.perf_counter()
        out["during"] = await hits(svc, keys, lambda: not coord.reconciling, 10**9)
        await coord.wait_reconciled()
        out["walk_s"] = time.perf_counter() - t1
        out["after"] = await hits(svc, keys, lambda: False, out["during"]["n"])
    await svc.stop()
    print(json.dumps(out))

asyncio.run(main())
"""


def populate(root: Path, n: int, size: int) -> None:
    """``n`` entries of ``size`` bytes in 100 directories, written with plain syscalls."""
    payload = b"p" * size
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    made: set[str] = set()
    for i in range(n):
        rel = key_relpath(f"d{i % 100}/obj{i}")
        parent = rel.rsplit("/", 1)[0]
        if parent not in made:
            (root / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        fd = os.open(root / rel, flags, 0o644)
        if payload:
            os.write(fd, payload)
        os.close(fd)


def drop_page_cache() -> bool:
    """Write back and drop the page, dentry and inode caches (root only; machine-wide)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def run_driver(tree: Path, root: Path, probe: bool = False) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("CACHEDAEMON_FAILPOINTS", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root), "1" if probe else "0"],
                          env=env, cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed in {tree}: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def before_tree(work: Path, rev: str) -> Path:
    """The code of ``rev`` (before the index), extracted next to the data."""
    tree = work / f"before-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "cachedaemon"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def bench_restart(work: Path, n: int, before: Path, entry_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}

    def note(what: str) -> None:
        print(f"#   {n:,} entries: {what}", flush=True)

    d = work / f"restart-{n}"
    d.mkdir()
    t0 = time.perf_counter()
    populate(d, n, entry_bytes)
    out["populate_s"] = time.perf_counter() - t0
    note(f"populated in {out['populate_s']:.0f}s")
    cold = drop_page_cache()
    out["cold_measured"] = cold
    # Before: the walk at every start (with the tracker saved by the previous stop).
    run_driver(before, d)  # first start: writes its tracker at stop
    if cold:
        drop_page_cache()
    out["before_cold"] = run_driver(before, d)
    note(f"before, cold: ready in {out['before_cold']['ready_s']:.2f}s")
    out["before_warm"] = run_driver(before, d)
    note(f"before, warm: ready in {out['before_warm']['ready_s']:.2f}s")
    for stale in d.glob("%tracker*"):
        stale.unlink()
    # After: the first start walks (no index yet) and writes the index; then restarts read it.
    first = run_driver(REPO, d)
    out["after_first_s"] = first["ready_s"]
    note(f"after, first start (walk, no index yet): {first['ready_s']:.2f}s")
    if cold:
        drop_page_cache()
    out["after_cold"] = run_driver(REPO, d, probe=True)
    note(f"after, cold: ready in {out['after_cold']['ready_s']:.2f}s, background walk "
         f"{out['after_cold'].get('walk_s', 0):.1f}s")
    out["after_warm"] = run_driver(REPO, d)
    note(f"after, warm: ready in {out['after_warm']['ready_s']:.2f}s")
    t0 = time.perf_counter()
    shutil.rmtree(d, ignore_errors=True)
    out["delete_s"] = time.perf_counter() - t0
    return out


def index_memory(n: int) -> tuple[float, float]:
    """Bytes per entry of the index (path -> size) and of the tracker it replaced (path ->
    (atime, size)), for ``n`` entries with the benchmark's paths, by tracemalloc."""
    import tracemalloc

    from cachedaemon.cache.index import CacheIndex

    def measure(build: Any) -> float:
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del kept
        return used / n

    def paths() -> list[str]:
        return [key_relpath(f"d{i % 100}/obj{i}") for i in range(n)]

    tracker = measure(lambda: {p: (1.7e9 + i, 100) for i, p in enumerate(paths())})
    index = measure(lambda: CacheIndex({p: 100 for p in paths()}))
    return index, tracker


# --- 4. trim -------------------------------------------------------------------------------------


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


async def bench_trim(work: Path, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    d = work / f"trim-{n}"
    d.mkdir()
    await asyncio.to_thread(populate, d, n, 100)
    svc = await CacheService.open_single(d, settings(max_objects=n))
    # Manual trim: walk + LRU down to 0.8 n objects.
    with StallMeter() as meter:
        t0 = time.perf_counter()
        result = await svc.trim()
        out["trim_manual_s"] = time.perf_counter() - t0
    out["trim_manual_stall_ms"] = meter.worst * 1000
    out["trim_manual_objects"] = result.objects_freed
    # LRU-only trim (walks throttled: one just ran): 0.8 n -> 0.64 n objects.
    coord = svc.coordinator
    coord.max_objects = int(n * 0.8)
    coord.limits = dataclasses.replace(coord.limits, max_objects=coord.max_objects)
    with StallMeter() as meter:
        t0 = time.perf_counter()
        async with await coord._trim_sem.get_units(1):
            result = await coord._trim_once(manual=False, fraction=0.8, all_dims=True)
        out["trim_lru_s"] = time.perf_counter() - t0
    out["trim_lru_stall_ms"] = meter.worst * 1000
    out["trim_lru_objects"] = result.objects_freed
    await svc.stop()
    await asyncio.to_thread(shutil.rmtree, d, True)  # ignore_errors: readdir races on big dirs
    return out


async def _reads(url: str, n_objects: int, stop: asyncio.Event, lat: list[float],
                 hit_lat: list[float], seed: int) -> None:
    import random

    import aiohttp

    rng = random.Random(seed)
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            key = f"obj/{rng.randrange(n_objects)}"
            t0 = time.perf_counter()
            async with http.get(f"{url}/v1/objects/{key}") as r:
                await r.read()
                assert r.status == 200, r.status
                miss = r.headers.get("X-Cache") == "miss"
            (lat if miss else hit_lat).append(time.perf_counter() - t0)


KV_LOAD = r"""
import asyncio, json, os, sys, time
from cachedaemon.client import AsyncClient
os.nice(int(sys.argv[3]))

async def writer(url, w, until, counts):
    value = os.urandom(1024)
    async with AsyncClient(url) as client:
        domain = f"bench{w}"
        i = 0
        last_compact = time.monotonic()
        while time.monotonic() < until:
            await client.kv_batch(domain, [("put", f"k{(i * 64 + j) % 20000:08d}", value)
                                           for j in range(64)])
            counts["batches"] += 1
            i += 1
            if time.monotonic() - last_compact > 2.0:
                await client.compact(domain)
                counts["compactions"] += 1
                last_compact = time.monotonic()

async def main(url, seconds):
    counts = {"batches": 0, "compactions": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(writer(url, w, until, counts) for w in range(2)))
    print(json.dumps(counts))

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


async def _kv_load(url: str, seconds: float, nice: int) -> dict[str, int]:
    """The kv load in a process of its own (its CPU is not the readers' client loop's)."""
    root = str(Path(__file__).resolve().parents[1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KV_LOAD, url, str(seconds), str(nice), stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": root})
    out, _ = await proc.communicate()
    assert proc.returncode == 0, proc.returncode
    counts: dict[str, int] = json.loads(out)
    return counts


async def _watch_reservations(url: str, stop: asyncio.Event, seen: dict[str, int]) -> None:
    """Every 100 ms, GET /v1/cache/reservations: how often requests of each class were queued
    (were fills waiting for space, or for a loop kept busy?)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            async with http.get(f"{url}/v1/cache/reservations") as r:
                body = await r.json()
            seen["polls"] += 1
            for w in body["waiters"]:
                seen[f"queued_{w['class']}"] = seen.get(f"queued_{w['class']}", 0) + 1
            await asyncio.sleep(0.1)


def bench_classes(work: Path, quick: bool, kv_nice: int = 0, rounds: int = 3,
                  daemon_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Part 5 (see the module docstring)."""
    from tests.support.daemon import start_daemon

    bucket = work / "classes-bucket"
    n_objects = 1200
    (bucket / "obj").mkdir(parents=True, exist_ok=True)
    for i in range(n_objects):
        (bucket / "obj" / str(i)).write_bytes(os.urandom(128 * KiB))
    duration = 8.0 if quick else 15.0
    rounds = 2 if quick else rounds
    out: dict[str, list[dict[str, float]]] = {"alone": [], "kv": []}
    with start_daemon(work / "classes-daemon", "--remote", f"file://{bucket}",
                      "--cache-max-bytes", "32MiB", "--metastore-memtable-bytes", "1MiB",
                      "--metastore-flush-interval", "1s", *daemon_args, shards=2, timeout=60) as d:

        async def run(kv: bool) -> dict[str, float]:
            stop = asyncio.Event()
            lat: list[float] = []
            hit_lat: list[float] = []
            counts = {"batches": 0, "compactions": 0}
            tasks = [asyncio.create_task(_reads(d.url, n_objects, stop, lat, hit_lat, seed))
                     for seed in range(4)]
            seen = {"polls": 0}
            tasks.append(asyncio.create_task(_watch_reservations(d.url, stop, seen)))
            kv_task = asyncio.create_task(_kv_load(d.url, duration, kv_nice)) if kv else None
            await asyncio.sleep(duration)
            stop.set()
            await asyncio.gather(*tasks)
            if kv_task is not None:
                counts = await kv_task
            lat.sort()
            hit_lat.sort()

            def q(xs: list[float], f: float) -> float:
                return xs[min(len(xs) - 1, int(f * len(xs)))] * 1e3 if xs else 0.0

            queued = " ".join(f"{k[7:]}:{v}" for k, v in seen.items() if k != "polls")
            return {"fills": len(lat), "p50_ms": q(lat, 0.5), "p99_ms": q(lat, 0.99),
                    "hits": len(hit_lat), "hit_p99_ms": q(hit_lat, 0.99), **counts,
                    "polls": seen["polls"], "queued": queued or "none"}  # type: ignore[dict-item]

        async def all_rounds() -> None:
            await run(False)  # fill the cache: the measured runs start full
            for rnd in range(rounds):
                for kv in ((False, True) if rnd % 2 == 0 else (True, False)):
                    r = await run(kv)
                    out["kv" if kv else "alone"].append(r)
                    print(f"  round {rnd} {'with kv load' if kv else 'reads alone '}: "
                          f"{r['fills']:.0f} fills, p50 {r['p50_ms']:.1f} ms, p99 "
                          f"{r['p99_ms']:.1f} ms (hits: {r['hits']:.0f}, p99 "
                          f"{r['hit_p99_ms']:.1f} ms), kv batches {r['batches']:.0f}, "
                          f"compactions {r['compactions']:.0f}; queued waiters seen in "
                          f"{r['polls']} polls of /v1/cache/reservations: {r['queued']}",
                          flush=True)

        asyncio.run(all_rounds())
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="where to create the temporary files (use the data disk)")
    ap.add_argument("--objects", type=int, default=100_000, help="entries for the trim part")
    ap.add_argument("--sizes", default="100000,1000000",
                    help="entry counts for the restart part (e.g. 100000,1000000,5000000)")
    ap.add_argument("--entry-bytes", type=int, default=0,
                    help="size of each entry of the restart part (0: empty files; a start "
                         "reads no file's data, and 5M entries of 100 bytes would take 20 GB)")
    ap.add_argument("--before-rev", default=BEFORE_REV,
                    help="the revision whose cache walks at every start (before the index)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    ap.add_argument("--kv-nice", type=int, default=0,
                    help="the classes part's kv load generator runs at this nice value (its "
                         "own CPU, encoding batches, then competes less with the daemon and the "
                         "readers on a small machine; in production it runs elsewhere)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the classes part's rounds (each one run alone and one with the kv "
                         "load, alternating)")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="a flag for the classes part's daemon (repeat; e.g. "
                         "--daemon-arg=--metastore-process --daemon-arg=shards)")
    ap.add_argument("--only", default="staging,reserve,restart,trim",
                    help="comma-separated parts to run: staging, reserve, restart, trim, "
                         "classes (not by default: a daemon run of its own)")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    root = Path(tempfile.mkdtemp(prefix=".bench-cache-", dir=args.dir))
    started = time.perf_counter()
    try:
        print(f"# bench/cache.py  (python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
              f"dir {root})")
        if "staging" in parts:
            rows = await bench_staging(root, args.quick)
            print("\n## staging write + commit (64 KiB appends) vs open/write/[fsync]/rename")
            print(f"{'object size':<22}{'ours MB/s':>12}{'plain MB/s':>12}{'ratio':>8}")
            for label, ours, plain in rows:
                print(f"{label:<22}{ours:>12.1f}{plain:>12.1f}{ours / plain:>8.2f}")
        if "reserve" in parts:
            s0, s1 = await bench_reserve(root, args.quick)
            print("\n## reserve_space + release round trips")
            print(f"from shard 0: {s0:,.0f}/s   from shard 1 (hop to shard 0): {s1:,.0f}/s")
        if "restart" in parts:
            sizes = [int(x) for x in args.sizes.split(",") if x]
            before = before_tree(root, args.before_rev)
            print(f"\n## restart to ready: before ({args.before_rev}: the walk) vs after (the "
                  f"index); {args.entry_bytes}-byte entries")
            results = []
            for n in sizes:
                results.append(bench_restart(root, n, before, args.entry_bytes))
            print(f"{'entries':>10}{'before cold':>13}{'before warm':>13}{'after cold':>12}"
                  f"{'after warm':>12}{'walk (bg) s':>13}{'RSS MB b/a':>13}")
            for r in results:
                bc, bw, ac, aw = (r["before_cold"], r["before_warm"], r["after_cold"],
                                  r["after_warm"])
                print(f"{r['n']:>10,}{bc['ready_s']:>13.2f}{bw['ready_s']:>13.2f}"
                      f"{ac['ready_s']:>12.2f}{aw['ready_s']:>12.2f}"
                      f"{ac.get('walk_s', 0.0):>13.1f}"
                      f"{bw['rss_mb']:>7.0f}/{aw['rss_mb']:<5.0f}")
            print("(seconds from the start call to ready, in a fresh process; cold: page, "
                  "dentry and inode caches dropped first" + (
                      ")" if all(r["cold_measured"] for r in results)
                      else "; NOT measured: cannot write /proc/sys/vm/drop_caches)"))
            print("\n## hits (one get per ms) during the background walk after a cold start, "
                  "and after it")
            print(f"{'entries':>10}{'':>8}{'hits':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
                  f"{'lag p99':>9}{'lag max':>9}")
            for r in results:
                for when in ("during", "after"):
                    h = r["after_cold"].get(when)
                    if h:
                        print(f"{r['n']:>10,}{when:>8}{h['n']:>8}{h['p50_ms']:>9.3f}"
                              f"{h['p99_ms']:>9.3f}{h['max_ms']:>9.2f}{h['lag_p99_ms']:>9.2f}"
                              f"{h['lag_max_ms']:>9.2f}")
            for r in results:
                print(f"# {r['n']:,} entries: populate {r['populate_s']:.0f}s, first start "
                      f"after (walk + index) {r['after_first_s']:.2f}s, delete "
                      f"{r['delete_s']:.0f}s")
            mem_n = min(max(sizes), 1_000_000)
            idx, trk = index_memory(mem_n)
            print(f"\nindex memory: {idx:.0f} bytes per entry (the tracker before it: "
                  f"{trk:.0f}), {mem_n:,} entries, tracemalloc")
        if "trim" in parts:
            r = await bench_trim(root, args.objects)
            print(f"\n## trim with {args.objects:,} entries")
            print(f"manual (walk + LRU): {r['trim_manual_s']:.2f}s, freed "
                  f"{r['trim_manual_objects']:,.0f}, worst loop stall "
                  f"{r['trim_manual_stall_ms']:.1f} ms; LRU only: {r['trim_lru_s']:.2f}s, "
                  f"freed {r['trim_lru_objects']:,.0f}, stall {r['trim_lru_stall_ms']:.1f} ms")
        if "classes" in parts:
            print("\n## read fills with a full cache, with and without a compaction-heavy kv "
                  "load (reservation classes)", flush=True)
            r = await asyncio.to_thread(bench_classes, root, args.quick, args.kv_nice,
                                        args.rounds, tuple(args.daemon_arg))
            import statistics

            alone = statistics.median(x["p99_ms"] for x in r["alone"])
            loaded = statistics.median(x["p99_ms"] for x in r["kv"])
            print(f"{'':<14}{'fills':>8}{'p50 ms':>9}{'p99 ms':>9}{'hit p99 ms':>12}   "
                  "(medians of the rounds)")
            for name, rows in (("reads alone", r["alone"]), ("with kv load", r["kv"])):
                print(f"{name:<14}{statistics.median(x['fills'] for x in rows):>8.0f}"
                      f"{statistics.median(x['p50_ms'] for x in rows):>9.1f}"
                      f"{statistics.median(x['p99_ms'] for x in rows):>9.1f}"
                      f"{statistics.median(x['hit_p99_ms'] for x in rows):>12.1f}")
            print(f"p99 with kv load / alone: {loaded / alone:.2f}x (issue 18: <= 1.2x); the kv "
                  f"load generator at nice {args.kv_nice}; daemon flags: "
                  f"{' '.join(args.daemon_arg) or 'none'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        print(f"\n# total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    asyncio.run(main())
