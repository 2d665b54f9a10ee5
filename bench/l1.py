"""Benchmark: the L1 metastore — add_objects throughput and offset lookups — in process (over an
``lsm.Database`` on memory persistence) and over HTTP (the real daemon, a ``file://`` bucket,
durable writes through the domain's log, the typed :class:`~cachedaemon.client.l1.L1Client`).

    .venv/bin/python bench/l1.py                       # 1,000 partitions, 1,000,000 extents
    .venv/bin/python bench/l1.py --extents 200000 --no-http

Objects hold 8 extents each (of 8 different partitions, 100 offsets per extent, round robin over
the partitions, so every partition grows evenly); every add carries the 8 partitions' term
(term 1, which goes on) and adds objects preregistered beforehand, as the validation rules
require. Rows:

- ``preregister 1 id/call``: the writer's reservation of one object id, calls one after another
  (timed apart from the add it precedes);
- ``add_objects 1 obj/call``: one (preregistered) object with 8 extents per call, calls one
  after another;
- ``add_objects N obj/call`` (load): the bulk load to the target extent count, N objects per
  call (``--batch``), reported per object; each call's N ids are preregistered in one untimed
  call just before it;
- ``get_first_ge``: the extent holding a random offset of a random partition, one call at a
  time (latency) and ``--concurrency`` calls in flight (throughput);
- ``get_offsets``: start/next offsets of a random partition.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))

from cachedaemon.lsm import Database, Options  # noqa: E402
from cachedaemon.lsm.io.memory import memory_persistence  # noqa: E402
from cachedaemon.metastore.l1 import DatabaseRowStore, L1Metastore, TopicIdPartition  # noqa: E402
from cachedaemon.metastore.l1.types import ExtentSpec, NewObject, TermStart  # noqa: E402

EXTENTS_PER_OBJECT = 8
OFFSETS_PER_EXTENT = 100
EXTENT_BYTES = 4096


class Layout:
    """Hands out the next objects: each holds 8 extents of the next 8 partitions."""

    def __init__(self, partitions: int) -> None:
        topic = uuid.UUID(int=0xBE7C)
        self.tidps = [TopicIdPartition(topic, p) for p in range(partitions)]
        self.next = [0] * partitions
        self.cursor = 0

    def new_object(self) -> NewObject:
        extents = []
        for i in range(EXTENTS_PER_OBJECT):
            p = (self.cursor + i) % len(self.tidps)
            tidp = self.tidps[p]
            base = self.next[p]
            self.next[p] = base + OFFSETS_PER_EXTENT
            extents.append(ExtentSpec(topic_id=tidp.topic_id, partition=tidp.partition,
                                      base_offset=base, last_offset=base + OFFSETS_PER_EXTENT - 1,
                                      filepos=i * EXTENT_BYTES, len=EXTENT_BYTES,
                                      max_timestamp=base))
        self.cursor = (self.cursor + EXTENTS_PER_OBJECT) % len(self.tidps)
        size = EXTENTS_PER_OBJECT * EXTENT_BYTES
        return NewObject(oid=uuid.uuid4(), footer_pos=size, object_size=size + 64,
                         extents=extents)


def terms_of(objects: list[NewObject]) -> list[TermStart]:
    """Term 1 from the first added offset of every partition the objects hold."""
    first: dict[TopicIdPartition, int] = {}
    for o in objects:
        for e in o.extents:
            tidp = TopicIdPartition(e.topic_id, e.partition)
            first[tidp] = min(first.get(tidp, e.base_offset), e.base_offset)
    return [TermStart(topic_id=t.topic_id, partition=t.partition, term=1, start_offset=b)
            for t, b in first.items()]


class Api:
    """The operations the benchmark needs, in process or through the client."""

    def __init__(self, target: Any) -> None:
        self.t = target

    async def preregister(self, objects: list[NewObject]) -> None:
        await self.t.preregister_objects(oids=[o.oid for o in objects])

    async def add(self, objects: list[NewObject]) -> None:
        corrected = await self.t.add_objects(objects, terms_of(objects))
        assert not corrected, corrected

    async def first_ge(self, tidp: TopicIdPartition, offset: int) -> None:
        e = await self.t.get_first_ge(tidp, offset)
        assert e.base_offset <= offset <= e.last_offset

    async def offsets(self, tidp: TopicIdPartition) -> None:
        await self.t.get_offsets(tidp)


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


async def timed_serial(n: int, make: Callable[[int], Awaitable[None]]
                       ) -> tuple[float, list[float]]:
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        await make(i)
        lat.append(time.perf_counter() - s)
    return time.perf_counter() - t0, lat


async def timed_concurrent(n: int, concurrency: int, make: Callable[[int], Awaitable[None]]
                           ) -> float:
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


async def run_suite(label: str, api: Api, layout: Layout, args: argparse.Namespace,
                    extents: int, rows: list[tuple[str, ...]]) -> None:
    single = args.single
    pending = [layout.new_object() for _ in range(single)]
    elapsed, lat = await timed_serial(single, lambda i: api.preregister([pending[i]]))
    rows.append((label, "preregister 1 id/call", f"{single / elapsed:,.0f} ids/s", "",
                 f"{statistics.median(lat) * 1e3:.2f}", f"{pct(lat, 0.99) * 1e3:.2f}"))
    elapsed, lat = await timed_serial(single, lambda i: api.add([pending[i]]))
    rows.append((label, "add_objects 1 obj/call", f"{single / elapsed:,.0f} obj/s",
                 f"{single * EXTENTS_PER_OBJECT / elapsed:,.0f} ext/s",
                 f"{statistics.median(lat) * 1e3:.2f}", f"{pct(lat, 0.99) * 1e3:.2f}"))
    remaining = max(0, extents // EXTENTS_PER_OBJECT - single)
    calls = (remaining + args.batch - 1) // args.batch
    lat = []
    for c in range(calls):
        n = min(args.batch, remaining - c * args.batch)
        batch = [layout.new_object() for _ in range(n)]
        await api.preregister(batch)
        s = time.perf_counter()
        await api.add(batch)
        lat.append(time.perf_counter() - s)
        if args.progress and c % max(1, calls // 10) == 0:
            print(f"  {label}: loaded {(c + 1) * args.batch * EXTENTS_PER_OBJECT:,} extents",
                  file=sys.stderr)
    elapsed = sum(lat)
    if remaining:
        rows.append((label, f"add_objects {args.batch} obj/call (load)",
                     f"{remaining / elapsed:,.0f} obj/s",
                     f"{remaining * EXTENTS_PER_OBJECT / elapsed:,.0f} ext/s",
                     f"{statistics.median(lat) * 1e3:.2f}", f"{pct(lat, 0.99) * 1e3:.2f}"))
    total = sum(layout.next) // OFFSETS_PER_EXTENT
    rnd = random.Random(7)
    picks = [(rnd.choice(layout.tidps), 0) for _ in range(args.lookups)]
    picks = [(t, rnd.randrange(layout.next[t.partition])) for t, _ in picks]
    elapsed, lat = await timed_serial(len(picks), lambda i: api.first_ge(*picks[i]))
    rows.append((label, f"get_first_ge serial ({total:,} extents)",
                 f"{len(picks) / elapsed:,.0f} ops/s", "",
                 f"{statistics.median(lat) * 1e3:.3f}", f"{pct(lat, 0.99) * 1e3:.3f}"))
    elapsed = await timed_concurrent(len(picks), args.concurrency,
                                     lambda i: api.first_ge(*picks[i]))
    rows.append((label, f"get_first_ge x{args.concurrency} in flight",
                 f"{len(picks) / elapsed:,.0f} ops/s", "", "", ""))
    elapsed, lat = await timed_serial(len(picks), lambda i: api.offsets(picks[i][0]))
    rows.append((label, "get_offsets serial", f"{len(picks) / elapsed:,.0f} ops/s", "",
                 f"{statistics.median(lat) * 1e3:.3f}", f"{pct(lat, 0.99) * 1e3:.3f}"))


async def in_process(args: argparse.Namespace, rows: list[tuple[str, ...]]) -> None:
    db = await Database.open(Options(), memory_persistence())
    try:
        l1 = L1Metastore(DatabaseRowStore(db))
        await run_suite("in-process", Api(l1), Layout(args.partitions), args, args.extents, rows)
    finally:
        await db.close()


def start_daemon(tmp: Path, shards: int) -> tuple[subprocess.Popen[bytes], str]:
    """``cachedaemon serve`` on a free port with a file:// bucket under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEDAEMON_")}
    env["PYTHONPATH"] = str(_HERE.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachedaemon", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp / "data"), "--shards", str(shards),
         "--remote", f"file://{tmp / 'bucket'}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the daemon did not start")


async def over_http(args: argparse.Namespace, rows: list[tuple[str, ...]]) -> None:
    from cachedaemon.client import AsyncClient
    from cachedaemon.client.l1 import L1Client

    tmp = Path(tempfile.mkdtemp(prefix="bench-l1-"))
    proc, url = await asyncio.to_thread(start_daemon, tmp, args.shards)
    try:
        async with AsyncClient(url) as client:
            api = Api(L1Client(client, "bench"))
            await run_suite(f"http ({args.shards} shard)", api, Layout(args.partitions), args,
                            args.http_extents, rows)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--extents", type=int, default=1_000_000)
    ap.add_argument("--http-extents", type=int, default=None,
                    help="extents to load over HTTP (default: --extents)")
    ap.add_argument("--single", type=int, default=2000, help="add_objects calls of 1 object")
    ap.add_argument("--batch", type=int, default=64, help="objects per call in the bulk load")
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--no-http", dest="http", action="store_false")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.http_extents is None:
        args.http_extents = args.extents
    rows: list[tuple[str, ...]] = []
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(in_process(args, rows))
    if args.http:
        asyncio.run(over_http(args, rows))
    header = ("where", "operation", "throughput", "extents/s", "p50 ms", "p99 ms")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"L1 benchmark: {args.partitions:,} partitions, {EXTENTS_PER_OBJECT} extents/object, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
