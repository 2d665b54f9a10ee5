"""The metastore's own process (issue 18, docs/shards.md "The metastore's process").

With more than one shard, every metastore domain runs in a process of its own, in the kernel's
idle scheduling policy (``metastore.cpu_policy``; or at a lower nice value, ``metastore.nice``)
and a lower I/O class (``metastore.io_class``) than the shards that serve objects, so that
flushes and compactions take the machine's CPU and disk only when object reads and writes leave
them. These tests look at the real processes: their policy, niceness and I/O class as the
kernel reports them, and which of them hold the domains' write-ahead logs open; a killed
metastore process is restarted at its priority and loses nothing acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp

from cachedaemon.core.priority import io_class_of
from tests.server.test_shards import worker_pids
from tests.support.daemon import start_daemon
from tests.support.http import fetch

DOMAINS = [f"dom{i}" for i in range(8)]


def nice_of(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def policy_of(tid: int) -> int:
    return os.sched_getscheduler(tid)


def wal_holders(pids: list[int]) -> set[int]:
    """The processes among ``pids`` with a write-ahead log segment open."""
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if "/wal/" in target and target.endswith(".log"):
                holders.add(pid)
    return holders


async def write_every_domain(url: str, tag: str) -> None:
    for name in DOMAINS:
        r = await fetch("PUT", f"{url}/v1/kv/{name}/k", data=tag.encode())
        assert r.status == 204, (name, r.status, r.body)


def test_domains_run_in_a_process_of_their_own_below_the_serving_shards(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=2) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 2, "one serving worker shard and the metastore's process"
        asyncio.run(write_every_domain(d.url, "v1"))
        everyone = [d.proc.pid, *workers]
        low = [pid for pid in everyone if nice_of(pid) == 10]
        assert len(low) == 1, {pid: nice_of(pid) for pid in everyone}
        metastore = low[0]
        assert io_class_of(metastore) == "idle"
        # SCHED_IDLE by default: a shard that wakes takes the CPU from it at once (a niced
        # process keeps it to the end of its slice: the reads' wake-ups waited behind it).
        assert policy_of(metastore) == os.SCHED_IDLE
        for pid in everyone:
            if pid != metastore:
                assert nice_of(pid) == 0 and io_class_of(pid) != "idle"
                for tid in os.listdir(f"/proc/{pid}/task"):
                    assert policy_of(int(tid)) == os.SCHED_OTHER, (pid, tid)
        # Every domain's log is open in the metastore's process, and in no serving shard.
        assert wal_holders(everyone) == {metastore}
        # Its threads (WAL syncs, SST I/O) run at its priority too.
        tids = os.listdir(f"/proc/{metastore}/task")
        assert len(tids) > 1, "the process's threads are checked too"
        for tid in tids:
            assert nice_of(int(tid)) == 10, tid
            assert policy_of(int(tid)) == os.SCHED_IDLE, tid
            assert io_class_of(int(tid)) == "idle", tid
        for name in DOMAINS:
            r = asyncio.run(fetch("GET", f"{d.url}/v1/kv/{name}/k"))
            assert r.status == 200 and r.body == b"v1"
        assert "metastore: a process of its own (shard 2" in d.logs()


def test_the_priority_is_configurable_and_the_process_can_be_left_out(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "a", "--metastore-nice", "5", "--metastore-io-class",
                      "best-effort", "--metastore-cpu-policy", "other", shards=2) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        asyncio.run(write_every_domain(d.url, "x"))
        holders = wal_holders([d.proc.pid, *workers])
        assert len(holders) == 1
        (metastore,) = holders
        assert nice_of(metastore) == 5 and io_class_of(metastore) == "best-effort"
        assert policy_of(metastore) == os.SCHED_OTHER
        assert "cpu policy other" in d.logs()
    with start_daemon(tmp_path / "b", "--metastore-process", "shards", shards=2) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 1
        asyncio.run(write_every_domain(d.url, "y"))
        everyone = [d.proc.pid, *workers]
        # Hashed over the two serving shards, as before: both hold logs, none is lowered.
        assert wal_holders(everyone) == set(everyone)
        assert all(nice_of(pid) == 0 for pid in everyone)
        assert all(policy_of(pid) == os.SCHED_OTHER for pid in everyone)
    # One serving shard is one process, unless the metastore's process is asked for.
    with start_daemon(tmp_path / "c", "--metastore-process", "own", shards=1) as d:
        assert d.proc is not None
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 1
        asyncio.run(write_every_domain(d.url, "z"))
        assert wal_holders([d.proc.pid, *workers]) == set(workers)
        assert nice_of(workers[0]) == 10 and nice_of(d.proc.pid) == 0
        r = asyncio.run(fetch("GET", f"{d.url}/v1/kv/{DOMAINS[0]}/k"))
        assert r.status == 200 and r.body == b"z"


def test_a_killed_metastore_process_is_restarted_and_loses_nothing_acknowledged(
        tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=2) as d:
        assert d.proc is not None
        asyncio.run(write_every_domain(d.url, "v0"))
        (metastore,) = wal_holders([d.proc.pid, *worker_pids(d.proc.pid)])

        async def scenario() -> dict[str, bytes]:
            acked: dict[str, bytes] = {}
            stop = asyncio.Event()

            async def writer(n: int) -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    key = f"{DOMAINS[n]}/k{n}-{i}"
                    value = b"v%d-%d" % (n, i)
                    try:
                        r = await fetch("PUT", f"{d.url}/v1/kv/{key}", data=value, timeout=10)
                    except (aiohttp.ClientError, TimeoutError):
                        continue  # not acknowledged
                    if r.status == 204:
                        acked[key] = value
                    else:  # while it restarts: a clear refusal, never a lie
                        assert r.status in (500, 502, 503), (r.status, r.body)
                        await asyncio.sleep(0.01)

            tasks = [asyncio.create_task(writer(n)) for n in range(4)]
            await asyncio.sleep(0.5)
            before = len(acked)
            os.kill(metastore, signal.SIGKILL)
            t0 = time.monotonic()
            while True:  # restarted within 2 s
                now = wal_holders([d.proc.pid, *worker_pids(d.proc.pid)])  # type: ignore[union-attr]
                if now and now != {metastore}:
                    break
                assert time.monotonic() - t0 < 5.0, "the metastore process was not restarted"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
            assert len(acked) > before, "no write was acknowledged after the restart"
            return acked

        acked = asyncio.run(scenario())
        (restarted,) = wal_holders([d.proc.pid, *worker_pids(d.proc.pid)])
        assert restarted != metastore
        assert nice_of(restarted) == 10 and io_class_of(restarted) == "idle"
        assert policy_of(restarted) == os.SCHED_IDLE

        async def check() -> None:
            for key, value in acked.items():
                r = await fetch("GET", f"{d.url}/v1/kv/{key}")
                assert r.status == 200 and r.body == value, key
        asyncio.run(check())
        assert "died with signal SIGKILL" in d.logs()
