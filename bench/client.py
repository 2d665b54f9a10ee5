"""Benchmark: the Python client's overhead over a bare aiohttp session, against the same daemon
in the same run, and the blocking client against the async one. One command:

    .venv/bin/python bench/client.py [--count 200] [--big-mib 64] [--rounds 5]

Starts ``cachedaemon serve --shards 1`` (file:// bucket in a temporary directory), then for
each row times the same requests made two ways (best of ``--rounds``, alternating) and prints
requests/s, MB/s and the ratio client/baseline (1.0 = no overhead; lower is slower):

1. GET 4 KiB cache hits, one at a time: ``AsyncClient.get`` vs ``session.get().read()``.
2. GET 1 MiB cache hits, concurrency 8: ``AsyncClient.get`` vs bare aiohttp.
3. PUT 1 MiB, concurrency 8: ``AsyncClient.put`` vs bare aiohttp PUT.
4. One big object streamed to a file: ``AsyncClient.get_to_file`` vs bare aiohttp writing the
   chunks itself.
5. The blocking ``Client.get`` (a thread hop per call) vs ``AsyncClient.get``, 4 KiB hits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cachedaemon.client import AsyncClient, Client  # noqa: E402
from tests.support.daemon import start_daemon  # noqa: E402


async def timed(n: int, concurrency: int, op: Callable[[int], Awaitable[object]]) -> float:
    """Seconds to run op(0..n-1) with ``concurrency`` workers."""
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def compare(
    n: int, concurrency: int, client_op: Callable[[int], Awaitable[object]],
    base_op: Callable[[int], Awaitable[object]], rounds: int,
) -> tuple[float, float]:
    """Best of ``rounds`` for each side, the sides alternating so drift hits both alike."""
    c_best = b_best = float("inf")
    for _ in range(rounds):
        c_best = min(c_best, await timed(n, concurrency, client_op))
        b_best = min(b_best, await timed(n, concurrency, base_op))
    return c_best, b_best


def row(name: str, n: int, size: int, client_s: float, base_s: float, base_name: str) -> None:
    mb = n * size / 1e6
    print(f"{name:<34} client {n / client_s:8.0f} req/s {mb / client_s:8.1f} MB/s | "
          f"{base_name} {n / base_s:8.0f} req/s {mb / base_s:8.1f} MB/s | "
          f"ratio {base_s / client_s:5.2f}")


async def run(url: str, count: int, big_mib: int, tmp: Path, rounds: int) -> None:
    small, mid = os.urandom(4096), os.urandom(1024 * 1024)
    async with AsyncClient(url) as client, aiohttp.ClientSession() as session:
        await client.put("bench/small", small)
        await client.put("bench/mid", mid)
        for _ in range(3):  # warm both paths
            await client.get("bench/small")
            async with session.get(f"{url}/v1/objects/bench/small") as r:
                await r.read()

        async def c_small(i: int) -> None:
            await client.get("bench/small")

        async def b_small(i: int) -> None:
            async with session.get(f"{url}/v1/objects/bench/small") as r:
                await r.read()

        row("GET 4 KiB hit, c=1", count, 4096, *await compare(count, 1, c_small, b_small, rounds), "aiohttp")

        async def c_mid(i: int) -> None:
            await client.get("bench/mid")

        async def b_mid(i: int) -> None:
            async with session.get(f"{url}/v1/objects/bench/mid") as r:
                await r.read()

        n_mid = max(8, count // 4)
        row("GET 1 MiB hit, c=8", n_mid, len(mid), *await compare(n_mid, 8, c_mid, b_mid, rounds), "aiohttp")

        async def c_put(i: int) -> None:
            await client.put(f"bench/put-c-{i}", mid)

        async def b_put(i: int) -> None:
            async with session.put(f"{url}/v1/objects/bench/put-b-{i}", data=mid) as r:
                await r.read()
                assert r.status == 201, r.status

        row("PUT 1 MiB, c=8", n_mid, len(mid), *await compare(n_mid, 8, c_put, b_put, rounds), "aiohttp")

        big = tmp / "big.bin"
        with big.open("wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1024 * 1024))
        await client.put("bench/big", big)
        await client.get_to_file("bench/big", tmp / "warm")

        async def c_big(i: int) -> None:
            await client.get_to_file("bench/big", tmp / "out-client")

        async def b_big(i: int) -> None:
            async with session.get(f"{url}/v1/objects/bench/big") as r:
                with (tmp / "out-bare").open("wb") as f:
                    async for chunk in r.content.iter_chunked(256 * 1024):
                        f.write(chunk)

        row(f"GET {big_mib} MiB to a file", 3, big_mib * 1024 * 1024, *await compare(3, 1, c_big, b_big, rounds), "aiohttp")

    async_s = sync_s = float("inf")
    for _ in range(rounds):
        async with AsyncClient(url) as client:
            async_s = min(async_s, await timed(count, 1, lambda i: client.get("bench/small")))
        with Client(url) as sync_client:
            start = time.perf_counter()
            for _ in range(count):
                sync_client.get("bench/small")
            sync_s = min(sync_s, time.perf_counter() - start)
    row("blocking Client GET 4 KiB, c=1", count, 4096, sync_s, async_s, "async  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cachedaemon-bench-client-") as tmp:
        tmp_path = Path(tmp)
        with start_daemon(tmp_path / "data", "--cache-max-bytes", "2GiB") as daemon:
            print(f"daemon {daemon.url} (--shards 1), file:// bucket; {os.cpu_count()} cores")
            asyncio.run(run(daemon.url, args.count, args.big_mib, tmp_path, args.rounds))


if __name__ == "__main__":
    main()
