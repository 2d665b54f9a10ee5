# ruff: noqa: E402
"""Benchmark: S3ObjectStore against a bare, equally tuned aiobotocore client, on one moto server.

    .venv/bin/python bench/remote.py [--budget SECONDS] [--min-rounds N]

Starts its own moto server, then for 1 MiB and 16 MiB objects at concurrency 1 and 16 measures
put and get throughput through ``S3ObjectStore`` and through a bare aiobotocore client built with
the same ``AioConfig`` (``client_config()``: pool of 64, no payload signing, checksums only when
required, no botocore retries) that streams bodies with ``iter_chunks`` in 1 MiB chunks. The two
clients alternate round by round (which one goes first alternates too) so drift in the server's
speed hits both alike. Prints MB/s (10^6 bytes/s) for each, the ratio ours/bare of those totals,
and the median of the per-round ratios (robust to load bursts from other processes on a shared
machine); the goal is a ratio >= 0.95 in both directions.

The moto server is the bottleneck (a Python process on the same machine), so absolute figures
say little about S3; the ratio is what this measures.
"""

from __future__ import annotations

import sys
from pathlib import Path

_BENCH_DIR = str(Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiobotocore.session import get_session

from cachedaemon.remote.s3 import S3ObjectStore, client_config, client_kwargs

MiB = 1024 * 1024
READ_CHUNK = 1 * MiB


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return proc, endpoint
        except Exception:
            time.sleep(0.05)
    stop_moto(proc)
    raise SystemExit("moto server did not start")


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)


Op = Callable[[str], Awaitable[int]]


class Bare:
    """The reference: aiobotocore with the same config, nothing of ours in the path."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    async def put(self, key: str, data: bytes) -> int:
        await self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data)
        )
        return len(data)

    async def get(self, key: str) -> int:
        resp = await self.client.get_object(Bucket=self.bucket, Key=key)
        body = resp["Body"]
        n = 0
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                n += len(chunk)
        finally:
            body.close()
        return n


class Ours:
    def __init__(self, store: S3ObjectStore) -> None:
        self.store = store

    async def put(self, key: str, data: bytes) -> int:
        return (await self.store.put(key, data)).size

    async def get(self, key: str) -> int:
        result = await self.store.get(key)
        assert result is not None
        n = 0
        async with result:
            async for chunk in result.iter_chunks():
                n += len(chunk)
        return n


async def run_batch(op: Op, keys: list[str], concurrency: int) -> tuple[int, float]:
    """Run ``op`` over ``keys`` with ``concurrency`` workers; (bytes, seconds)."""
    queue = list(reversed(keys))
    total = 0

    async def worker() -> None:
        nonlocal total
        while queue:
            n = await op(queue.pop())  # not ``total += await``: that reads total before awaiting
            total += n

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total, time.perf_counter() - start


#: (object size, label, concurrency, operations per batch): a batch takes ~0.2-1 s on moto.
CELLS = [
    (1 * MiB, "1 MiB", 1, 6),
    (1 * MiB, "1 MiB", 16, 32),
    (16 * MiB, "16 MiB", 1, 1),
    (16 * MiB, "16 MiB", 16, 16),
]


async def measure_cell(
    ours: Ours,
    bare: Bare,
    direction: str,
    label: str,
    data: bytes,
    concurrency: int,
    batch: int,
    get_keys: list[str],
    budget_s: float,
    min_rounds: int,
) -> tuple[float, float, float, int]:
    """Alternate batches of the two clients until the budget is spent (after one untimed
    warm-up round, so both connection pools hold ``concurrency`` connections).

    Returns (ours MB/s, bare MB/s, median of the per-round ratios, rounds). The aggregate MB/s
    weigh every byte alike; the median ratio is robust to bursts of load from other processes
    that hit one batch and not its partner.
    """
    acc = {"ours": [0, 0.0], "bare": [0, 0.0]}
    ratios: list[float] = []
    started = time.perf_counter()
    r = -1  # round -1 is an untimed warm-up: both pools open `concurrency` connections
    while r < min_rounds or time.perf_counter() - started < budget_s:
        order = ["ours", "bare"] if r % 2 == 0 else ["bare", "ours"]
        this_round: dict[str, float] = {}
        for who in order:
            impl: Bare | Ours = ours if who == "ours" else bare
            if direction == "put":
                keys = [f"put/{who}/{label}/{r}/{i}" for i in range(batch)]

                async def op(k: str, impl: Bare | Ours = impl) -> int:
                    return await impl.put(k, data)

            else:
                keys = get_keys

                async def op(k: str, impl: Bare | Ours = impl) -> int:
                    return await impl.get(k)

            n, secs = await run_batch(op, keys, concurrency)
            if r < 0:
                continue
            acc[who][0] += n
            acc[who][1] += secs
            this_round[who] = n / secs
        if r >= 0:
            ratios.append(this_round["ours"] / this_round["bare"])
        r += 1
    return (
        acc["ours"][0] / acc["ours"][1] / 1e6,
        acc["bare"][0] / acc["bare"][1] / 1e6,
        statistics.median(ratios),
        r,
    )


async def empty_bucket(client: Any, bucket: str) -> None:
    """Keep moto's memory in check between cells."""
    listing = await client.list_objects_v2(Bucket=bucket)
    while listing.get("Contents"):
        await client.delete_objects(
            Bucket=bucket,
            Delete={"Objects": [{"Key": o["Key"]} for o in listing["Contents"]]},
        )
        listing = await client.list_objects_v2(Bucket=bucket)


Row = tuple[str, int, str, float, float, float, int]


async def bench(budget_s: float, min_rounds: int) -> list[Row]:
    proc, endpoint = start_moto()
    rows: list[Row] = []
    try:
        bucket = "bench-" + uuid.uuid4().hex[:12]
        config = client_config(addressing_style="path")
        async with get_session().create_client(
            "s3", **client_kwargs(endpoint, "us-east-1", config)
        ) as client:
            await client.create_bucket(Bucket=bucket)
            bare = Bare(client, bucket)
            store = S3ObjectStore(bucket, endpoint_url=endpoint)
            ours = Ours(store)
            try:
                # Warm both up (client creation, model loading, first connections) untimed.
                await bare.put("warm/bare", b"x")
                await ours.put("warm/ours", b"x")
                await bare.get("warm/ours")
                await ours.get("warm/bare")
                for size, label, concurrency, batch in CELLS:
                    data = os.urandom(size)
                    # objects to read back, written once by the bare client
                    get_keys = [f"get/{label}/{i}" for i in range(batch)]
                    await asyncio.gather(*(bare.put(k, data) for k in get_keys))
                    for direction in ("put", "get"):
                        ours_mbs, bare_mbs, median, rounds = await measure_cell(
                            ours,
                            bare,
                            direction,
                            label,
                            data,
                            concurrency,
                            batch,
                            get_keys,
                            budget_s,
                            min_rounds,
                        )
                        rows.append(
                            (label, concurrency, direction, ours_mbs, bare_mbs, median, rounds)
                        )
                        print(
                            f"  {label:>6} c={concurrency:<2} {direction}: "
                            f"ours {ours_mbs:7.1f} MB/s  bare {bare_mbs:7.1f} MB/s  "
                            f"ratio {ours_mbs / bare_mbs:.3f}  median round ratio {median:.3f}  "
                            f"({rounds} rounds)",
                            flush=True,
                        )
                    await empty_bucket(client, bucket)
            finally:
                await store.close()
    finally:
        stop_moto(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--budget", type=float, default=9.0, help="seconds of alternating rounds per cell"
    )
    parser.add_argument("--min-rounds", type=int, default=4, help="rounds per cell at least")
    args = parser.parse_args()
    started = time.monotonic()
    print(
        f"S3ObjectStore vs bare aiobotocore on one moto server "
        f"(alternating batches, {args.budget:g} s per cell)"
    )
    rows = asyncio.run(bench(args.budget, args.min_rounds))
    print()
    print("| object | conc | op  | ours MB/s | bare MB/s | ratio | median round ratio | rounds |")
    print("|-------:|-----:|:----|----------:|----------:|------:|-------------------:|-------:|")
    for label, conc, direction, ours_mbs, bare_mbs, median, rounds in rows:
        print(
            f"| {label:>6} | {conc:>4} | {direction:<3} | {ours_mbs:9.1f} | {bare_mbs:9.1f} "
            f"| {ours_mbs / bare_mbs:5.3f} | {median:18.3f} | {rounds:>6} |"
        )
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
