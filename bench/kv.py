"""Benchmark: metastore key-value domains against SlateDB, durable puts, gets and scans.

One command, every figure measured in the same run:

    .venv/bin/python bench/kv.py [--duration 3] [--quick]

For each log kind it measures, with 1 and 64 concurrent callers, 100-byte values:

* ``put``: durable puts (acknowledged only once in the domain's log; SlateDB: ``put`` then
  ``await_durable()``), ops/s and p50/p99 latency;
* ``get``: point reads of keys written before (random order), after a flush, so they are
  served from SSTs (and each engine's block cache), not from the memtable;
* ``scan``: 100-item scans from a random start key.

Paths measured:

* ``ours/inproc``: ``DomainService`` called in this process (cache service + cloud-cache
  persistence underneath, as in the daemon);
* ``ours/http``: the real daemon (``cachedaemon serve --shards 1``) through the HTTP API
  (``PUT /v1/kv``, ``GET /v1/kv``, ``GET .../scan``), load from ``wrk`` (C, one thread, a Lua
  script per operation) so that the load generator does not take the CPU the daemon needs;
* ``slatedb``: the ``slatedb`` Python binding (0.17, default settings: WAL flush every 100 ms).

``local`` compares our local log (segment files + fsync) on a ``file://`` bucket with SlateDB on
a local file object store; ``remote`` compares our bucket-backed log with SlateDB, both on the
same moto server (a Python process answering a few hundred small requests/s here: it is the
bottleneck of every ``remote`` row, for both sides).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ruff: noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp

from cachedaemon.cache.service import CacheService
from cachedaemon.metastore.domain import DomainConfig
from cachedaemon.metastore.service import DomainService
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.remote.s3 import S3ObjectStore
from tests.conftest import bare_s3_client, start_moto_server, stop_moto_server
from tests.support.daemon import DUMMY_AWS, start_daemon

VALUE = b"v" * 100
CONCURRENCY = (1, 64)
PRELOAD = 2000
SCAN_ITEMS = 100

Op = Callable[[int], Awaitable[None]]


@dataclass
class Result:
    system: str
    log: str
    op: str
    conc: int
    ops: int
    seconds: float
    lat: list[float]

    fixed: tuple[float, float] | None = None  # (p50, p99) when only percentiles are known

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if self.fixed is not None:
            return (self.fixed[0] if p <= 0.5 else self.fixed[1]) * 1000
        if not self.lat:
            return float("nan")
        s = sorted(self.lat)
        return s[min(len(s) - 1, int(p * len(s)))] * 1000


async def run_load(op: Op, conc: int, duration: float) -> tuple[int, float, list[float]]:
    """``conc`` callers calling ``op(i)`` in a loop for ``duration`` seconds."""
    lat: list[float] = []
    counter = 0
    stop = time.perf_counter() + duration

    async def caller() -> None:
        nonlocal counter
        while time.perf_counter() < stop:
            i = counter
            counter += 1
            t0 = time.perf_counter()
            await op(i)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(conc)))
    return len(lat), time.perf_counter() - t0, lat


def key(i: int) -> bytes:
    return b"key-%010d" % i


# --- systems under test ---------------------------------------------------------------------


class System:
    name = ""

    async def put(self, k: bytes, v: bytes) -> None: ...

    async def get(self, k: bytes) -> bytes | None: ...

    async def scan(self, start: bytes, n: int) -> int: ...

    async def flush(self) -> None:
        """Memtable to SSTs, so the reads that follow come from tables, not the memtable."""


class Inproc(System):
    name = "ours/inproc"

    def __init__(self, service: DomainService) -> None:
        self.s = service

    async def put(self, k: bytes, v: bytes) -> None:
        await self.s.put("bench", k, v)

    async def get(self, k: bytes) -> bytes | None:
        return await self.s.get("bench", k)

    async def scan(self, start: bytes, n: int) -> int:
        items, _ = await self.s.scan("bench", start, None, None, n, False)
        return len(items)

    async def flush(self) -> None:
        await self.s.flush("bench")


class Slate(System):
    name = "slatedb"

    def __init__(self, db: Any, key_range: Any) -> None:
        self.db = db
        self.KeyRange = key_range

    async def put(self, k: bytes, v: bytes) -> None:
        handle = await self.db.put(k, v)
        await handle.await_durable()

    async def get(self, k: bytes) -> bytes | None:
        result: bytes | None = await self.db.get(k)
        return result

    async def scan(self, start: bytes, n: int) -> int:
        it = await self.db.scan(self.KeyRange(start=start, start_inclusive=True, end=None,
                                              end_inclusive=False))
        got = await it.next_batch(n)
        return len(got)

    async def flush(self) -> None:
        await self.db.flush()


async def measure(system: System, log: str, duration: float, results: list[Result]) -> None:
    base = random.randrange(1 << 30)
    # Preload keys for gets and scans (concurrently, durable).
    sem = asyncio.Semaphore(64)

    async def load(i: int) -> None:
        async with sem:
            await system.put(key(i), VALUE)

    await asyncio.gather(*(load(i) for i in range(PRELOAD)))
    for conc in CONCURRENCY:
        async def put(i: int) -> None:
            await system.put(key(base + i), VALUE)

        n, secs, lat = await run_load(put, conc, duration)
        results.append(Result(system.name, log, "put", conc, n, secs, lat))
        print_row(results[-1])
    await system.flush()
    for conc in CONCURRENCY:
        async def get(i: int) -> None:
            if await system.get(key(random.randrange(PRELOAD))) is None:
                raise RuntimeError("preloaded key missing")

        n, secs, lat = await run_load(get, conc, duration)
        results.append(Result(system.name, log, "get", conc, n, secs, lat))
        print_row(results[-1])
    for conc in CONCURRENCY:
        async def scan(i: int) -> None:
            if await system.scan(key(random.randrange(PRELOAD - SCAN_ITEMS)), SCAN_ITEMS) \
                    != SCAN_ITEMS:
                raise RuntimeError("short scan")

        n, secs, lat = await run_load(scan, conc, duration)
        results.append(Result(system.name, log, "scan", conc, n, secs, lat))
        print_row(results[-1])


def print_row(r: Result) -> None:
    print(f"  {r.system:12} {r.log:6} {r.op:5} c={r.conc:<3} {r.rate:9.0f} ops/s   "
          f"p50 {r.pct(0.5):8.2f} ms   p99 {r.pct(0.99):8.2f} ms", flush=True)


# --- set-ups ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def inproc(store: ObjectStore, work: Path, wal: str) -> AsyncIterator[Inproc]:
    cache = await CacheService.open_single(work / "cache")
    config = DomainConfig(wal=wal, data_dir=work, node="bench")
    service = DomainService(0, 1, store, cache, config)
    await service.start()
    try:
        yield Inproc(service)
    finally:
        await service.stop()
        await cache.stop()


@contextlib.asynccontextmanager
async def slatedb(url: str, path: str = "bench", env: dict[str, str] | None = None
                  ) -> AsyncIterator[Slate]:
    import slatedb.uniffi as sdb

    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        store = sdb.ObjectStore.resolve(url)
        builder = sdb.DbBuilder(path, store)
        db = await builder.build()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield Slate(db, sdb.KeyRange)
    finally:
        with contextlib.suppress(Exception):
            await db.shutdown()


@contextlib.contextmanager
def moto() -> Iterator[str]:
    proc, endpoint = start_moto_server()
    try:
        yield endpoint
    finally:
        stop_moto_server(proc)


def new_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:16]}"
    client = bare_s3_client(endpoint)
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


_PUT_LUA = """
counter = 0
body = string.rep("v", 100)
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/bench/w-" .. counter, nil, body)
end
"""

_GET_LUA = """
math.randomseed(7)
request = function()
  return wrk.format("GET", string.format("/v1/kv/bench/key-%%010d", math.random(0, %d)))
end
"""

_SCAN_LUA = """
math.randomseed(7)
starts = {%s}
request = function()
  return wrk.format("GET", "/v1/domains/bench/scan?limit=%d&start=" .. starts[math.random(#starts)])
end
"""

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: str, conc: int, duration: float, log: str, op: str, work: Path
        ) -> Result:
    """Run wrk (C, one thread) against the daemon; the load generator costs little CPU."""
    lua = work / f"{op}.lua"
    lua.write_text(script)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(conc), "-d", f"{max(1, round(duration))}s", "--latency",
         "--timeout", "30s",
         "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors for {op}:\n{out}")
    reqs = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"\s(50|99)%\s+([\d.]+\w+)", out))

    def sec(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
        assert m is not None
        return float(m.group(1)) * _UNIT[m.group(2)] / 1000

    # wrk reports percentiles, not samples: keep the two it gives (p50, p99).
    r = Result("ours/http", log, op, conc, reqs, reqs / rps if rps else 0.0, [])
    r.fixed = (sec(lat["50"]), sec(lat["99"]))
    return r


async def http_system(work: Path, wal: str, remote: str, s3_endpoint: str | None,
                      duration: float, results: list[Result]) -> None:
    """The daemon through HTTP, load from wrk (C) so the client does not eat the CPU."""
    work.mkdir(parents=True, exist_ok=True)
    with start_daemon(work / "data", "--metastore-wal", wal, shards=1, remote=remote,
                      s3_endpoint=s3_endpoint) as d:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            sem = asyncio.Semaphore(64)

            async def load(i: int) -> None:
                async with sem, session.put(f"{d.url}/v1/kv/bench/{key(i).decode()}",
                                            data=VALUE) as r:
                    assert r.status == 204, r.status

            await asyncio.gather(*(load(i) for i in range(PRELOAD)))
        starts = ",".join(
            '"' + urllib.parse.quote(base64.b64encode(key(i)).decode(), safe="") + '"'
            for i in range(0, PRELOAD - SCAN_ITEMS, 7))
        scripts = {"put": _PUT_LUA, "get": _GET_LUA % (PRELOAD - 1),
                   "scan": _SCAN_LUA % (starts, SCAN_ITEMS)}
        for op in ("put", "get", "scan"):
            if op == "get":
                async with aiohttp.ClientSession() as session, \
                        session.post(f"{d.url}/v1/domains/bench/flush") as r:
                    assert r.status == 204, r.status
            for conc in CONCURRENCY:
                res = await asyncio.to_thread(wrk, d.url, scripts[op], conc, duration, wal, op,
                                              work)
                results.append(res)
                print_row(res)


async def main(duration: float, quick: bool, only: str | None) -> list[Result]:
    results: list[Result] = []
    os.environ.update(DUMMY_AWS)
    work = Path(tempfile.mkdtemp(prefix="cachedaemon-kv-bench-"))
    try:
        if only == "remote":
            return await remote_rows(work, duration, results)
        print("local: our local log on a file:// bucket; slatedb on a local file store")
        bucket = work / "local" / "bucket"
        bucket.mkdir(parents=True)
        async with inproc(LocalObjectStore(bucket), work / "local" / "inproc", "local") as s:
            await measure(s, "local", duration, results)
        await http_system(work / "local" / "http", "local", f"file://{work / 'local' / 'b2'}",
                          None, duration, results)
        slate_dir = work / "local" / "slatedb"
        slate_dir.mkdir(parents=True)
        async with slatedb("file:///", str(slate_dir).lstrip("/")) as s:
            await measure(s, "local", duration, results)
        if quick or only == "local":
            return results
        return await remote_rows(work, duration, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def remote_rows(work: Path, duration: float, results: list[Result]) -> list[Result]:
    if True:
        print("remote: our bucket-backed log vs slatedb, both on one moto server")
        with moto() as endpoint:
            b1 = new_bucket(endpoint)
            store = S3ObjectStore(b1, endpoint_url=endpoint)
            try:
                async with inproc(store, work / "remote" / "inproc", "remote") as s:
                    await measure(s, "remote", duration, results)
            finally:
                await store.close()
            await http_system(work / "remote" / "http", "remote", f"s3://{new_bucket(endpoint)}",
                              endpoint, duration, results)
            env = {"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
            async with slatedb(f"s3://{new_bucket(endpoint)}", "bench", env) as s:
                await measure(s, "remote", duration, results)
    return results


def table(results: list[Result]) -> str:
    lines = ["| log | op | callers | system | ops/s | p50 ms | p99 ms | vs slatedb |",
             "|---|---|---|---|---|---|---|---|"]
    ref = {(r.log, r.op, r.conc): r for r in results if r.system == "slatedb"}
    for r in sorted(results, key=lambda r: (r.log, r.op, r.conc, r.system)):
        base = ref.get((r.log, r.op, r.conc))
        ratio = f"{r.rate / base.rate:.1f}x" if base and base.rate and r is not base else ""
        lines.append(f"| {r.log} | {r.op} | {r.conc} | {r.system} | {r.rate:.0f} | "
                     f"{r.pct(0.5):.2f} | {r.pct(0.99):.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per row")
    parser.add_argument("--quick", action="store_true", help="local rows only")
    parser.add_argument("--only", choices=("local", "remote"), help="one log kind only")
    args = parser.parse_args()
    res = asyncio.run(main(args.duration, args.quick, args.only))
    print()
    print(table(res))

