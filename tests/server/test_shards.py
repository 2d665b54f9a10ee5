"""Shards as processes, end to end (issue 14): a worker killed during writes is restarted and
loses nothing acknowledged; a killed shard 0 leaves no worker behind and the daemon starts
again cleanly; SIGTERM stops every shard; a death loop stops the daemon with exit 1. With more
than one shard the metastore's process is a worker too (its own tests:
``test_metastore_process.py``)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from tests.server.conftest import part_files
from tests.support.daemon import start_daemon
from tests.support.http import fetch


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's worker shard processes (its children running the worker module)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == daemon_pid and b"cachedaemon.server.worker" in cmd:
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_killed_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=2) as d:
        assert d.proc is not None
        # The serving worker (the metastore's process runs at a lower priority).
        workers = [p for p in worker_pids(d.proc.pid) if os.getpriority(os.PRIO_PROCESS, p) == 0]
        assert len(workers) == 1

        async def scenario() -> tuple[dict[str, bytes], dict[str, bytes]]:
            acked_objects: dict[str, bytes] = {}
            acked_kv: dict[str, bytes] = {}
            stop = asyncio.Event()

            async def writer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    body = os.urandom(50_000 + n)
                    key = f"w{n}/{i}"
                    try:
                        r = await fetch("PUT", f"{d.url}/v1/objects/{key}", data=body, timeout=10)
                        if r.status == 201:
                            acked_objects[key] = body
                        value = b"v%d-%d" % (n, i)
                        kv_key = f"dom{n % 3}/k{n}-{i}"
                        r = await fetch("PUT", f"{d.url}/v1/kv/{kv_key}", data=value, timeout=10)
                        if r.status == 204:
                            acked_kv[kv_key] = value
                    except (aiohttp.ClientError, TimeoutError):
                        pass  # the connection was on the killed shard: not acknowledged

            tasks = [asyncio.create_task(writer(n)) for n in range(6)]
            await asyncio.sleep(1.0)
            os.kill(workers[0], signal.SIGKILL)
            t0 = time.monotonic()
            while True:  # restarted within 2 s
                now = worker_pids(d.proc.pid)  # type: ignore[union-attr]
                if len(now) == 2 and workers[0] not in now:
                    break
                assert time.monotonic() - t0 < 2.0, "the worker was not restarted in 2 s"
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*tasks)
            return acked_objects, acked_kv

        objects, kv = asyncio.run(scenario())
        assert len(objects) > 10 and len(kv) > 10

        async def check() -> None:
            for key, body in objects.items():
                r = await fetch("GET", f"{d.url}/v1/objects/{key}")
                assert r.status == 200 and r.body == body, key
            for key, value in kv.items():
                r = await fetch("GET", f"{d.url}/v1/kv/{key}")
                assert r.status == 200 and r.body == value, key
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
        asyncio.run(check())
        for _ in range(50):
            if not part_files(tmp_path / "d"):
                break
            time.sleep(0.05)
        assert not part_files(tmp_path / "d")
        assert "shard 1 (process" in d.logs() and "died with signal SIGKILL" in d.logs()


def test_killing_shard_0_leaves_no_worker_and_the_daemon_starts_again(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with start_daemon(data, shards=3) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 3  # two serving shards and the metastore's process
        r = asyncio.run(fetch("PUT", f"{d.url}/v1/kv/keep/k", data=b"kept"))
        assert r.status == 204
        d.kill()  # SIGKILL shard 0
    deadline = time.monotonic() + 5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), "workers outlived shard 0"
    with start_daemon(data, shards=3) as d:
        r = asyncio.run(fetch("GET", f"{d.url}/v1/kv/keep/k"))
        assert r.status == 200 and r.body == b"kept"


def test_sigterm_stops_every_shard(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=3) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 3  # two serving shards and the metastore's process
        assert d.signal(signal.SIGTERM) == 0
    assert not any(alive(p) for p in workers)


def test_a_death_loop_stops_the_daemon_with_exit_1(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=2) as d:
        assert d.proc is not None
        for _ in range(20):
            pids = worker_pids(d.proc.pid)
            if d.proc.poll() is not None:
                break
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        assert d.wait(30) == 1
        assert "shard deaths within" in d.logs()
