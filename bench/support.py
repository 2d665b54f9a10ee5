"""Tools the benchmarks share: ports, waiting for a server, moto, nginx and wrk (installed from
Debian when missing), and the CPU time a process tree spent (``/proc``). Bench-only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def ensure_tools() -> str | None:
    """None if nginx and wrk are usable, else why not (installs them with apt-get if it can)."""
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


@contextlib.contextmanager
def nginx(root: Path, workers: int = 1) -> Iterator[tuple[str, int]]:
    """nginx serving ``root`` (sendfile on, no access log): (url, master pid)."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    (tmp / "nginx.conf").write_text(f"""
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
    proc = subprocess.Popen([binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", ok_statuses=(200, 403, 404))
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (a daemon's shards,
    nginx's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(rest[1])
        times[int(entry)] = (int(rest[11]) + int(rest[12])) / tick
    total = 0.0
    for p, t in times.items():
        q, hops = p, 0
        while q != pid and q in parents and hops < 32:
            q, hops = parents[q], hops + 1
        if q == pid:
            total += t
    return total


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Load:
    """One wrk run: throughput, latency, and (when a pid was given) CPU per request."""

    rps: float
    mbps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float | None = None


def wrk(url: str, duration: float, connections: int = 32, *, script: str | None = None,
        pid: int | None = None, threads: int = 1) -> Load:
    """Run wrk against ``url``; with ``pid``, also the CPU microseconds that process tree
    spent per request."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d",
           f"{max(1, round(duration))}s", "--latency", "--timeout", "10s"]
    lua = None
    if script is not None:
        fd, lua = tempfile.mkstemp(suffix=".lua")
        os.write(fd, script.encode())
        os.close(fd)
        cmd += ["-s", lua]
    cpu0 = tree_cpu_seconds(pid) if pid is not None else 0.0
    try:
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    finally:
        if lua is not None:
            os.unlink(lua)
    cpu = tree_cpu_seconds(pid) - cpu0 if pid is not None else None
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        print(f"  (wrk reported errors for {url}:)\n{out}", file=sys.stderr)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    assert tr is not None
    mult = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[tr.group(2)]
    lat = dict(re.findall(r"\s(50|99)%\s+([\d.]+\w+)", out))

    def ms(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
        assert m is not None
        return float(m.group(1)) * _UNIT[m.group(2)]

    cpu_us = cpu / requests * 1e6 if cpu is not None and requests else None
    return Load(rps, float(tr.group(1)) * mult / 1e6, ms(lat["50"]), ms(lat["99"]), requests,
                cpu_us)


@dataclass
class Timed:
    """Requests made from this process: throughput and latency."""

    rps: float
    mbps: float
    p50_ms: float
    p99_ms: float


async def timed_requests(n: int, concurrency: int, size: int,
                         one: Callable[[int], Awaitable[None]]) -> Timed:
    """``one(i)`` for i in range(n), ``concurrency`` at a time; ``size`` bytes each."""
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
    return Timed(n / elapsed, n * size / elapsed / 1e6, statistics.median(latencies) * 1000,
                 latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


def median_of(runs: Sequence[Load | Timed]) -> Timed:
    """The median of each figure over alternating rounds."""
    return Timed(*(statistics.median(getattr(r, f) for r in runs)
                   for f in ("rps", "mbps", "p50_ms", "p99_ms")))


def best(runs: Sequence[Load | Timed]) -> Load | Timed:
    return max(runs, key=lambda r: r.rps)


def row(name: str, ours: Load | Timed, ref: Load | Timed, ref_name: str) -> str:
    """A markdown table row: ours, the reference, and the req/s ratio."""
    return (f"| {name} | {ours.rps:,.0f} | {ours.mbps:,.1f} | {ours.p50_ms:.2f} / "
            f"{ours.p99_ms:.2f} | {ref_name}: {ref.rps:,.0f} | {ref.mbps:,.1f} | "
            f"{ref.p50_ms:.2f} / {ref.p99_ms:.2f} | **{ours.rps / ref.rps:.2f}x** |")
