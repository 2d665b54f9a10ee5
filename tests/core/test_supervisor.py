"""Worker shards as processes: started, linked, restarted after kill -9 within 2 s, a death loop
gives up, and workers never outlive shard 0."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.core.channel import ShardLinks
from cachedaemon.server import supervisor as sup
from cachedaemon.server.supervisor import Supervisor, WorkerSpec
from tests.support.daemon import daemon_env

ENTRY = "tests.support.fake_worker:run"


class Harness:
    def __init__(self, count: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="cd-links-")
        self.secret = secrets.token_bytes(32)
        self.links = ShardLinks(0, self.dir, self.secret)
        self.deaths: list[int] = []
        self.fatal: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sup = Supervisor(count, self.spec, lambda shard: {"http": self.sock},
                              on_death=self.deaths.append, on_fatal=self.fatal.append,
                              env=daemon_env())
        self.links.register("shards", self.sup)

    def spec(self, shard: int) -> WorkerSpec:
        return WorkerSpec(shard, self.sup.count, self.dir, self.secret.hex(), {}, entry=ENTRY)

    async def pid_of(self, shard: int) -> int:
        return int(await self.links.call(shard, "probe", "pid", []))


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(3)
    await h.links.listen()
    await h.sup.start()
    await h.sup.wait_joined(30)
    yield h
    for shard in range(1, h.sup.count):
        h.links.post(shard, "probe", "exit", [])
    await h.sup.stop(10)
    await h.links.close()
    h.sock.close()


async def test_workers_start_link_and_answer(harness: Harness) -> None:
    pids = harness.sup.pids
    assert set(pids) == {1, 2}
    for shard, pid in pids.items():
        assert await harness.pid_of(shard) == pid != os.getpid()


async def test_a_killed_worker_is_restarted_within_two_seconds(harness: Harness) -> None:
    old = harness.sup.pids[1]
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    while True:
        new = harness.sup.pids.get(1)
        if new is not None and new != old:
            break
        await asyncio.sleep(0.02)
    await harness.sup.wait_joined(10)
    assert time.monotonic() - t0 < 2.0
    assert harness.deaths == [1] and harness.sup.restarts == 1
    assert await harness.pid_of(1) == new  # linked again: calls reach the new process
    assert await harness.pid_of(2) == harness.sup.pids[2]  # the other shard kept serving


async def test_a_death_loop_gives_up(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sup, "DEATH_LOOP", 3)
    for _ in range(3):
        pid = harness.sup.pids[2]
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if harness.fatal or harness.sup.pids.get(2) != pid:
                break
            await asyncio.sleep(0.02)
        if harness.fatal:
            break
        await harness.sup.wait_joined(10)
    assert harness.fatal and "shard deaths" in harness.fatal[0]


def test_workers_never_outlive_shard_0(tmp_path: Path) -> None:
    """Shard 0 is a real process here, killed with SIGKILL: its workers exit by themselves."""
    script = tmp_path / "shard0.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, os, secrets, socket, sys, tempfile
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from cachedaemon.core.channel import ShardLinks
        from cachedaemon.server.supervisor import Supervisor, WorkerSpec
        from tests.support.daemon import daemon_env

        async def main():
            d = tempfile.mkdtemp()
            secret = secrets.token_bytes(32)
            links = ShardLinks(0, d, secret)
            await links.listen()
            sock = socket.socket(); sock.bind(("127.0.0.1", 0))
            sup = Supervisor(3, lambda s: WorkerSpec(s, 3, d, secret.hex(), {{}},
                                                      entry={ENTRY!r}),
                             lambda s: {{"http": sock}}, env=daemon_env())
            links.register("shards", sup)
            await sup.start()
            await sup.wait_joined(30)
            print(" ".join(str(p) for p in sup.pids.values()), flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            env=daemon_env())
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    assert alive == [], f"orphaned workers: {alive}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
