"""Slow, idle, greedy and malformed clients against the real daemon (issue 13).

Each test starts ``cachedaemon serve`` with small ``server.*`` timeouts and limits, plays the
hostile client over raw sockets, and checks afterwards that the daemon kept serving everyone
else within a stated bound and that nothing was left behind (no reservation, no ``.part``).
Bounds: other clients are served within 1 s while the hostile ones hold their connections
(the daemon answers such requests in milliseconds on an idle machine; 1 s leaves room for a
loaded CI box).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.server.conftest import part_files
from tests.support.daemon import start_daemon
from tests.support.http import fetch

SERVED_WITHIN_S = 1.0


async def raw_request(port: int, raw: bytes, *, read: bool = True) -> tuple[int, dict[str, str],
                                                                              bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0"))) if read else b""
    writer.close()
    return int(lines[0].split()[1]), headers, body


async def is_closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def timed_get(url: str) -> tuple[int, float]:
    t0 = time.monotonic()
    resp = await fetch("GET", url)
    return resp.status, time.monotonic() - t0


def test_half_sent_requests_are_closed_by_the_header_timeout(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--server-header-timeout", "500ms", shards=2) as d:
        async def scenario() -> None:
            conns = []
            for _ in range(300):
                r, w = await asyncio.open_connection(d.host, d.port)
                w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
                conns.append((r, w))
            status, took = await timed_get(f"{d.url}/healthz")
            assert status == 200 and took < SERVED_WITHIN_S
            t0 = time.monotonic()
            closed = await asyncio.gather(*(is_closed(r, 3) for r, _ in conns))
            assert all(closed) and time.monotonic() - t0 < 3
        asyncio.run(scenario())


def test_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--server-idle-timeout", "400ms") as d:
        async def scenario() -> None:
            r, w = await asyncio.open_connection(d.host, d.port)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await r.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await r.readexactly(length)
            t0 = time.monotonic()
            assert await is_closed(r, 3)
            assert 0.3 < time.monotonic() - t0 < 2.5
        asyncio.run(scenario())


def test_stalled_upload_gets_408_and_leaves_nothing(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--server-body-timeout", "500ms", shards=2) as d:
        async def scenario() -> None:
            status, headers, body = await raw_request(
                d.port, b"PUT /v1/objects/stalled HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 3000000\r\n\r\n" + os.urandom(100_000))
            assert status == 408 and headers.get("connection") == "close"
            assert json.loads(body)["error"]["code"] == "request_timeout"
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
            assert (await fetch("GET", f"{d.url}/v1/objects/stalled")).status == 404
        asyncio.run(scenario())
    assert not part_files(tmp_path / "d")
    assert not (tmp_path / "d" / "bucket" / "stalled").exists()


def test_slow_readers_of_a_large_hit_starve_nobody_and_are_cut_off(tmp_path: Path) -> None:
    big = os.urandom(1 << 20) * 32
    with start_daemon(tmp_path / "d", "--server-body-timeout", "1s",
                      "--cache-max-bytes", "256MiB", "--max-object-bytes", "64MiB",
                      shards=2) as d:
        async def scenario() -> None:
            assert (await fetch("PUT", f"{d.url}/v1/objects/big", data=big)).status == 201
            assert (await fetch("PUT", f"{d.url}/v1/objects/small",
                                data=b"s" * 200_000)).status == 201
            slow = []
            for _ in range(80):  # more than the 64 sendfile threads the old server had
                r, w = await asyncio.open_connection(d.host, d.port)
                w.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                w.write(b"GET /v1/objects/big HTTP/1.1\r\nHost: x\r\n\r\n")
                slow.append((r, w))
            await asyncio.sleep(0.3)
            for _ in range(5):
                status, took = await timed_get(f"{d.url}/v1/objects/small")
                assert status == 200 and took < SERVED_WITHIN_S
            # None of the slow readers read: each is cut off after the body timeout.
            cut = await asyncio.gather(*(_drained_then_closed(r) for r, _ in slow))
            assert all(c < len(big) for c in cut)
        asyncio.run(scenario())


async def _drained_then_closed(reader: asyncio.StreamReader) -> int:
    """Wait past the body timeout, then read what the daemon sent before it gave up."""
    await asyncio.sleep(2.5)
    got = 0
    try:
        while True:
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            if not data:
                return got
            got += len(data)
    except ConnectionError:
        return got


def test_malformed_requests_get_json_400_and_logs_hold_no_header_values(
        tmp_path: Path) -> None:
    secret = "tok-3f9a1c"
    bad = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret.encode() +
        b"\x01\r\n\r\n",
        b"PUT /v1/objects/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2"
        b"\r\nX-Secret: " + secret.encode() + b"\r\n\r\nab",
        b"\x16\x03\x01\x02\x00\x01" + secret.encode() + b"\r\n\r\n",  # a TLS hello on plain HTTP
        b"PUT /v1/objects/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
    ]
    with start_daemon(tmp_path / "d") as d:
        async def scenario() -> None:
            for raw in bad:
                status, headers, body = await raw_request(d.port, raw)
                assert status == 400, raw
                assert headers["content-type"].startswith("application/json")
                assert json.loads(body)["error"]["code"] == "invalid_argument"
        asyncio.run(scenario())
        time.sleep(0.2)
        logs = d.logs()
    assert secret not in logs
    assert "Traceback" not in logs
    assert logs.count("malformed request") == len(bad)


def test_early_413_with_connection_close_closes_the_connection(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--max-object-bytes", "1KiB",
                      "--cache-max-bytes", "1MiB") as d:
        async def scenario() -> None:
            r, w = await asyncio.open_connection(d.host, d.port)
            w.write(b"PUT /v1/objects/big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                    b"Connection: close\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 413") and b"Connection: close" in head
            await r.read(10_000)
            assert await is_closed(r, 2)
        asyncio.run(scenario())


def test_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", env={"CACHEDAEMON_SERVER_AUTH_TOKEN": "s3cret"}) as d:
        async def scenario() -> None:
            for scheme in ("Bearer", "bearer", "BEARER"):
                resp = await fetch("GET", f"{d.url}/v1/cache",
                                   headers={"Authorization": f"{scheme} s3cret"})
                assert resp.status == 200, scheme
            resp = await fetch("GET", f"{d.url}/v1/cache", headers={"Authorization": "Basic s3cret"})
            assert resp.status == 401
        asyncio.run(scenario())


def _low_nofile(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_connections_past_the_limit_are_closed_and_the_daemon_keeps_its_descriptors(
        tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--server-max-connections", "40",
                      "--server-header-timeout", "30s", shards=2,
                      preexec_fn=lambda: _low_nofile(512)) as d:
        async def scenario() -> None:
            held = []
            for _ in range(300):
                try:
                    held.append(await asyncio.open_connection(d.host, d.port))
                except OSError:
                    break
            await asyncio.sleep(0.3)
            alive = [r for r, _ in held if not await is_closed(r, 0.05)]
            assert len(alive) <= 40  # the rest were closed at once
            for _, w in held:
                w.close()
            await asyncio.sleep(0.3)
            # The daemon's own files still open: a PUT stages, uploads and commits; a kv write
            # opens its domain's log.
            assert (await fetch("PUT", f"{d.url}/v1/objects/after", data=b"x" * 5000)).status \
                == 201
            assert (await fetch("PUT", f"{d.url}/v1/kv/dom/k", data=b"v")).status == 204
            assert (await fetch("GET", f"{d.url}/v1/kv/dom/k")).body == b"v"
        asyncio.run(scenario())
        logs = d.logs()
    assert "EMFILE" not in logs and "Too many open files" not in logs


def test_a_connection_limit_that_cannot_fit_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.daemon import daemon_env

    proc = subprocess.run(
        [sys.executable, "-m", "cachedaemon", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "d"), "--server-max-connections", "100000"],
        env=daemon_env(), capture_output=True, timeout=60, preexec_fn=lambda: _low_nofile(1024))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "server.max_connections" in err and "ulimit" in err


@pytest.mark.parametrize("shards", [1, 2])
def test_health_stays_fast_under_many_idle_connections(tmp_path: Path, shards: int) -> None:
    with start_daemon(tmp_path / "d", "--server-idle-timeout", "60s",
                      "--server-header-timeout", "60s", shards=shards) as d:
        async def scenario() -> None:
            held = [await asyncio.open_connection(d.host, d.port) for _ in range(500)]
            for _ in range(10):
                status, took = await timed_get(f"{d.url}/healthz")
                assert status == 200 and took < SERVED_WITHIN_S
            for _, w in held:
                w.close()
        asyncio.run(scenario())
