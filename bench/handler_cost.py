"""Benchmark: what our handlers cost per request, without sockets — the part of a request's
CPU that is ours rather than the HTTP server's. One command:

    .venv-test/bin/python bench/handler_cost.py [--requests 20000] [--profile ROUTE]

One shard is opened in this process (a ``file://`` bucket in a temporary directory) and its
request handler (``/v1``, and the S3 endpoint's) is called directly with parsed requests, as
the connection would call it. Routes: ``/healthz``, a 4 KiB and a 64 KiB cache hit through
``/v1`` and through S3 (``GetObject``, no credentials), kv GET of random keys of 10,000 flushed
to SSTs, L1 ``get_first_ge`` at random offsets of 100 partitions. The baseline, in the same
run: a bare handler that returns a prebuilt ``Response`` of the same size (the floor any route
pays for being called and answering). ``--profile ROUTE`` also prints cProfile's top functions
for that route (the figures of docs/performance.md's breakdowns come from it; flame graphs and
profiles stay out of the repository).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# ruff: noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgspec
from l1 import Layout, terms_of

import cachedaemon.server.handlers  # noqa: F401  (registers the routes)
from cachedaemon.config import load_settings
from cachedaemon.core.smp import Smp
from cachedaemon.server.fdlimit import plan
from cachedaemon.server.http import Request, Response
from cachedaemon.server.shard import Shard

KV_KEYS = 10_000
HEADERS = {"host": "127.0.0.1", "user-agent": "bench"}


def req(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> Request:
    return Request.forwarded(method, path, {**HEADERS, **(headers or {})}, body, "127.0.0.1")


async def call_ok(app: Any, r: Request, *ok: int) -> Any:
    resp = await app(r)
    assert resp.status in ok, (r.method, r.path, resp.status, getattr(resp, "body", b"")[:200])
    return resp


async def populate(app: Any) -> str:
    for name, size in (("4KiB", 4096), ("64KiB", 65536)):
        await call_ok(app, req("PUT", f"/v1/objects/hit-{name}", os.urandom(size),
                               {"content-length": str(size)}), 201)
    for start in range(0, KV_KEYS, 1000):
        ops = [{"op": "put", "key": base64.b64encode(b"key-%010d" % i).decode(),
                "value": base64.b64encode(b"v" * 100).decode()}
               for i in range(start, start + 1000)]
        await call_ok(app, req("POST", "/v1/domains/bench/batch", json.dumps({"ops": ops})
                               .encode(), {"content-type": "application/json"}), 204)
    await call_ok(app, req("POST", "/v1/domains/bench/flush"), 204)
    layout = Layout(100)
    for _ in range(20):
        objs = [layout.new_object() for _ in range(100)]
        await call_ok(app, req("POST", "/v1/l1/bench/objects/preregister",
                               msgspec.json.encode({"oids": [str(o.oid) for o in objs]}),
                               {"content-type": "application/json"}), 200)
        await call_ok(app, req("POST", "/v1/l1/bench/objects/add",
                               msgspec.json.encode({"objects": objs, "terms": terms_of(objs)}),
                               {"content-type": "application/json"}), 200)
    return str(layout.tidps[0].topic_id)


async def measure(n: int, make: Callable[[int], Request], app: Callable[[Request], Awaitable[Any]]
                  ) -> float:
    for i in range(min(n, 2000)):
        await app(make(i))
    t0 = time.perf_counter()
    for i in range(n):
        await app(make(i))
    return (time.perf_counter() - t0) / n * 1e6


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-handler-"))
    try:
        s = load_settings(None, {}, {"storage.data_dir": str(work / "data"),
                                     "server.shards": "1", "server.s3_listen": "127.0.0.1:0",
                                     "remote.url": f"file://{work / 'bucket'}"})
        socks = []
        for _ in range(2):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            sock.setblocking(False)
            socks.append(sock)
        shard = Shard(s, Smp.single(), socks[0], 100, plan(s), s3_sock=socks[1])
        await shard.open()
        await shard.start_services()
        shard.set_state(True, False)
        assert shard.ctx is not None and shard.s3_server is not None
        app, s3app = shard.ctx.app, shard.s3_server.app
        topic = await populate(app)
        rnd = random.Random(7)
        kv = [f"/v1/kv/bench/key-{rnd.randrange(KV_KEYS):010d}" for _ in range(4096)]
        l1 = [f"/v1/l1/bench/partitions/{topic}/{rnd.randrange(100)}/first"
              f"?offset={rnd.randrange(16000)}" for _ in range(4096)]
        bucket = s.s3.bucket or "cachedaemon"
        routes: dict[str, tuple[Callable[[int], Request], Any, int]] = {
            "healthz": (lambda i: req("GET", "/healthz"), app, 16),
            "hit4k": (lambda i: req("GET", "/v1/objects/hit-4KiB"), app, 4096),
            "hit64k": (lambda i: req("GET", "/v1/objects/hit-64KiB"), app, 65536),
            "s3hit4k": (lambda i: req("GET", f"/{bucket}/hit-4KiB"), s3app, 4096),
            "kv": (lambda i: req("GET", kv[i & 4095]), app, 100),
            "l1": (lambda i: req("GET", l1[i & 4095]), app, 200),
        }
        for make, handler, _ in routes.values():
            await call_ok(handler, make(0), 200)
        print(f"handler cost per request, {args.requests:,} calls each, python "
              f"{sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
        print("| route | handler µs | bare handler µs (same body size) | ratio |")
        print("|---|---|---|---|")
        for name, (make, handler, size) in routes.items():
            body = b"x" * size

            async def bare(r: Request, body: bytes = body) -> Response:
                return Response(body=body, headers={"Content-Type": "application/octet-stream"})

            ours = await measure(args.requests, make, handler)
            floor = await measure(args.requests, make, bare)
            print(f"| {name} | {ours:.1f} | {floor:.1f} | {ours / floor:.1f}x |", flush=True)
        if args.profile:
            make, handler, _ = routes[args.profile]
            prof = cProfile.Profile()
            prof.enable()
            for i in range(args.requests):
                await handler(make(i))
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
        await shard.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--profile", choices=["healthz", "hit4k", "hit64k", "s3hit4k", "kv", "l1"])
    ap.add_argument("--top", type=int, default=25)
    import uvloop

    uvloop.run(main(ap.parse_args()))
