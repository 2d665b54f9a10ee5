"""Benchmark: where a request's CPU goes, route by route, before and after — the breakdown of
docs/performance.md. One command:

    .venv-test/bin/python bench/breakdown.py [--before 06eeb59] [--duration 5]

Two daemons run side by side, one shard each with a ``file://`` bucket: this checkout, and the
code of ``--before`` (default: the first landing, on aiohttp), extracted with ``git archive``
into a temporary directory. Each gets the data of ``bench/serving.py`` (hit objects cached,
10,000 kv keys in SSTs, an L1 domain). For each hot route, ``wrk -t1 -c32`` loads one daemon
for ``--duration`` seconds while ``py-spy record`` samples it (non-blocking, 250 Hz); the CPU
the daemon spent (``/proc``) divided by the requests gives CPU µs/req, and each sample's
innermost Python frame puts it in a layer (HTTP server, event loop, routing and handlers,
cache, metastore, metrics and logging, …), so a layer's share of the samples times the CPU per
request is its microseconds per request. Frames of C calls count where Python called them
(``os.pread`` in a handler counts as the handler's). Profiles are not kept.

``py-spy`` is in the ``bench`` extra; wrk is installed with apt-get when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serving import populate, route_paths
from support import ensure_tools, free_port, wait_http, wrk

ROOT = Path(__file__).resolve().parents[1]
FIRST_LANDING = "06eeb59"

#: (layer, substrings of a frame's file name as py-spy prints it), first match wins; matched
#: against the innermost frame of each sample. uvloop's loop is C: its samples end in
#: ``Runner.run`` (asyncio/runners.py), so they count as the event loop.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("HTTP server: aiohttp (+multidict, yarl)", ("aiohttp/", "multidict/", "yarl/")),
    ("HTTP server: ours (uvloop protocol, httptools)", ("cachedaemon/server/http",
                                                        "httptools/")),
    ("event loop, tasks, selectors", ("asyncio/", "uvloop/", "selectors.py")),
    ("metrics, access log, logging", ("prometheus_client", "cachedaemon/server/metrics",
                                      "cachedaemon/server/access", "/logging/")),
    ("cache (lookup, touch, accounting)", ("cachedaemon/cache/",)),
    ("metastore (LSM, L1)", ("cachedaemon/lsm/", "cachedaemon/metastore/")),
    ("routes, handlers, headers, files", ("cachedaemon/",)),
    ("other libraries, the standard library", (".py",)),
]
OTHER = "other (native frames)"


def layer_of(frame: str) -> str:
    for name, needles in LAYERS:
        if any(n in frame for n in needles):
            return name
    return OTHER


def checkout(rev: str, into: Path) -> Path:
    """The tree of ``rev``, extracted with git archive."""
    tree = into / f"tree-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start(tree: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEDAEMON_")}
    env["PYTHONPATH"] = str(tree)
    (work / "bucket").mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachedaemon", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(work / "data"), "--shards", "1", "--cache-max-bytes", "4GiB",
         "--remote", f"file://{work / 'bucket'}"],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz")
    return proc, url


def sample(pid: int, url: str, path: str, script: str | None, duration: float,
           work: Path) -> tuple[float, float, collections.Counter[str]]:
    """(req/s, CPU µs/req, samples per layer) of one wrk run under py-spy."""
    out = work / "spy.txt"
    spy = subprocess.Popen(
        [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
         "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw",
         "--output", str(out), "--duration", str(int(duration) + 1)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        load = wrk(url + path, duration, 32, script=script, pid=pid)
    finally:
        spy.wait(60)
    layers: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        layers[layer_of(leaf)] += int(count)
    out.unlink()
    assert load.cpu_us is not None
    return load.rps, load.cpu_us, layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default=FIRST_LANDING, help="the revision to compare with")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per route and side")
    ap.add_argument("--routes", default="GET /healthz,hit 4KiB,hit 64KiB,kv GET,L1 get_first_ge")
    args = ap.parse_args()
    if (missing := ensure_tools()) is not None:
        print(f"skipped: {missing}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="cachedaemon-breakdown-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sides = []
        for name, tree in ((f"before ({args.before})", checkout(args.before, work)),
                           ("now", ROOT)):
            d = work / name.split()[0]
            proc, url = start(tree, d)
            procs.append(proc)
            try:
                topic: str | None = asyncio.run(populate(url, d))
            except Exception as exc:  # L1 is populated last: the hits and kv keys are there
                print(f"{name}: no L1 rows ({type(exc).__name__}: {exc})")
                topic = None
            sides.append((name, proc.pid, url, topic, d))
        wanted = args.routes.split(",")
        for route in wanted:
            print(f"\n### {route} (one shard, wrk -t1 -c32, {args.duration:g} s, py-spy 250 Hz)\n")
            results = []
            for name, pid, url, topic, d in sides:
                if topic is None and route.startswith("L1"):
                    continue
                path, script = route_paths(topic or "")[route]
                results.append((name, *sample(pid, url, path, script, args.duration, d)))
            print("| layer | " + " | ".join(f"{n}: µs/req" for n, *_ in results) + " |")
            print("|---|" + "---|" * len(results))
            names = [n for n, _ in LAYERS] + [OTHER]
            for layer in names:
                cells = []
                for _, _, cpu, layers in results:
                    total = sum(layers.values()) or 1
                    cells.append(f"{cpu * layers[layer] / total:.1f}")
                if any(c != "0.0" for c in cells):
                    print(f"| {layer} | " + " | ".join(cells) + " |")
            print("| **CPU µs/req (total)** | " + " | ".join(
                f"**{cpu:.1f}**" for _, _, cpu, _ in results) + " |")
            print("| req/s | " + " | ".join(f"{rps:,.0f}" for _, rps, _, _ in results) + " |")
        print(f"\nload average {os.getloadavg()[0]:.2f} (2 cores)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
