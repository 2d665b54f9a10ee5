"""Start-up, readiness, shut-down and crash behaviour of the real daemon process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.server.conftest import cache_files, part_files
from tests.support.daemon import DaemonProcess, daemon_env, run_cli, start_daemon
from tests.support.http import fetch


def test_no_arguments_on_a_fresh_machine(tmp_path: Path) -> None:
    # Everything defaulted but the port (tests run in parallel): data under ./cachedaemon-data.
    proc = subprocess.Popen([sys.executable, "-m", "cachedaemon", "serve", "--listen",
                             "127.0.0.1:0"], cwd=tmp_path, env=daemon_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("cachedaemon listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        r = asyncio.run(fetch("PUT", f"{url}/v1/objects/hello", data=b"hi"))
        assert r.status == 201
        assert (tmp_path / "cachedaemon-data" / "bucket" / "hello").read_bytes() == b"hi"
        assert (tmp_path / "cachedaemon-data" / "cache" / "hello").read_bytes() == b"hi"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stdout.read() == b""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "cachedaemon-data" / "cache" / "%tracker").exists()


@pytest.mark.parametrize(("args", "setting"), [
    (["--cache-max-bytes", "lots"], "cache.max_bytes"),
    (["--listen", "nowhere"], "server.listen"),
    (["--shards", "0"], "server.shards"),
    (["--remote", "ftp://x"], "remote.url"),
])
def test_invalid_config_exits_2(tmp_path: Path, args: list[str], setting: str) -> None:
    r = run_cli("serve", "--data-dir", str(tmp_path / "d"), *args, timeout=30)
    assert r.returncode == 2, r.stderr
    err = r.stderr.decode()
    assert setting in err
    assert len(err.strip().splitlines()) <= 2, err  # one message (argparse may add usage)


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                    f"127.0.0.1:{port}", "--shards", "2")
    assert r.returncode == 1
    assert "address already in use" in r.stderr.decode()
    assert b"listening" not in r.stdout


def test_second_daemon_on_same_port_exits_1(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "a", shards=2) as d:
        r = run_cli("serve", "--data-dir", str(tmp_path / "b"), "--listen",
                    f"127.0.0.1:{d.port}", "--shards", "2")
        assert r.returncode == 1 and "already in use" in r.stderr.decode()


def test_unusable_data_dir_exits_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    r = run_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", str(blocker / "data"))
    assert r.returncode == 1
    assert "data directory" in r.stderr.decode() and str(blocker) in r.stderr.decode()


def test_unreachable_bucket_exits_1(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    t0 = time.monotonic()
    r = run_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                "--remote", "s3://nobucket", "--s3-endpoint", f"http://127.0.0.1:{dead}",
                "--remote-retry-timeout", "1s", "--shards", "2", timeout=60)
    assert r.returncode == 1, r.stderr
    assert "bucket" in r.stderr.decode()
    # A failed start ends at once: the workers, which never served, are not waited for
    # (it took 10 s, the workers' stop timeout, before they were killed).
    assert time.monotonic() - t0 < 6, r.stderr
    assert b"did not stop in time" not in r.stderr


def _notify_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return sock


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_and_readyz(tmp_path: Path, abstract: bool) -> None:
    if abstract:
        name = f"cachedaemon-test-{uuid.uuid4().hex}"
        sock, env_value = _notify_socket("\0" + name), "@" + name
    else:
        path = str(tmp_path / "notify.sock")
        sock, env_value = _notify_socket(path), path
    with sock, start_daemon(tmp_path / "d", env={"NOTIFY_SOCKET": env_value}) as d:
        assert sock.recv(4096) == b"READY=1"
        assert asyncio.run(fetch("GET", f"{d.url}/readyz")).status == 200
        assert d.terminate() == 0
        assert sock.recv(4096) == b"STOPPING=1"


def test_sigterm_during_slow_upload_finishes_it(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    env = {"CACHEDAEMON_FAILPOINTS": "server.put.before_upload=delay:2"}
    with start_daemon(tmp_path / "d", env=env) as d:
        async def scenario() -> tuple[int, int, int]:
            put = asyncio.ensure_future(fetch("PUT", f"{d.url}/v1/objects/slow", data=data))
            await asyncio.sleep(0.7)
            d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            # Draining: not ready, new work refused, the upload still finishes.
            ready = await fetch("GET", f"{d.url}/readyz")
            refused = await fetch("GET", f"{d.url}/v1/objects/slow")
            return (await put).status, ready.status, refused.status

        put_status, ready_status, refused_status = asyncio.run(scenario())
        assert put_status == 201
        assert ready_status == 503 and refused_status == 503
        assert d.wait(30) == 0
    assert (tmp_path / "d" / "bucket" / "slow").read_bytes() == data
    assert not part_files(tmp_path / "d")


def test_sigterm_past_shutdown_timeout_discards_upload(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    env = {"CACHEDAEMON_FAILPOINTS": "server.put.before_upload=delay:5"}
    with start_daemon(tmp_path / "d", "--server-shutdown-timeout", "300ms", env=env) as d:
        async def scenario() -> None:
            put = asyncio.ensure_future(fetch("PUT", f"{d.url}/v1/objects/slow", data=data))
            await asyncio.sleep(0.7)
            d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            with pytest.raises(aiohttp.ClientError):
                await put

        t0 = time.monotonic()
        asyncio.run(scenario())
        assert d.wait(30) == 0
        assert time.monotonic() - t0 < 4
    assert not (tmp_path / "d" / "bucket" / "slow").exists()
    assert not part_files(tmp_path / "d")
    assert cache_files(tmp_path / "d") == []
    # Restart: nothing partial shows up, the reservation is gone.
    with start_daemon(tmp_path / "d") as d:
        st = asyncio.run(fetch("GET", f"{d.url}/v1/cache")).json()
        assert st["objects"] == 0 and st["bytes_reserved"] == 0
        assert asyncio.run(fetch("GET", f"{d.url}/v1/objects/slow")).status == 404


def test_kill_9_during_concurrent_puts_then_restart(tmp_path: Path) -> None:
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    with start_daemon(tmp_path / "d", "--cache-max-bytes", "64MiB", shards=2) as d:
        async def writer(i: int, session: aiohttp.ClientSession) -> None:
            n = 0
            while not stop.is_set():
                key = f"w{i}/{n}"
                data = os.urandom(50_000 + 1000 * i)
                try:
                    r = await fetch("PUT", f"{d.url}/v1/objects/{key}", data=data,
                                    session=session)
                except aiohttp.ClientError:
                    return
                if r.status == 201:
                    acked[key] = data
                    if len(acked) >= 60:
                        enough.set()
                n += 1

        enough = asyncio.Event()

        async def scenario() -> None:
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.ensure_future(writer(i, s)) for i in range(16)]
                await asyncio.wait_for(enough.wait(), 60)
                d.kill()
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(scenario())
    assert len(acked) >= 60
    with start_daemon(tmp_path / "d", shards=2) as d:
        assert not part_files(tmp_path / "d" / "cache")

        async def check() -> None:
            async with aiohttp.ClientSession() as s:
                for key, data in acked.items():
                    r = await fetch("GET", f"{d.url}/v1/objects/{key}", session=s)
                    assert r.status == 200 and r.body == data, key
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            files = cache_files(tmp_path / "d")
            assert st["objects"] == len(files)
            assert st["bytes_used"] == sum(p.stat().st_size for p in files)

        asyncio.run(check())
        assert d.terminate() == 0


def test_auth(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--auth-token", "s3cret") as d:
        async def scenario() -> None:
            for headers in (None, {"Authorization": "Bearer wrong"},
                            {"Authorization": "s3cret"}, {"Authorization": "Bearer s3cretX"},
                            {"Authorization": "Basic s3cret"}):
                r = await fetch("GET", f"{d.url}/v1/cache", headers=headers)
                assert r.status == 401 and r.error_code == "unauthorized"
                r = await fetch("PUT", f"{d.url}/v1/objects/a", data=b"x", headers=headers)
                assert r.status == 401
            good = {"Authorization": "Bearer s3cret"}
            assert (await fetch("PUT", f"{d.url}/v1/objects/a", data=b"x",
                                headers=good)).status == 201
            assert (await fetch("GET", f"{d.url}/v1/objects/a", headers=good)).body == b"x"
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await fetch("GET", d.url + path)).status == 200

        asyncio.run(scenario())
    with start_daemon(tmp_path / "e") as d:  # no token: open
        assert asyncio.run(fetch("GET", f"{d.url}/v1/cache")).status == 200


def test_json_access_log_and_shards(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--log-format", "json", shards=2) as d:
        async def scenario() -> None:
            async with aiohttp.ClientSession() as s:
                for i in range(20):
                    r = await fetch("PUT", f"{d.url}/v1/objects/k{i}", data=b"v" * i,
                                    session=s)
                    assert r.status == 201
                for i in range(20):
                    r = await fetch("GET", f"{d.url}/v1/objects/k{i}", session=s)
                    assert r.body == b"v" * i
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            assert st["shards"] == 2 and st["objects"] == 20

        asyncio.run(scenario())
        assert d.terminate() == 0
        import json

        lines = [json.loads(x) for x in d.logs().splitlines() if x.startswith("{")]
        access = [x for x in lines if x.get("route") == "/v1/objects/{key+}"]
        assert len(access) >= 40
        assert {x["status"] for x in access} == {200, 201}
        assert {x["shard"] for x in access} <= {0, 1}


def test_readyz_503_until_recovery_done(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"CACHEDAEMON_FAILPOINTS": "server.start.before_recovery=delay:2"}
    d = DaemonProcess(tmp_path / "d", env=env, listen=f"127.0.0.1:{port}")
    try:
        starter = threading.Thread(target=d.start, kwargs={"timeout": 30})
        starter.start()
        url = f"http://127.0.0.1:{port}"

        async def early() -> tuple[int, int, str | None, int]:
            for _ in range(200):
                try:
                    r = await fetch("GET", f"{url}/readyz")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.02)
            h = await fetch("GET", f"{url}/healthz")
            v = await fetch("GET", f"{url}/v1/cache")
            return r.status, v.status, v.error_code, h.status

        ready, v1, code, health = asyncio.run(early())
        assert (ready, v1, code, health) == (503, 503, "unavailable", 200)
        starter.join(30)
        assert d.url == url
        assert asyncio.run(fetch("GET", f"{url}/readyz")).status == 200
        assert d.terminate() == 0
    finally:
        d.close()
