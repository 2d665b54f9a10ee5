"""Benchmark: the cachedaemon LSM engine against LevelDB (plyvel), RocksDB (rocksdict) and
SlateDB (its Python binding over a local file store), where installed.

    .venv/bin/python bench/lsm.py            # 1,000,000 keys, 100,000 gets
    .venv/bin/python bench/lsm.py --n 100000 --gets 20000

Rows: puts one at a time; puts in batches of 1,000; random gets of keys still in the memtable
("hot"); random gets after a flush (from SSTs); random seeks after the flush, each followed by
one step forward, on one iterator (what a range read starts with); a full forward scan. Keys are 16 bytes,
values 100 bytes, written in random order. Timings cover the operations only (not opening, nor
the flush + full compaction before the SST gets: ``compact_range`` for cachedaemon and LevelDB,
``flush`` for RocksDB and SlateDB). The peers are optional (``pip install -e '.[bench]'``); a missing one is
skipped with the reason. SlateDB's Python binding is slow per call, so its rows are measured
on at most ``--slatedb-max`` operations (ops/s is a rate, so the rows stay comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cachedaemon.lsm import Database, Options, WriteBatch
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import memory_persistence

ROWS = ["put", "put batch 1000", "get hot (memtable)", "get (SSTs)", "seek + next (SSTs)",
        "scan"]


@dataclasses.dataclass
class Workload:
    keys: list[bytes]
    values: list[bytes]
    hot_keys: list[bytes]
    get_order: list[int]
    hot_order: list[int]


def make_workload(n: int, gets: int, seed: int = 42) -> Workload:
    rnd = random.Random(seed)
    ids = list(range(n))
    rnd.shuffle(ids)
    keys = [b"%016d" % (i * 7919 % (10**16)) for i in ids]
    blob = rnd.randbytes(1 << 16)
    values = [blob[(i * 131) % 65000 : (i * 131) % 65000 + 100] for i in range(n)]
    hot = keys[: min(n, 100_000)]
    return Workload(
        keys,
        values,
        hot,
        [rnd.randrange(n) for _ in range(gets)],
        [rnd.randrange(len(hot)) for _ in range(gets)],
    )


class Engine:
    name = "?"
    #: Cap on operations per row (None = all).
    cap: int | None = None

    async def open(self, directory: Path) -> None: ...
    async def put(self, k: bytes, v: bytes) -> None: ...
    async def puts(self, keys: list[bytes], values: list[bytes]) -> None:
        for k, v in zip(keys, values, strict=True):
            await self.put(k, v)

    async def batches(self, keys: list[bytes], values: list[bytes], size: int) -> None: ...
    async def gets(self, keys: list[bytes], order: list[int]) -> int: ...
    async def seeks(self, keys: list[bytes], order: list[int]) -> int:
        """Seek to each key (one iterator), read it, step once; returns the keys found."""
        raise NotImplementedError

    async def scan(self) -> int: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class Ours(Engine):
    def __init__(self, backend: str, options: Options) -> None:
        self.name = f"cachedaemon ({backend})"
        self.backend = backend
        self.options = options

    async def open(self, directory: Path) -> None:
        if self.backend == "memory":
            p = memory_persistence()
        else:
            p = await open_disk_persistence(directory)
        self.p = p
        self.db = await Database.open(self.options, p)

    async def puts(self, keys: list[bytes], values: list[bytes]) -> None:
        db = self.db
        for k, v in zip(keys, values, strict=True):
            await db.apply(WriteBatch().put(k, v))

    async def batches(self, keys: list[bytes], values: list[bytes], size: int) -> None:
        for i in range(0, len(keys), size):
            b = WriteBatch()
            for k, v in zip(keys[i : i + size], values[i : i + size], strict=True):
                b.put(k, v)
            await self.db.apply(b)

    async def gets(self, keys: list[bytes], order: list[int]) -> int:
        get = self.db.get
        found = 0
        for i in order:
            if await get(keys[i]) is not None:
                found += 1
        return found

    async def seeks(self, keys: list[bytes], order: list[int]) -> int:
        found = 0
        async with self.db.iterator() as it:
            for i in order:
                await it.seek(keys[i])
                if it.valid() and it.key() == keys[i]:
                    found += 1
                    it.value()
                    await it.next()
        return found

    async def scan(self) -> int:
        n = 0
        async with self.db.iterator() as it:
            await it.seek_to_first()
            while it.valid():
                it.key()
                it.value()
                n += 1
                await it.next()
        return n

    async def flush(self) -> None:
        # Like plyvel's CompactRange below: persist and compact, then let background work
        # settle (it shares the one thread with the gets that follow).
        await self.db.compact_range()
        await self.db.wait_for_background_work()

    async def close(self) -> None:
        await self.db.close()
        await self.p.data.close()
        await self.p.metadata.close()


class NativeEngine(Engine):
    """A peer whose binding has blocking ``put(k, v)`` and ``get(k)`` on ``self.db``."""

    db: Any

    async def puts(self, keys: list[bytes], values: list[bytes]) -> None:
        put = self.db.put
        for k, v in zip(keys, values, strict=True):
            put(k, v)

    async def gets(self, keys: list[bytes], order: list[int]) -> int:
        get = self.db.get
        return sum(1 for i in order if get(keys[i]) is not None)

    def raw_iterator(self) -> Any:
        """A positioned iterator with ``seek``, ``valid``, ``key``, ``value``, ``next``."""
        raise NotImplementedError

    async def seeks(self, keys: list[bytes], order: list[int]) -> int:
        it = self.raw_iterator()
        found = 0
        for i in order:
            it.seek(keys[i])
            if it.valid() and it.key() == keys[i]:
                found += 1
                it.value()
                it.next()
        return found


class Plyvel(NativeEngine):
    name = "plyvel (LevelDB)"

    async def open(self, directory: Path) -> None:
        import plyvel

        self.db = plyvel.DB(str(directory), create_if_missing=True)

    async def batches(self, keys: list[bytes], values: list[bytes], size: int) -> None:
        for i in range(0, len(keys), size):
            with self.db.write_batch() as b:
                for k, v in zip(keys[i : i + size], values[i : i + size], strict=True):
                    b.put(k, v)

    def raw_iterator(self) -> Any:
        return self.db.raw_iterator()

    async def scan(self) -> int:
        return sum(1 for _ in self.db.iterator())

    async def flush(self) -> None:
        # plyvel has no memtable-only flush; CompactRange writes the memtable out (and
        # compacts), so its SST gets read tables as ours do.
        self.db.compact_range()

    async def close(self) -> None:
        self.db.close()


class RocksDict(NativeEngine):
    name = "rocksdict (RocksDB)"

    async def open(self, directory: Path) -> None:
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        self.mod = rocksdict
        self.db = rocksdict.Rdict(str(directory), options=opts)

    async def batches(self, keys: list[bytes], values: list[bytes], size: int) -> None:
        for i in range(0, len(keys), size):
            b = self.mod.WriteBatch(raw_mode=True)
            for k, v in zip(keys[i : i + size], values[i : i + size], strict=True):
                b.put(k, v)
            self.db.write(b)

    def raw_iterator(self) -> Any:
        return self.db.iter()

    async def scan(self) -> int:
        return sum(1 for _ in self.db.items())

    async def flush(self) -> None:
        self.db.flush()

    async def close(self) -> None:
        self.db.close()


class SlateDB(Engine):
    name = "slatedb (file store)"

    def __init__(self, cap: int) -> None:
        self.cap = cap

    async def open(self, directory: Path) -> None:
        from slatedb.uniffi import DbBuilder, KeyRange, ObjectStore, WriteBatch

        self.mod_batch = WriteBatch
        self.key_range = KeyRange
        store = ObjectStore.resolve("file:///")
        self.db = await DbBuilder(str(directory).lstrip("/"), store).build()

    async def puts(self, keys: list[bytes], values: list[bytes]) -> None:
        put = self.db.put
        for k, v in zip(keys, values, strict=True):
            await put(k, v)

    async def batches(self, keys: list[bytes], values: list[bytes], size: int) -> None:
        for i in range(0, len(keys), size):
            b = self.mod_batch()
            for k, v in zip(keys[i : i + size], values[i : i + size], strict=True):
                b.put(k, v)
            await self.db.write(b)

    async def gets(self, keys: list[bytes], order: list[int]) -> int:
        get = self.db.get
        found = 0
        for i in order:
            if await get(keys[i]) is not None:
                found += 1
        return found

    async def seeks(self, keys: list[bytes], order: list[int]) -> int:
        found = 0
        for i in order:
            it = await self.db.scan(self.key_range(start=keys[i], start_inclusive=True,
                                                   end=None, end_inclusive=False))
            if await it.next_batch(2):  # the key itself first (it exists), then its successor
                found += 1
        return found

    async def scan(self) -> int:
        it = await self.db.scan(
            self.key_range(start=None, start_inclusive=True, end=None, end_inclusive=False)
        )
        n = 0
        while True:
            batch = await it.next_batch(1000)
            if not batch:
                return n
            n += len(batch)

    async def flush(self) -> None:
        await self.db.flush()

    async def close(self) -> None:
        await self.db.shutdown()


Rate = tuple[float, float]  # (wall-clock ops/s, process-CPU ops/s)


async def timed(n: int, fn: Callable[[], Awaitable[Any]]) -> tuple[Rate, Any]:
    t, c = time.perf_counter(), time.process_time()
    result = await fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return (n / wall, n / max(cpu, 1e-9)), result


async def run_engine(engine: Engine, w: Workload, root: Path) -> dict[str, Rate]:
    n = len(w.keys) if engine.cap is None else min(engine.cap, len(w.keys))
    g = len(w.get_order) if engine.cap is None else min(engine.cap, len(w.get_order))
    keys, values = w.keys[:n], w.values[:n]
    out: dict[str, Rate] = {}
    slug = "".join(c if c.isalnum() else "-" for c in engine.name)

    d = root / f"{slug}-single"
    await engine.open(d)
    out["put"], _ = await timed(n, lambda: engine.puts(keys, values))
    await engine.close()
    shutil.rmtree(d, ignore_errors=True)

    d = root / f"{slug}-hot"
    await engine.open(d)
    hot = w.hot_keys[: min(len(w.hot_keys), n)]
    await engine.batches(hot, values[: len(hot)], 1000)
    order = [i % len(hot) for i in w.hot_order[:g]]
    out["get hot (memtable)"], found = await timed(g, lambda: engine.gets(hot, order))
    assert found == len(order), (engine.name, found)
    await engine.close()
    shutil.rmtree(d, ignore_errors=True)

    d = root / f"{slug}-batch"
    await engine.open(d)
    out["put batch 1000"], _ = await timed(n, lambda: engine.batches(keys, values, 1000))
    await engine.flush()
    order = [i % n for i in w.get_order[:g]]
    out["get (SSTs)"], found = await timed(g, lambda: engine.gets(keys, order))
    assert found == len(order), (engine.name, found)
    out["seek + next (SSTs)"], found = await timed(g, lambda: engine.seeks(keys, order))
    assert found == len(order), (engine.name, found)
    out["scan"], count = await timed(n, engine.scan)
    assert count == n, (engine.name, count, n)
    await engine.close()
    shutil.rmtree(d, ignore_errors=True)
    return out


def peers(slatedb_max: int) -> list[tuple[str, Callable[[], Engine] | None, str]]:
    found: list[tuple[str, Callable[[], Engine] | None, str]] = []
    for mod, factory, label in (
        ("plyvel", Plyvel, "plyvel (LevelDB)"),
        ("rocksdict", RocksDict, "rocksdict (RocksDB)"),
        ("slatedb.uniffi", lambda: SlateDB(slatedb_max), "slatedb (file store)"),
    ):
        try:
            __import__(mod)
            found.append((label, factory, ""))
        except Exception as e:  # any import failure means "skip it"
            found.append((label, None, f"{type(e).__name__}: {e}"))
    return found


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="keys written per put row")
    ap.add_argument("--gets", type=int, default=100_000, help="random gets per get row")
    ap.add_argument("--slatedb-max", type=int, default=50_000)
    ap.add_argument("--block-cache-mib", type=int, default=256)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated engine-name substrings")
    args = ap.parse_args()

    w = make_workload(args.n, args.gets)
    options = Options(block_cache_bytes=args.block_cache_mib << 20)
    engines: list[Engine] = [Ours("memory", options), Ours("disk", options)]
    if not args.no_peers:
        for label, factory, why in peers(args.slatedb_max):
            if factory is None:
                print(f"skipping {label}: {why}")
            else:
                engines.append(factory())
    if args.only:
        wanted = args.only.split(",")
        engines = [e for e in engines if any(s in e.name for s in wanted)]

    print(
        f"n={args.n:,} keys (16 B) x 100 B values, {args.gets:,} gets; "
        f"block cache {args.block_cache_mib} MiB; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus"
    )
    results: dict[str, dict[str, Rate]] = {}
    root = Path(tempfile.mkdtemp(prefix="lsm-bench-"))
    try:
        for e in engines:
            t = time.perf_counter()
            results[e.name] = await run_engine(e, w, root)
            cap = f" (rows capped at {e.cap:,} ops)" if e.cap and e.cap < args.n else ""
            print(f"  ran {e.name} in {time.perf_counter() - t:.1f}s{cap}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    for which, title in (
        (0, "wall-clock ops/s"),
        (1, "process-CPU ops/s (all threads of the process; steadier on a busy machine)"),
    ):
        print_table(title, {n: {r: v[which] for r, v in rows.items()} for n, rows in results.items()})


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    width = max(len(r) for r in ROWS) + 2
    print()
    print(title)
    print("".ljust(width) + "".join(n[:24].rjust(26) for n in names))
    for row in ROWS:
        print(row.ljust(width) + "".join(f"{results[n][row]:>26,.0f}" for n in names))
    ours = [n for n in names if n.startswith("cachedaemon")]
    others = [n for n in names if not n.startswith("cachedaemon")]
    if ours and others:
        print("ratio ours/peer".ljust(width) + "".join(
            f"{o[12:][:11]}/{p.split()[0][:10]}".rjust(26) for o in ours for p in others
        ))
        for row in ROWS:
            cells = "".join(
                f"{results[o][row] / results[p][row]:>26.2f}" for o in ours for p in others
            )
            print(row.ljust(width) + cells)


if __name__ == "__main__":
    asyncio.run(main())
