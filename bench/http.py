"""Benchmark: the daemon's HTTP path against nginx (hits) and against bare aiobotocore (misses,
PUTs), plus one shard against two. One command, every ratio measured in the same run:

    .venv/bin/python bench/http.py [--duration 5] [--quick]

1. Cache-hit GET throughput for 4 KiB, 1 MiB and 16 MiB objects at concurrency 32: the daemon
   (``--shards 1``) vs nginx (Debian's, one worker, started here on loopback with a temporary
   config) serving the very files of the daemon's cache directory from disk. Load generator:
   ``wrk`` (Debian), the same for both sides. nginx/wrk are installed with apt-get when
   missing; if that fails, part 1 and 4 are skipped with a message.
2. Miss GET (the daemon streams from the bucket while filling its cache) vs a direct aiobotocore
   GET from the same moto server, 1 MiB objects, concurrency 8, every request a real miss.
3. PUT through the daemon (stage, upload, commit) vs a direct aiobotocore PUT, 1 MiB objects,
   concurrency 8.
4. ``--shards 1`` vs ``--shards 2`` for part 1.

Parts 2 and 3 run their load from this Python process (aiohttp for the daemon, aiobotocore for
the bucket); the daemon and moto are separate processes. Prints requests/s, MB/s, p50/p99
latency and the ratio daemon/reference for each row. The moto server (Python) is the
bottleneck of parts 2-3, so their absolute figures say nothing about S3; the ratio is the point.
"""

from __future__ import annotations

# ruff: noqa: E402
import sys

# This file is named like the standard library's ``http`` package: run as a script, its own
# directory must not shadow it.
_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [p for p in sys.path if p not in ("", _HERE) and not p.endswith("/bench")]

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp

from tests.support.daemon import DaemonProcess, start_daemon

KiB, MiB = 1024, 1024 * 1024
HIT_SIZES = [("4KiB", 4 * KiB), ("1MiB", MiB), ("16MiB", 16 * MiB)]
HIT_CONCURRENCY = 32


@dataclass
class Result:
    rps: float
    mbps: float
    p50_ms: float
    p99_ms: float


# --- helpers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> str | None:
    """None if nginx and wrk are usable, else why not."""
    if (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()) and shutil.which("wrk"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "nginx/wrk missing and apt-get is not usable here"
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"],
                       capture_output=True, check=False)
    if r.returncode != 0:
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "wrk"],
                           capture_output=True, check=False)
    if r.returncode != 0 or not shutil.which("wrk"):
        return f"cannot install nginx/wrk: {r.stderr.decode()[-300:]}"
    return None


@contextlib.contextmanager
def nginx(root: Path, workers: int) -> Iterator[str]:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes {workers};
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
""")
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", ok_statuses=(200, 403, 404))
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def wait_http(url: str, ok_statuses: tuple[int, ...] = (200,), timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code in ok_statuses:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


@contextlib.contextmanager
def moto() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, duration: float, connections: int, threads: int = 1) -> Result:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--latency",
         url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    assert tr is not None
    mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[tr.group(2)]
    lat = dict(re.findall(r"\s(50|99)%\s+([\d.]+\w+)", out))

    def ms(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
        assert m is not None
        return float(m.group(1)) * _UNIT[m.group(2)]

    if re.search(r"Non-2xx or 3xx responses", out) or "Socket errors" in out:
        print(f"  (wrk reported errors for {url}:)\n{out}", file=sys.stderr)
    return Result(rps, float(tr.group(1)) * mult / 1e6, ms(lat["50"]), ms(lat["99"]))


async def timed_requests(n: int, concurrency: int, size: int,
                         one: Callable[[int], Awaitable[None]]) -> Result:
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return Result(n / elapsed, n * size / elapsed / 1e6,
                  statistics.median(latencies) * 1000,
                  latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


# --- parts ------------------------------------------------------------------------------------


async def store_hit_objects(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for name, size in HIT_SIZES:
            async with s.put(f"{url}/v1/objects/hit-{name}", data=os.urandom(size)) as r:
                assert r.status == 201, await r.text()
            async with s.get(f"{url}/v1/objects/hit-{name}") as r:
                assert r.headers["X-Cache"] == "hit"
                await r.read()


async def miss_and_put(d: DaemonProcess, endpoint: str, bucket: str, count: int,
                       concurrency: int, size: int, rounds: int
                       ) -> dict[str, tuple[Result, Result]]:
    from aiobotocore.session import get_session

    from cachedaemon.remote.s3 import client_config, client_kwargs

    payloads = [os.urandom(size) for _ in range(8)]
    session = get_session()
    kwargs = client_kwargs(endpoint, "us-east-1", client_config(max_pool_connections=64))
    results: dict[str, tuple[Result, Result]] = {}
    timeout = aiohttp.ClientTimeout(total=300)
    async with session.create_client("s3", **kwargs) as s3, \
            aiohttp.ClientSession(timeout=timeout,
                                  connector=aiohttp.TCPConnector(limit=64)) as http:
        async def daemon_put(i: int, tag: str) -> None:
            async with http.put(f"{d.url}/v1/objects/{tag}/{i}", data=payloads[i % 8]) as r:
                assert r.status == 201, await r.text()

        async def direct_put(i: int, tag: str) -> None:
            await s3.put_object(Bucket=bucket, Key=f"{tag}/{i}", Body=payloads[i % 8])

        async def daemon_get(i: int, tag: str) -> None:
            async with http.get(f"{d.url}/v1/objects/{tag}/{i}") as r:
                assert r.status == 200 and r.headers["X-Cache"] == "miss", r.headers
                async for _ in r.content.iter_chunked(MiB):
                    pass

        async def direct_get(i: int, tag: str) -> None:
            resp = await s3.get_object(Bucket=bucket, Key=f"{tag}/{i}")
            async with resp["Body"] as body:
                while await body.read(MiB):
                    pass

        # Alternate rounds so drift in moto's speed hits both sides alike.
        puts: dict[str, list[Result]] = {"daemon": [], "direct": []}
        gets: dict[str, list[Result]] = {"daemon": [], "direct": []}
        for rnd in range(rounds):
            tag = f"r{rnd}-{uuid.uuid4().hex[:6]}"
            order = [("daemon", daemon_put), ("direct", direct_put)]
            if rnd % 2:
                order.reverse()
            for side, fn in order:
                puts[side].append(await timed_requests(
                    count, concurrency, size, lambda i, f=fn, t=f"{tag}-{side}": f(i, t)))
            # Misses: the daemon's copies were cached by its PUTs; drop them first.
            for i in range(count):
                async with http.delete(f"{d.url}/v1/cache/objects/{tag}-daemon/{i}") as r:
                    assert r.status == 204
            order2 = [("daemon", daemon_get), ("direct", direct_get)]
            if rnd % 2:
                order2.reverse()
            for side, fn in order2:
                gets[side].append(await timed_requests(
                    count, concurrency, size, lambda i, f=fn, t=f"{tag}-{side}": f(i, t)))
        results["PUT 1MiB c8"] = (best(puts["daemon"]), best(puts["direct"]))
        results["miss GET 1MiB c8"] = (best(gets["daemon"]), best(gets["direct"]))
    return results


def best(rs: list[Result]) -> Result:
    return max(rs, key=lambda r: r.rps)


# --- main -------------------------------------------------------------------------------------


def row(name: str, ours: Result, ref: Result, ref_name: str) -> str:
    return (f"| {name} | {ours.rps:,.0f} | {ours.mbps:,.1f} | {ours.p50_ms:.2f} / "
            f"{ours.p99_ms:.2f} | {ref_name}: {ref.rps:,.0f} | {ref.mbps:,.1f} | "
            f"{ref.p50_ms:.2f} / {ref.p99_ms:.2f} | **{ours.rps / ref.rps:.2f}x** |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds per comparison (the best of each side counts)")
    ap.add_argument("--quick", action="store_true", help="2 s wrk runs, fewer requests")
    args = ap.parse_args()
    duration = 2.0 if args.quick else args.duration
    count = 48 if args.quick else 128
    rounds = args.rounds
    rows: list[str] = []
    tools_problem = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        with moto() as endpoint, contextlib.ExitStack() as stack:
            import botocore.session

            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
            c = botocore.session.get_session().create_client(
                "s3", endpoint_url=endpoint, region_name="us-east-1")
            c.create_bucket(Bucket=bucket)
            common = ("--cache-max-bytes", "4GiB", "--remote", f"s3://{bucket}",
                      "--s3-endpoint", endpoint)
            d1 = stack.enter_context(start_daemon(work / "one", *common, shards=1))
            asyncio.run(store_hit_objects(d1.url))
            if tools_problem is None:
                d2 = stack.enter_context(start_daemon(work / "two", *common, shards=2))
                asyncio.run(store_hit_objects(d2.url))
                ng = stack.enter_context(nginx(work / "one" / "cache", workers=1))
                for name, _ in HIT_SIZES:
                    ours: list[Result] = []
                    ref: list[Result] = []
                    two: list[Result] = []
                    for rnd in range(rounds):
                        sides = [
                            (ours, f"{d1.url}/v1/objects/hit-{name}"),
                            (ref, f"{ng}/hit-{name}"),
                            (two, f"{d2.url}/v1/objects/hit-{name}"),
                        ]
                        if rnd % 2:
                            sides.reverse()
                        for acc, url in sides:
                            acc.append(wrk(url, duration, HIT_CONCURRENCY))
                    rows.append(row(f"hit GET {name} c{HIT_CONCURRENCY}", best(ours), best(ref),
                                    "nginx"))
                    rows.append(row(f"hit GET {name} c{HIT_CONCURRENCY}: 2 shards vs 1",
                                    best(two), best(ours), "1 shard"))
            mp = asyncio.run(miss_and_put(d1, endpoint, bucket, count, 8, MiB, rounds))
            for name, (o, direct) in mp.items():
                rows.append(row(name, o, direct, "aiobotocore"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\ncachedaemon HTTP benchmark ({os.cpu_count()} CPUs, load average {load:.1f}; "
          f"wrk {max(1, round(duration))}s runs; misses/PUTs {count} requests; "
          f"{rounds} alternating rounds, best of each side)\n")
    print("| case | daemon req/s | MB/s | p50 / p99 ms | reference req/s | MB/s | "
          "p50 / p99 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    if tools_problem is not None:
        print(f"\nskipped the nginx comparison and the shard comparison: {tools_problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
