"""The HTTP/1.1 connection: framing, keep-alive, pipelining, limits and the three timeouts.

An in-process :class:`HttpServer` on 127.0.0.1 with small timeouts, driven by raw sockets so
that each test controls exactly which bytes arrive when. Runs on uvloop (as the daemon does)
and on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cachedaemon.errors import CacheDaemonError, RequestTimeout
from cachedaemon.server.http import HttpServer, Limits, Request, Response, StreamResponse

App = Callable[[Request], Awaitable[Response]]


class Harness:
    """A server whose app is set per test, and what the app saw."""

    def __init__(self) -> None:
        self.app: App = self.echo
        self.seen: list[str] = []
        self.errors: list[BaseException] = []
        self.server: HttpServer | None = None
        self.port = 0

    async def echo(self, req: Request) -> Response:
        body = await req.content.read()
        self.seen.append(f"{req.method} {req.raw_path} {len(body)}")
        return Response(body=b"%s %s %d" % (req.method.encode(), req.raw_path.encode(), len(body)))

    async def dispatch(self, req: Request) -> Response:
        try:
            return await self.app(req)
        except CacheDaemonError as exc:
            self.errors.append(exc)
            return Response(status=exc.http_status, text=json.dumps({"error": {
                "code": exc.code, "message": exc.message}}), content_type="application/json")

    async def start(self, **limits: float) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.server = HttpServer(self.dispatch, Limits(**{  # type: ignore[arg-type]
            "header_timeout": 0.3, "body_timeout": 0.3, "idle_timeout": 0.3,
            "max_connections": 64, **limits}))
        await self.server.start(sock)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def http() -> AsyncIterator[Harness]:
    h = Harness()
    await h.start()
    yield h
    assert h.server is not None
    h.server.abort_all()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 5)
    return status, headers, body


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection within ``seconds`` (sending nothing more)."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


async def test_keep_alive_serves_several_requests_on_one_connection(http: Harness) -> None:
    r, w = await http.connect()
    for i in range(3):
        w.write(b"GET /a%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        status, headers, body = await read_response(r)
        assert status == 200 and body == b"GET /a%d 0" % i
        assert "connection" not in headers and "date" in headers
    w.close()


async def test_pipelined_requests_are_answered_in_order(http: Harness) -> None:
    order: list[str] = []

    async def app(req: Request) -> Response:
        if req.path == "/slow":
            await asyncio.sleep(0.05)
        order.append(req.path)
        return Response(body=req.path.encode())

    http.app = app
    r, w = await http.connect()
    w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
            b"PUT /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    bodies = [(await read_response(r))[2] for _ in range(3)]
    assert bodies == [b"/slow", b"/fast", b"/body"]
    assert order == ["/slow", "/fast", "/body"]  # one at a time, in order
    w.close()


async def test_request_body_content_length_and_chunked(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert (await read_response(r))[2] == b"PUT /x 5"
    w.write(b"PUT /y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    assert (await read_response(r))[2] == b"PUT /y 7"
    w.close()


async def test_streamed_response_chunked_and_head_has_no_body(http: Harness) -> None:
    async def app(req: Request) -> Response:
        resp = StreamResponse(status=200, headers={"X-A": "1"})
        if req.path == "/sized":
            resp.content_length = 6
        await resp.prepare(req)
        await resp.write(b"abc")
        await resp.write(b"def")
        await resp.write_eof()
        return resp

    http.app = app
    r, w = await http.connect()
    w.write(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, body = await read_response(r)
    assert headers["transfer-encoding"] == "chunked" and body == b"abcdef"
    w.write(b"HEAD /sized HTTP/1.1\r\nHost: x\r\n\r\nGET /sized HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, body = await read_response(r)  # HEAD: length announced, no body
    assert headers["content-length"] == "6"
    _, _, body = await read_response(r)  # the next response follows at once
    assert body == b"abcdef"
    w.close()


async def test_connection_close_and_http10_are_honoured(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, _ = await read_response(r)
    assert headers["connection"] == "close"
    assert await closed_within(r, 1)
    r, w = await http.connect()
    w.write(b"GET /b HTTP/1.0\r\n\r\n")
    status, headers, _ = await read_response(r)
    assert status == 200 and await closed_within(r, 1)
    r, w = await http.connect()
    w.write(b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    _, headers, _ = await read_response(r)
    assert headers["connection"] == "keep-alive"
    w.write(b"GET /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (await read_response(r))[2] == b"GET /d 0"
    w.close()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\x01token\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
])
async def test_malformed_requests_get_a_json_400_and_logs_never_echo_them(
        http: Harness, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    r, w = await http.connect()
    with caplog.at_level(logging.DEBUG, logger="cachedaemon.http"):
        w.write(raw)
        status, headers, body = await read_response(r)
        assert await closed_within(r, 1)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_argument"
    records = [rec for rec in caplog.records if rec.name == "cachedaemon.http"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].exc_info is None
    assert "s3cret" not in caplog.text and "GARBAGE" not in caplog.text
    assert http.seen == []


async def test_oversized_target_and_headers_get_414_and_431(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"GET /" + b"a" * (17 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(r))[0] == 414
    r, w = await http.connect()
    w.write(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * (65 << 10) + b"\r\n\r\n")
    assert (await read_response(r))[0] == 431


async def test_header_timeout_closes_a_half_sent_request(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never complete
    t0 = time.monotonic()
    assert await closed_within(r, 2)
    assert 0.25 <= time.monotonic() - t0 < 1.5
    r, w = await http.connect()  # nothing at all: closed by the same timeout
    assert await closed_within(r, 2)
    assert http.seen == []


async def test_header_timeout_is_not_extended_by_trickling_bytes(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"GET / HTTP/1.1\r\n")
    t0 = time.monotonic()
    closed = False
    for _ in range(20):
        await asyncio.sleep(0.05)
        try:
            w.write(b"X-A: b\r\n")
            await w.drain()
        except ConnectionError:
            closed = True
            break
        if r.at_eof():
            closed = True
            break
    closed = closed or await closed_within(r, 1)
    assert closed and time.monotonic() - t0 < 1.2


async def test_idle_keep_alive_connection_is_closed(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(r)
    t0 = time.monotonic()
    assert await closed_within(r, 2)
    assert 0.25 <= time.monotonic() - t0 < 1.5


async def test_body_timeout_answers_408_and_the_handler_sees_it(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    status, headers, body = await read_response(r)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert await closed_within(r, 1)
    assert len(http.errors) == 1 and isinstance(http.errors[0], RequestTimeout)


async def test_a_trickling_body_is_not_cut_off(http: Harness) -> None:
    r, w = await http.connect()
    w.write(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    for i in range(10):  # 1 s in all, never 0.3 s without a byte
        await asyncio.sleep(0.1)
        w.write(b"%d" % i)
    assert (await read_response(r))[2] == b"PUT /up 10"


async def test_expect_continue_is_sent_only_when_the_body_is_read(http: Harness) -> None:
    async def app(req: Request) -> Response:
        if req.path == "/refuse":
            return Response(status=413, text="too large")
        data = await req.content.read()
        return Response(body=b"got %d" % len(data))

    http.app = app
    r, w = await http.connect()
    w.write(b"PUT /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    status, headers, _ = await read_response(r)
    assert status == 413 and headers["connection"] == "close"  # the body may or may not come
    assert await closed_within(r, 1)
    r, w = await http.connect()
    w.write(b"PUT /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
    w.write(b"hello")
    assert (await read_response(r))[2] == b"got 5"


async def test_unread_body_is_skipped_when_small_and_closes_when_large(http: Harness) -> None:
    async def app(req: Request) -> Response:
        return Response(status=400, text="no")  # never reads the body

    http.app = app
    r, w = await http.connect()
    w.write(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    status, headers, _ = await read_response(r)
    assert status == 400 and "connection" not in headers
    w.write(b"x" * 990 + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(r))[0] == 400  # the same connection goes on
    r, w = await http.connect()
    w.write(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 10)
    status, headers, _ = await read_response(r)
    assert headers["connection"] == "close" and await closed_within(r, 1)


async def test_max_connections_closes_new_connections_at_once() -> None:
    h = Harness()
    await h.start(max_connections=3, header_timeout=10, idle_timeout=10)
    assert h.server is not None
    try:
        held = [await h.connect() for _ in range(3)]
        for r, w in held:  # each is admitted and served
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(r))[0] == 200
        r, _ = await h.connect()
        assert await closed_within(r, 1)
        assert h.server.refused == 1
        held[0][1].close()
        await asyncio.sleep(0.1)
        r, w = await h.connect()
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(r))[0] == 200
    finally:
        h.server.abort_all()


async def _file_app(path_of: Callable[[Request], Path], outcomes: list[str]) -> App:
    """An app that sends the file ``path_of(request)`` with ``sendfile``, noting in
    ``outcomes`` whether each send was cut (the client went away) or sent."""
    async def app(req: Request) -> Response:
        fd = os.open(path_of(req), os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            resp = StreamResponse(status=200)
            resp.content_length = size
            await resp.prepare(req)
            try:
                await resp.sendfile(fd, 0, size)
            except ConnectionError:
                outcomes.append("cut")
                raise
            await resp.write_eof()
            outcomes.append("sent")
            return resp  # type: ignore[return-value]
        finally:
            os.close(fd)
    return app


async def test_a_client_that_never_reads_a_sendfile_response_is_cut_off_and_blocks_nobody(
        tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(1 << 20) * 32)
    small = tmp_path / "small"
    small.write_bytes(b"s" * 200_000)
    outcomes: list[str] = []
    app = await _file_app(lambda req: big if req.path == "/big" else small, outcomes)

    h = Harness()
    h.app = app
    await h.start(body_timeout=0.5, idle_timeout=10, header_timeout=10, max_connections=200)
    assert h.server is not None
    try:
        stalled = []
        for _ in range(80):  # more than any thread pool the old server had (64)
            r, w = await h.connect()
            w.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append((r, w))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        r, w = await h.connect()
        w.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 200 and len(body) == 200_000
        assert time.monotonic() - t0 < 0.4  # served while 80 slow readers hold responses
        await asyncio.sleep(1.2)
        assert outcomes.count("cut") == 80  # each stalled response was aborted
        assert len(h.server.connections) == 1  # only the good client's keep-alive remains
    finally:
        h.server.abort_all()


async def test_slow_reader_of_a_streamed_response_is_cut_off() -> None:
    outcome: list[str] = []

    async def app(req: Request) -> Response:
        resp = StreamResponse(status=200)
        await resp.prepare(req)
        try:
            for _ in range(1000):
                await resp.write(b"y" * 65536)
        except ConnectionError:
            outcome.append("cut")
            raise
        return resp

    h = Harness()
    h.app = app
    await h.start(body_timeout=0.3)
    assert h.server is not None
    try:
        _, w = await h.connect()
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(1.5)
        assert outcome == ["cut"]
    finally:
        h.server.abort_all()


async def test_shutdown_closes_idle_connections_and_lets_busy_ones_finish(http: Harness) -> None:
    release = asyncio.Event()

    async def app(req: Request) -> Response:
        if req.path == "/busy":
            await release.wait()
        return Response(body=b"done")

    http.app = app
    assert http.server is not None
    idle_r, idle_w = await http.connect()
    idle_w.write(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(idle_r)
    busy_r, busy_w = await http.connect()
    busy_w.write(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    http.server.begin_shutdown()
    assert await closed_within(idle_r, 1)
    assert http.server.busy == 1
    release.set()
    _, headers, body = await read_response(busy_r)
    assert body == b"done" and headers["connection"] == "close"
    # Still accepting while draining (readiness probes get their 503), one request each.
    r, w = await http.connect()
    w.write(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, _ = await read_response(r)
    assert headers["connection"] == "close" and await closed_within(r, 1)
    http.server.abort_all()
    with pytest.raises(OSError):
        await asyncio.wait_for(http.connect(), 1)


async def test_a_large_file_is_copied_in_the_pool_whole_and_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13's measurement: a 16 MiB hit on one shard ran at 0.73x the old server, whose
    thread pool copied on both cores. Sends of OFFLOAD_BYTES or more now copy in a small pool
    (non-blocking, so no client can hold a thread); the bytes must arrive whole and in order."""
    from cachedaemon.server.http import protocol

    data = os.urandom(1 << 20) * 3 + os.urandom(protocol.OFFLOAD_BYTES + 12345)
    big = tmp_path / "big"
    big.write_bytes(data)
    threads: list[str] = []
    real = os.sendfile

    def spy(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        import threading
        threads.append(threading.current_thread().name)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", spy)
    outcomes: list[str] = []
    h = Harness()
    h.app = await _file_app(lambda req: big, outcomes)
    await h.start(body_timeout=5, idle_timeout=10, header_timeout=10)
    try:
        r, w = await h.connect()
        for _ in range(2):  # twice on one connection: the dup and the pool are reused
            w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await read_response(r)
            assert status == 200 and body == data
        assert outcomes == ["sent", "sent"]
        assert any(t.startswith("http-sendfile") for t in threads)  # copied in the pool
        assert threads[-1] == "MainThread" or threads[-1].startswith("http-sendfile")
    finally:
        assert h.server is not None
        h.server.abort_all()


async def test_a_client_gone_during_a_pooled_copy_leaks_no_descriptor(tmp_path: Path) -> None:
    """The copy runs on a dup of the socket: it must be closed once the copy ends, also when
    the client vanished meanwhile (and never while a thread may still write through it)."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(1 << 20) * 24)
    outcomes: list[str] = []
    h = Harness()
    h.app = await _file_app(lambda req: big, outcomes)
    await h.start(body_timeout=5, idle_timeout=10, header_timeout=10)
    fds = len(os.listdir("/proc/self/fd"))
    try:
        for _ in range(10):
            r, w = await h.connect()
            w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            await r.readexactly(200_000)  # the copy is under way
            w.transport.abort()  # gone, mid-file
        for _ in range(200):
            if len(outcomes) == 10:
                break
            await asyncio.sleep(0.01)
        assert outcomes == ["cut"] * 10
        for _ in range(200):
            if len(os.listdir("/proc/self/fd")) <= fds:
                break
            await asyncio.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= fds
        # The server goes on serving.
        r, w = await h.connect()
        w.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 200 and body == big.read_bytes()
    finally:
        assert h.server is not None
        h.server.abort_all()
