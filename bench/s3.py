"""Benchmark: the S3 endpoint against the daemon's own /v1 API and against moto. One command,
every ratio measured in the same run:

    .venv-test/bin/python bench/s3.py [--duration 4] [--rounds 2] [--quick]

1. Cache-hit GETs (4 KiB and 1 MiB objects, concurrency 32, ``wrk``): through the S3 endpoint
   vs through ``/v1`` on the same daemon (``--shards 1``, no credentials: both open). Goal
   ``>= 0.9x``.
2. The same, with the S3 endpoint verifying SigV4 on every request: ``wrk`` replays a presigned
   GET URL (valid for the run), against ``/v1`` of a daemon with no token.
3. The hit through the S3 endpoint vs the same GET straight from moto (the bucket behind; a
   presigned URL, as moto refuses anonymous reads).
4. PUT of 1 MiB objects at concurrency 8 through the S3 endpoint (SigV4, payload hash checked:
   aiobotocore signs the body over plain HTTP) vs the same aiobotocore PUT straight to moto
   (the endpoint's PUT contains such a PUT: staged, uploaded to moto, committed), and vs a PUT
   through ``/v1`` of the same daemon setup (aiohttp).

Daemons, moto and ``wrk`` are started here on 127.0.0.1 (``wrk`` from Debian, installed with
apt-get when missing, as ``bench/serving.py`` does). Prints requests/s, MB/s, p50/p99 and the
ratio for each row. moto (Python) bounds rows 3 and 4, so their absolute figures say nothing
about S3; the ratio is the point. The machine may be shared: say so with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

# ruff: noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import support  # wrk, moto, timing, table rows: the benchmarks' one copy

from tests.support.daemon import DaemonProcess, start_daemon

KiB, MiB = 1024, 1024 * 1024
SIZES = [("4KiB", 4 * KiB), ("1MiB", MiB)]
CONCURRENCY = 32
AK, SK = "bench-key", "bench-secret"


def s3_url(d: DaemonProcess, timeout: float = 10.0) -> str:
    """The S3 endpoint's URL, from the line the daemon prints after its listening line."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in d.stdout_lines:
            if line.startswith("cachedaemon S3 endpoint on "):
                return line.split()[-1]
        time.sleep(0.02)
    raise RuntimeError("no S3 endpoint line")


def boto(endpoint: str, key: str = AK, secret: str = SK) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      signature_version="s3v4"))


def warm(d: DaemonProcess, client: Any, bucket: str) -> None:
    """Store the hit objects through S3 and read each once (through both APIs), so both serve
    them as cache hits with their records in place."""
    for name, size in SIZES:
        client.put_object(Bucket=bucket, Key=f"hit-{name}", Body=os.urandom(size))
        client.get_object(Bucket=bucket, Key=f"hit-{name}")["Body"].read()
        with urllib.request.urlopen(f"{d.url}/v1/objects/hit-{name}") as r:
            assert r.headers["X-Cache"] == "hit"
            r.read()


async def puts(endpoint: str, bucket: str, count: int, key: str, secret: str) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    payloads = [os.urandom(MiB) for _ in range(8)]
    tag = uuid.uuid4().hex[:8]
    async with get_session().create_client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=AioConfig(s3={"addressing_style": "path"}, max_pool_connections=16)) as s3:
        async def one(i: int) -> None:
            await s3.put_object(Bucket=bucket, Key=f"put-{tag}/{i}", Body=payloads[i % 8])

        return await support.timed_requests(count, 8, MiB, one)


async def v1_puts(url: str, count: int) -> Any:
    import aiohttp

    payloads = [os.urandom(MiB) for _ in range(8)]
    tag = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
        async def one(i: int) -> None:
            async with http.put(f"{url}/v1/objects/v1put-{tag}/{i}", data=payloads[i % 8]) as r:
                assert r.status == 201, await r.text()

        return await support.timed_requests(count, 8, MiB, one)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds per comparison (the best of each side counts)")
    ap.add_argument("--quick", action="store_true", help="2 s wrk runs, fewer PUTs")
    args = ap.parse_args()
    duration = 2.0 if args.quick else args.duration
    count = 48 if args.quick else 128
    problem = support.ensure_tools()
    if problem is not None:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 1
    rows: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    try:
        with support.moto() as moto, contextlib.ExitStack() as stack:
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            os.environ.update({"AWS_ACCESS_KEY_ID": "testing",
                               "AWS_SECRET_ACCESS_KEY": "testing"})
            direct = boto(moto, "testing", "testing")
            direct.create_bucket(Bucket=bucket)
            common = ("--cache-max-bytes", "4GiB", "--remote", f"s3://{bucket}",
                      "--s3-endpoint", moto, "--s3-listen", "127.0.0.1:0")
            open_d = stack.enter_context(start_daemon(work / "open", *common, shards=1))
            signed_d = stack.enter_context(start_daemon(
                work / "signed", *common, shards=1,
                env={"CACHEDAEMON_S3_ACCESS_KEY_ID": AK,
                     "CACHEDAEMON_S3_SECRET_ACCESS_KEY": SK}))
            open_s3, signed_s3 = s3_url(open_d), s3_url(signed_d)
            warm(open_d, boto(open_s3), bucket)
            signed_client = boto(signed_s3)
            warm(signed_d, signed_client, bucket)
            wrk = support.wrk
            best = support.best
            for name, _ in SIZES:
                presigned = signed_client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": f"hit-{name}"},
                    ExpiresIn=3600)
                sides: dict[str, tuple[list[Any], str]] = {
                    "s3": ([], f"{open_s3}/{bucket}/hit-{name}"),
                    "v1": ([], f"{open_d.url}/v1/objects/hit-{name}"),
                    "signed": ([], presigned),
                    "moto": ([], direct.generate_presigned_url(
                        "get_object", Params={"Bucket": bucket, "Key": f"hit-{name}"},
                        ExpiresIn=3600)),
                }
                for rnd in range(args.rounds):
                    order = list(sides.values())
                    if rnd % 2:
                        order.reverse()
                    for acc, url in order:
                        acc.append(wrk(url, duration, CONCURRENCY))
                s3_r, v1_r = best(sides["s3"][0]), best(sides["v1"][0])
                signed_r, moto_r = best(sides["signed"][0]), best(sides["moto"][0])
                rows.append(support.row(f"hit GET {name} c{CONCURRENCY}: S3 (open)",
                                           s3_r, v1_r, "/v1"))
                rows.append(support.row(f"hit GET {name} c{CONCURRENCY}: S3 (SigV4 presigned)",
                                           signed_r, v1_r, "/v1"))
                rows.append(support.row(f"hit GET {name} c{CONCURRENCY}: S3 (open)",
                                           s3_r, moto_r, "moto"))
            ours: list[Any] = []
            ref: list[Any] = []
            v1: list[Any] = []
            for rnd in range(args.rounds):
                order = [(ours, signed_s3, AK, SK), (ref, moto, "testing", "testing"),
                         (v1, open_d.url, "", "")]
                if rnd % 2:
                    order.reverse()
                for acc, endpoint, key, secret in order:
                    run = v1_puts(endpoint, count) if acc is v1 else \
                        puts(endpoint, bucket, count, key, secret)
                    acc.append(asyncio.run(run))
            rows.append(support.row("PUT 1MiB c8: S3 endpoint (SigV4)", best(ours),
                                       best(ref), "moto"))
            rows.append(support.row("PUT 1MiB c8: S3 endpoint (SigV4)", best(ours),
                                       best(v1), "/v1"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\ncachedaemon S3 endpoint benchmark ({os.cpu_count()} CPUs, load average {load:.1f}"
          f"; wrk {max(1, round(duration))}s runs; PUTs {count} requests; {args.rounds} "
          f"alternating rounds, best of each side)\n")
    print("| case | S3 endpoint req/s | MB/s | p50 / p99 ms | reference req/s | MB/s | "
          "p50 / p99 ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
