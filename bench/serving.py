"""Benchmark: what serving a request costs the daemon, route by route, beside a bare handler on
the same HTTP stack, nginx, aiobotocore and slatedb. One command, every ratio from one run:

    .venv-test/bin/python bench/serving.py [--duration 4] [--rounds 3] [--quick]
                                           [--parts cost,large,shards,kv,remote,mrc]

Every wrk run is ``wrk -t1 -c32`` on this machine; the rounds of a comparison alternate the
sides, and each figure is the median of its rounds. "CPU µs/req" is the user + system time the
server's process tree spent (``/proc``: the daemon with its shard processes, nginx with its
worker) divided by the requests wrk completed, so it is the cost of a request at saturation.

Parts:

``cost``
    One shard, c=32, for each hot route: ``GET /healthz``, 4 KiB and 64 KiB cache hits, kv GET
    (random keys of 10,000, flushed to SSTs) and L1 ``get_first_ge`` (random offsets of random
    partitions). Beside each, the **bare handler**: this file run as ``--bare-server``, our
    HTTP server (uvloop + httptools, ``cachedaemon.server.http``) with a handler that returns
    the bytes the daemon answered for that route (status, headers, body) from memory. For the
    hits, also **nginx** (one worker, sendfile) serving the very files of the daemon's cache.
``large``
    1 MiB and 16 MiB hits, the daemon (one shard) against nginx (one worker).
``shards``
    ``--shards 2`` against ``--shards 1`` for ``/healthz``, the 4 KiB and 1 MiB hits, kv GET
    and L1 ``get_first_ge`` on one domain (its owner shard does all its work) and spread over
    8 kv / 4 L1 domains; and, as the reference of what this machine allows with wrk on it
    too, nginx with 2 workers against 1 on the same 4 KiB and 1 MiB files.
``kv``
    In-process point gets, 64 callers: our metastore (``DomainService.get``) and slatedb
    (``pip install -e '.[bench]'``), each on 10,000 keys flushed to a local file store; the
    row that matters for the issue is the daemon's kv GET over HTTP (part ``cost``) against
    slatedb in-process.
``remote``
    1 MiB misses (the daemon streams from the bucket while it fills its cache) and PUTs (stage,
    upload, commit) against the same requests made straight to the moto server with
    aiobotocore, concurrency 8. moto (Python) bounds both sides: the ratio is the point.

``mrc``
    What the miss-ratio curve costs a 4 KiB hit (issue 18 allows 3 %): two one-shard daemons,
    ``cache.mrc_sample_rate`` 0.01 (the default) and 0 (off), wrk alternating between them;
    then the same two in-process, the shard's request handler called directly 20,000 times a
    round (no sockets: the CPU of a hit is all the handler's, so the ratio is not lost in wrk's
    noise). Only in the explicit ``--parts`` list (not by default): it is the one figure of
    its own issue.

nginx and wrk are installed with apt-get when missing; without them the wrk parts are skipped
with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import (
    Load,
    Timed,
    ensure_tools,
    free_port,
    median_of,
    moto,
    nginx,
    timed_requests,
    wait_http,
    wrk,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # cachedaemon and tests.support, when not installed

KiB, MiB = 1024, 1024 * 1024
CONNECTIONS = 32
KV_KEYS = 10_000
KV_VALUE = b"v" * 100
L1_PARTITIONS = 100
L1_OBJECTS = 2_000  # 8 extents each: 16,000 extents, 160 per partition
HIT_SIZES = {"4KiB": 4 * KiB, "64KiB": 64 * KiB, "1MiB": MiB, "16MiB": 16 * MiB}

#: Domains the "spread" rows use: a domain's requests run on its owner shard, so one domain
#: is one shard's work; several spread it.
KV_SPREAD = 8
L1_SPREAD = 4

_KV_LUA = """
math.randomseed(7)
request = function()
  local d = %s
  return wrk.format("GET", string.format("/v1/kv/%%s/key-%%010d", d, math.random(0, %d)))
end
"""

_L1_LUA = """
math.randomseed(7)
request = function()
  local d = %s
  local p = math.random(0, %d)
  local o = math.random(0, %d)
  return wrk.format("GET", "/v1/l1/" .. d .. "/partitions/%s/" .. p .. "/first?offset=" .. o)
end
"""


def kv_key(i: int) -> bytes:
    return b"key-%010d" % i


# --- the bare handler ---------------------------------------------------------------------------


def bare_server(port: int, samples_file: str) -> None:
    """Serve, on our HTTP stack, the recorded answer of each route from memory (see the module
    doc). Runs in its own process, started by :func:`bare`."""
    import uvloop

    from cachedaemon.server.http import HttpServer, Limits, Response

    table = [(prefix, status, headers, base64.b64decode(body))
             for prefix, status, headers, body in json.loads(Path(samples_file).read_text())]

    async def app(request: object, **_: object) -> Response:
        path: str = request.path  # type: ignore[attr-defined]
        for prefix, status, headers, body in table:
            if path.startswith(prefix):
                return Response(status=status, body=body, headers=headers)
        return Response(status=404, body=b"")

    async def main() -> None:
        import socket

        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(1024)
        s.setblocking(False)
        server = HttpServer(app, Limits(max_connections=10_000))
        await server.start(s)
        await asyncio.Event().wait()

    uvloop.run(main())


@contextlib.contextmanager
def bare(samples: list[tuple[str, int, dict[str, str], bytes]], work: Path
         ) -> Iterator[tuple[str, int]]:
    """The bare-handler server in a subprocess: (url, pid)."""
    f = work / "bare-samples.json"
    f.write_text(json.dumps([(p, s, h, base64.b64encode(b).decode()) for p, s, h, b in samples]))
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port), str(f)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", ok_statuses=(200, 404))
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


# --- the daemon's data --------------------------------------------------------------------------


@dataclass
class Daemon:
    url: str
    pid: int
    cache_dir: Path
    topic: str = ""


async def populate(url: str, work: Path) -> str:
    """Hit objects (stored, then read once so they are cached), 10,000 kv keys flushed to SSTs,
    and an L1 domain of 100 partitions; returns the L1 topic id."""
    import aiohttp
    from l1 import Layout, terms_of

    from cachedaemon.client import AsyncClient
    from cachedaemon.client.l1 import L1Client

    async with aiohttp.ClientSession() as s:
        for name, size in HIT_SIZES.items():
            async with s.put(f"{url}/v1/objects/hit-{name}", data=os.urandom(size)) as r:
                assert r.status == 201, await r.text()
            async with s.get(f"{url}/v1/objects/hit-{name}") as r:
                assert r.headers["X-Cache"] == "hit"
                await r.read()
        kv_domains = [("bench", KV_KEYS)] + [(f"kv{i}", KV_KEYS // KV_SPREAD)
                                             for i in range(KV_SPREAD)]
        for domain, keys in kv_domains:
            for start in range(0, keys, 1000):
                ops = [{"op": "put", "key": base64.b64encode(kv_key(i)).decode(),
                        "value": base64.b64encode(KV_VALUE).decode()}
                       for i in range(start, min(keys, start + 1000))]
                async with s.post(f"{url}/v1/domains/{domain}/batch", json={"ops": ops}) as r:
                    assert r.status == 204, await r.text()
            async with s.post(f"{url}/v1/domains/{domain}/flush") as r:
                assert r.status == 204, await r.text()
    async with AsyncClient(url) as client:
        for domain in ["bench"] + [f"l1d{i}" for i in range(L1_SPREAD)]:
            layout = Layout(L1_PARTITIONS)
            l1 = L1Client(client, domain)
            for _ in range(0, L1_OBJECTS, 100):
                objects = [layout.new_object() for _ in range(100)]
                await l1.preregister_objects(oids=[o.oid for o in objects])
                assert not await l1.add_objects(objects, terms_of(objects))
    return str(layout.tidps[0].topic_id)


def l1_max_offset() -> int:
    return L1_OBJECTS * 8 // L1_PARTITIONS * 100 - 1


def route_paths(topic: str) -> dict[str, tuple[str, str | None]]:
    """Route name -> (path, wrk script or None)."""
    return {
        "GET /healthz": ("/healthz", None),
        "hit 4KiB": ("/v1/objects/hit-4KiB", None),
        "hit 64KiB": ("/v1/objects/hit-64KiB", None),
        "kv GET": ("/v1/kv/bench/" + kv_key(0).decode(), _KV_LUA % ('"bench"', KV_KEYS - 1)),
        "L1 get_first_ge": (f"/v1/l1/bench/partitions/{topic}/0/first?offset=0",
                            _L1_LUA % ('"bench"', L1_PARTITIONS - 1, l1_max_offset(), topic)),
    }


def spread_paths(topic: str) -> dict[str, tuple[str, str | None]]:
    """The kv and L1 routes over several domains (see KV_SPREAD)."""
    return {
        f"kv GET, {KV_SPREAD} domains": (
            "/v1/kv/kv0/" + kv_key(0).decode(),
            _KV_LUA % (f'"kv" .. math.random(0, {KV_SPREAD - 1})', KV_KEYS // KV_SPREAD - 1)),
        f"L1 get_first_ge, {L1_SPREAD} domains": (
            f"/v1/l1/l1d0/partitions/{topic}/0/first?offset=0",
            _L1_LUA % (f'"l1d" .. math.random(0, {L1_SPREAD - 1})', L1_PARTITIONS - 1,
                       l1_max_offset(), topic)),
    }


def record(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """The daemon's answer to ``GET path``: what the bare handler will send."""
    import urllib.request

    with urllib.request.urlopen(url + path) as r:
        keep = {k: v for k, v in r.headers.items()
                if k.lower() not in ("content-length", "date", "server", "connection",
                                     "transfer-encoding")}
        return r.status, keep, r.read()


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Series:
    """The runs of one side of a comparison."""

    runs: list[Load] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    @property
    def mbps(self) -> float:
        return statistics.median(r.mbps for r in self.runs)

    @property
    def cpu_us(self) -> float:
        xs = [r.cpu_us for r in self.runs if r.cpu_us is not None]
        return statistics.median(xs) if xs else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(r.p50_ms for r in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(r.p99_ms for r in self.runs)


def compare(sides: list[tuple[str, str, str | None, int]], rounds: int, duration: float
            ) -> dict[str, Series]:
    """wrk against each (name, url, script, pid) side, ``rounds`` alternating rounds."""
    out = {name: Series() for name, *_ in sides}
    for rnd in range(rounds):
        order = sides if rnd % 2 == 0 else list(reversed(sides))
        for name, url, script, pid in order:
            out[name].runs.append(wrk(url, duration, CONNECTIONS, script=script, pid=pid))
    return out


def fmt_side(s: Series) -> str:
    return (f"{s.rps:,.0f} req/s, {s.cpu_us:.1f} µs/req, p50 {s.p50:.2f} ms, "
            f"p99 {s.p99:.2f} ms")


# --- parts --------------------------------------------------------------------------------------


def part_cost(d: Daemon, work: Path, rounds: int, duration: float, rows: list[str]
              ) -> dict[str, Series]:
    """The daemon's series of each route (the rows go to ``rows``)."""
    daemon_series: dict[str, Series] = {}
    paths = route_paths(d.topic)
    samples = []
    for name, (path, _) in paths.items():
        status, headers, body = record(d.url, path)
        assert status == 200, (name, status)
        prefix = path.split("?")[0] if name.startswith(("GET", "hit")) else \
            ("/v1/kv/" if name.startswith("kv") else "/v1/l1/")
        samples.append((prefix, status, headers, body))
    with bare(samples, work) as (bare_url, bare_pid), \
            nginx(d.cache_dir, workers=1) as (ng_url, ng_pid):
        rows.append("| route (one shard, c=32) | daemon req/s | daemon CPU µs/req | bare req/s "
                    "| bare CPU µs/req | **cost vs bare** | nginx req/s | nginx CPU µs/req "
                    "| **req/s vs nginx** |")
        rows.append("|---|---|---|---|---|---|---|---|---|")
        for name, (path, script) in paths.items():
            sides = [("daemon", d.url + path, script, d.pid),
                     ("bare", bare_url + path, script, bare_pid)]
            if name.startswith("hit"):
                sides.append(("nginx", f"{ng_url}/{path.rsplit('/', 1)[1]}", None, ng_pid))
            got = compare(sides, rounds, duration)
            dm, br = got["daemon"], got["bare"]
            daemon_series[name] = dm
            ng = got.get("nginx")
            ng_cols = (f"{ng.rps:,.0f} | {ng.cpu_us:.1f} | **{dm.rps / ng.rps:.2f}x**"
                       if ng is not None else "— | — | —")
            rows.append(f"| {name} | {dm.rps:,.0f} | {dm.cpu_us:.1f} | {br.rps:,.0f} | "
                        f"{br.cpu_us:.1f} | **{dm.cpu_us / br.cpu_us:.2f}x** | {ng_cols} |")
            print(f"  {name}: daemon {fmt_side(dm)}; bare {fmt_side(br)}"
                  + (f"; nginx {fmt_side(ng)}" if ng is not None else ""), flush=True)
    return daemon_series


def part_large(d: Daemon, rounds: int, duration: float, rows: list[str]) -> None:
    with nginx(d.cache_dir, workers=1) as (ng_url, ng_pid):
        rows.append("| hit (one shard, c=32) | daemon req/s | MB/s | p50 / p99 ms "
                    "| nginx req/s | MB/s | p50 / p99 ms | **req/s vs nginx** |")
        rows.append("|---|---|---|---|---|---|---|---|")
        for size in ("1MiB", "16MiB"):
            got = compare([("daemon", f"{d.url}/v1/objects/hit-{size}", None, d.pid),
                           ("nginx", f"{ng_url}/hit-{size}", None, ng_pid)], rounds, duration)
            dm, ng = got["daemon"], got["nginx"]
            rows.append(f"| {size} | {dm.rps:,.0f} | {dm.mbps:,.0f} | {dm.p50:.2f} / "
                        f"{dm.p99:.2f} | {ng.rps:,.0f} | {ng.mbps:,.0f} | {ng.p50:.2f} / "
                        f"{ng.p99:.2f} | **{dm.rps / ng.rps:.2f}x** |")
            print(f"  {size}: daemon {fmt_side(dm)}; nginx {fmt_side(ng)}", flush=True)


def part_shards(one: Daemon, two: Daemon, rounds: int, duration: float,
                rows: list[str]) -> None:
    paths = route_paths(one.topic)
    paths["hit 1MiB"] = ("/v1/objects/hit-1MiB", None)
    del paths["hit 64KiB"]
    paths.update(spread_paths(one.topic))
    rows.append("| route (c=32) | 1 shard req/s | 1 shard CPU µs/req | 2 shards req/s "
                "| 2 shards CPU µs/req | **2 vs 1** |")
    rows.append("|---|---|---|---|---|---|")
    for name, (path, script) in paths.items():
        p2 = path.replace(one.topic, two.topic)
        s2 = script.replace(one.topic, two.topic) if script else None
        got = compare([("1", one.url + path, script, one.pid), ("2", two.url + p2, s2, two.pid)],
                      rounds, duration)
        a, b = got["1"], got["2"]
        rows.append(f"| {name} | {a.rps:,.0f} | {a.cpu_us:.1f} | {b.rps:,.0f} | {b.cpu_us:.1f} "
                    f"| **{b.rps / a.rps:.2f}x** |")
        print(f"  {name}: 1 shard {fmt_side(a)}; 2 shards {fmt_side(b)}", flush=True)
    # What this machine allows: nginx with 2 workers against 1, the same files, the same wrk.
    with nginx(one.cache_dir, workers=1) as (n1_url, n1_pid), \
            nginx(one.cache_dir, workers=2) as (n2_url, n2_pid):
        for size in ("4KiB", "1MiB"):
            got = compare([("1", f"{n1_url}/hit-{size}", None, n1_pid),
                           ("2", f"{n2_url}/hit-{size}", None, n2_pid)], rounds, duration)
            a, b = got["1"], got["2"]
            rows.append(f"| reference: nginx, hit {size}, 2 workers vs 1 | {a.rps:,.0f} | "
                        f"{a.cpu_us:.1f} | {b.rps:,.0f} | {b.cpu_us:.1f} | "
                        f"**{b.rps / a.rps:.2f}x** |")
            print(f"  nginx {size}: 1 worker {fmt_side(a)}; 2 workers {fmt_side(b)}",
                  flush=True)


async def part_kv(work: Path, duration: float, rounds: int, rows: list[str],
                  http_rps: float | None) -> None:
    from kv import run_load, slatedb

    from cachedaemon.cache.service import CacheService
    from cachedaemon.metastore.domain import DomainConfig
    from cachedaemon.metastore.service import DomainService
    from cachedaemon.remote.local import LocalObjectStore

    async def load(put: Callable[[bytes, bytes], Awaitable[object]]) -> None:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await put(kv_key(i), KV_VALUE)

        await asyncio.gather(*(one(i) for i in range(KV_KEYS)))

    async def rate(get: Callable[[bytes], Awaitable[bytes | None]]) -> float:
        import random

        async def op(i: int) -> None:
            if await get(kv_key(random.randrange(KV_KEYS))) is None:
                raise RuntimeError("a loaded key is missing")

        n, secs, _ = await run_load(op, 64, duration)
        return n / secs

    ours: list[float] = []
    slate: list[float] = []
    (work / "kv-bucket").mkdir()
    store = LocalObjectStore(work / "kv-bucket")
    cache = await CacheService.open_single(work / "kv-cache")
    service = DomainService(0, 1, store, cache, DomainConfig(data_dir=work / "kv-data",
                                                             node="bench"))
    await service.start()
    try:
        await load(lambda k, v: service.put("bench", k, v))
        await service.flush("bench")
        try:
            slate_ctx = slatedb("file:///", str(work / "slatedb").lstrip("/"))
            s = await slate_ctx.__aenter__()
        except ImportError:
            s = None
            print("  slatedb is not installed (pip install -e '.[bench]'): ours only")
        try:
            if s is not None:
                await load(s.put)
                await s.flush()
            for rnd in range(rounds):
                order: list[tuple[list[float], Callable[[bytes], Awaitable[bytes | None]]]] = [
                    (ours, lambda k: service.get("bench", k))]
                if s is not None:
                    order.append((slate, s.get))
                if rnd % 2:
                    order.reverse()
                for acc, fn in order:
                    acc.append(await rate(fn))
        finally:
            if s is not None:
                await slate_ctx.__aexit__(None, None, None)
    finally:
        await service.stop()
        await cache.stop()
    rows.append("| kv point get, 64 callers | ops/s | vs slatedb in-process |")
    rows.append("|---|---|---|")
    sl = statistics.median(slate) if slate else None

    def vs(x: float) -> str:
        return f"**{x / sl:.2f}x**" if sl else "—"

    rows.append(f"| ours in-process | {statistics.median(ours):,.0f} | "
                f"{vs(statistics.median(ours))} |")
    if sl:
        rows.append(f"| slatedb in-process | {sl:,.0f} | 1.00x |")
    if http_rps is not None:
        rows.append(f"| ours over HTTP (wrk c=32, part cost) | {http_rps:,.0f} | {vs(http_rps)} |")


async def part_remote(d: Daemon, endpoint: str, bucket: str, count: int, rounds: int,
                      rows: list[str]) -> None:
    import aiohttp
    from aiobotocore.session import get_session

    from cachedaemon.remote.s3 import client_config, client_kwargs

    payloads = [os.urandom(MiB) for _ in range(8)]
    kwargs = client_kwargs(endpoint, "us-east-1", client_config(max_pool_connections=64))
    puts: dict[str, list[Timed]] = {"daemon": [], "direct": []}
    gets: dict[str, list[Timed]] = {"daemon": [], "direct": []}
    async with get_session().create_client("s3", **kwargs) as s3, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300),
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

        for rnd in range(rounds):
            tag = f"r{rnd}-{uuid.uuid4().hex[:6]}"
            order = [("daemon", daemon_put), ("direct", direct_put)]
            for side, fn in (order if rnd % 2 == 0 else order[::-1]):
                puts[side].append(await timed_requests(
                    count, 8, MiB, lambda i, f=fn, t=f"{tag}-{side}": f(i, t)))
            for i in range(count):  # the daemon's PUTs cached its copies: drop them
                async with http.delete(f"{d.url}/v1/cache/objects/{tag}-daemon/{i}") as r:
                    assert r.status == 204
            order = [("daemon", daemon_get), ("direct", direct_get)]
            for side, fn in (order if rnd % 2 == 0 else order[::-1]):
                gets[side].append(await timed_requests(
                    count, 8, MiB, lambda i, f=fn, t=f"{tag}-{side}": f(i, t)))
    rows.append("| 1 MiB, concurrency 8 | daemon req/s | MB/s | p50 / p99 ms | aiobotocore "
                "req/s | MB/s | p50 / p99 ms | **ratio** |")
    rows.append("|---|---|---|---|---|---|---|---|")
    for name, acc in (("PUT", puts), ("miss GET", gets)):
        o, ref = median_of(acc["daemon"]), median_of(acc["direct"])
        rows.append(f"| {name} | {o.rps:,.0f} | {o.mbps:,.1f} | {o.p50_ms:.1f} / {o.p99_ms:.1f} "
                    f"| {ref.rps:,.0f} | {ref.mbps:,.1f} | {ref.p50_ms:.1f} / {ref.p99_ms:.1f} "
                    f"| **{o.rps / ref.rps:.2f}x** |")


def part_mrc_wrk(on: Daemon, off: Daemon, rounds: int, duration: float, rows: list[str]
                 ) -> None:
    path = "/v1/objects/hit-4KiB"
    got = compare([("on", on.url + path, None, on.pid), ("off", off.url + path, None, off.pid)],
                  rounds, duration)
    a, b = got["on"], got["off"]
    rows.append("| 4 KiB hit, one shard, c=32 | req/s | CPU µs/req | p99 ms |")
    rows.append("|---|---|---|---|")
    rows.append(f"| curve on (rate 0.01) | {a.rps:,.0f} | {a.cpu_us:.2f} | {a.p99:.2f} |")
    rows.append(f"| curve off (rate 0) | {b.rps:,.0f} | {b.cpu_us:.2f} | {b.p99:.2f} |")
    rows.append(f"| **on vs off** | **{a.rps / b.rps:.3f}x** | **{a.cpu_us / b.cpu_us:.3f}x** "
                "| |")
    print(f"  on {fmt_side(a)}; off {fmt_side(b)}", flush=True)


async def part_mrc_inprocess(work: Path, rounds: int, rows: list[str]) -> None:
    """The 4 KiB hit handler called directly, curve on and off, alternating rounds."""
    import time as _time

    import cachedaemon.server.handlers  # noqa: F401  (registers the routes)
    from cachedaemon.config import load_settings
    from cachedaemon.core.smp import Smp
    from cachedaemon.server.fdlimit import plan
    from cachedaemon.server.http import Request
    from cachedaemon.server.shard import Shard

    headers = {"host": "127.0.0.1", "user-agent": "bench"}

    async def open_shard(tag: str, rate: str) -> Shard:
        import socket

        data = work / f"mrc-{tag}"
        settings = load_settings(None, {}, {
            "storage.data_dir": str(data), "cache.max_bytes": "1GiB", "server.shards": "1",
            "remote.url": f"file://{data / 'bucket'}", "cache.mrc_sample_rate": rate,
            "cache.hotset_interval": "0"})
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        shard = Shard(settings, Smp.single(), sock, 1000, plan(settings, shards_per_process=1))
        await shard.open()
        await shard.start_services()
        shard.set_state(True, False)
        app = shard.ctx.app  # type: ignore[union-attr]
        body = os.urandom(4096)
        r = await app(Request.forwarded("PUT", "/v1/objects/hit-4KiB",
                                        {**headers, "content-length": "4096"}, body,
                                        "127.0.0.1"))
        assert r.status == 201, r.status
        return shard

    shards = {"on": await open_shard("on", "0.01"), "off": await open_shard("off", "0")}
    n = 20_000
    per: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for rnd in range(max(rounds, 3) * 2):
            order = ["on", "off"] if rnd % 2 == 0 else ["off", "on"]
            for name in order:
                app = shards[name].ctx.app  # type: ignore[union-attr]
                t0 = _time.process_time()
                for _ in range(n):
                    resp = await app(Request.forwarded("GET", "/v1/objects/hit-4KiB", headers,
                                                       b"", "127.0.0.1"))
                    assert resp.status == 200
                per[name].append((_time.process_time() - t0) / n * 1e6)
    finally:
        for shard in shards.values():
            await shard.close()
    on, off = statistics.median(per["on"]), statistics.median(per["off"])
    rows.append("")
    rows.append("| 4 KiB hit handler, in-process | CPU µs/request (median of rounds) |")
    rows.append("|---|---|")
    rows.append(f"| curve on (rate 0.01) | {on:.2f} |")
    rows.append(f"| curve off (rate 0) | {off:.2f} |")
    rows.append(f"| **on vs off** | **{on / off:.3f}x** |")
    print(f"  in-process: on {on:.2f} µs, off {off:.2f} µs ({on / off:.3f}x)", flush=True)


# --- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def daemon(work: Path, endpoint: str, bucket: str, shards: int, *extra: str) -> Iterator[Daemon]:
    from tests.support.daemon import start_daemon

    with start_daemon(work, "--cache-max-bytes", "4GiB", "--remote", f"s3://{bucket}",
                      "--s3-endpoint", endpoint, *extra, shards=shards) as d:
        assert d.proc is not None
        dm = Daemon(d.url, d.proc.pid, work / "cache")
        dm.topic = asyncio.run(populate(d.url, work))
        yield dm


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds per comparison (the median of each side counts)")
    ap.add_argument("--quick", action="store_true", help="2 s runs, 2 rounds, fewer requests")
    ap.add_argument("--parts", default="cost,large,shards,kv,remote")
    ap.add_argument("--shards-arg", action="append", default=[],
                    help="a flag for the shards part's two-shard daemon (repeat; e.g. "
                         "--shards-arg=--metastore-process --shards-arg=shards)")
    ap.add_argument("--bare-server", nargs=2, metavar=("PORT", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1])
        return 0
    duration = 2.0 if args.quick else args.duration
    rounds = 2 if args.quick else args.rounds
    count = 48 if args.quick else 128
    parts = set(args.parts.split(","))
    tools_problem = ensure_tools()
    if tools_problem is not None:
        parts -= {"cost", "large", "shards"}
    sections: list[tuple[str, list[str]]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    try:
        with moto() as endpoint, contextlib.ExitStack() as stack:
            import botocore.session

            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            botocore.session.get_session().create_client(
                "s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
            one = stack.enter_context(daemon(work / "one", endpoint, bucket, 1))
            kv_http: float | None = None
            if "cost" in parts:
                print("cost: each hot route, one shard, beside the bare handler and nginx")
                rows: list[str] = []
                kv_http = part_cost(one, work, rounds, duration, rows)["kv GET"].rps
                sections.append(("Per-route cost (one shard)", rows))
            if "large" in parts:
                print("large: 1 MiB and 16 MiB hits against nginx")
                rows = []
                part_large(one, rounds, duration, rows)
                sections.append(("Large hits", rows))
            if "shards" in parts:
                print("shards: --shards 2 against --shards 1; two-shard daemon flags: "
                      f"{' '.join(args.shards_arg) or 'none'}")
                # The two daemons need buckets of their own (one daemon per bucket).
                bucket2 = f"bench-{uuid.uuid4().hex[:12]}"
                botocore.session.get_session().create_client(
                    "s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                        Bucket=bucket2)
                two = stack.enter_context(daemon(work / "two", endpoint, bucket2, 2,
                                                 *args.shards_arg))
                rows = []
                part_shards(one, two, rounds, duration, rows)
                sections.append(("Two shards against one", rows))
            if "kv" in parts:
                print("kv: in-process point gets, ours and slatedb")
                rows = []
                asyncio.run(part_kv(work, duration, rounds, rows, kv_http))
                sections.append(("kv point gets", rows))
            if "mrc" in parts:
                print("mrc: 4 KiB hits with the miss-ratio curve on and off")
                rows = []
                if tools_problem is None:
                    bucket3, bucket4 = (f"bench-{uuid.uuid4().hex[:12]}" for _ in range(2))
                    for b in (bucket3, bucket4):
                        botocore.session.get_session().create_client(
                            "s3", endpoint_url=endpoint, region_name="us-east-1"
                        ).create_bucket(Bucket=b)
                    on = stack.enter_context(daemon(work / "mrc-on", endpoint, bucket3, 1,
                                                    "--cache-mrc-sample-rate", "0.01"))
                    off = stack.enter_context(daemon(work / "mrc-off", endpoint, bucket4, 1,
                                                     "--cache-mrc-sample-rate", "0"))
                    part_mrc_wrk(on, off, rounds, duration, rows)
                import uvloop

                uvloop.run(part_mrc_inprocess(work, rounds, rows))
                sections.append(("The miss-ratio curve's cost on hits", rows))
            if "remote" in parts:
                print("remote: misses and PUTs against aiobotocore straight to moto")
                rows = []
                asyncio.run(part_remote(one, endpoint, bucket, count, rounds, rows))
                sections.append(("Misses and PUTs", rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncachedaemon serving benchmark: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end; wrk -t1 -c{CONNECTIONS}, "
          f"{max(1, round(duration))} s runs, {rounds} alternating rounds, medians")
    for title, rows in sections:
        print(f"\n### {title}\n")
        print("\n".join(rows))
    if tools_problem is not None:
        print(f"\nskipped the wrk parts (cost, large, shards): {tools_problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
