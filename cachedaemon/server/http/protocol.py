"""One HTTP/1.1 connection: parsing (``httptools``), request order, timeouts, flow control.

An :class:`HttpConnection` is the ``asyncio.Protocol`` of one accepted socket, created by its
:class:`~cachedaemon.server.http.server.HttpServer` and run on that server's loop (one shard).
It parses bytes with llhttp (through ``httptools``, as uvicorn does), hands each request to
the application in a task of its own, one request at a time in the order they came
(pipelined requests wait, and reading pauses until their turn), and writes the answers.

**Timeouts** (``server.*``; one timer per connection, re-armed lazily):

* *headers*: a request whose headers are not complete ``header_timeout`` after its first
  byte (or after the connection opened) closes the connection;
* *body*: a handler waiting for request-body bytes that sees none for ``body_timeout`` gets
  :class:`~cachedaemon.errors.RequestTimeout` (answered ``408``, the connection then closes);
  a response the client does not read — the socket stays full — for ``body_timeout`` aborts
  the connection (the handler's write raises :class:`ConnectionResetError`);
* *idle*: a keep-alive connection with no request for ``idle_timeout`` is closed.

**Malformed requests** (bad request line, headers, Content-Length or chunking; headers over
:data:`MAX_HEAD_BYTES`; a target over :data:`MAX_TARGET_BYTES`) get a JSON ``400``
(``414``/``431`` for the size limits) and the connection closes; one WARNING line is logged
that never contains request bytes.

**After a response**: the connection is kept only when both sides allow it
(``Connection``, HTTP/1.0), the response went out whole, and the request body was read or
can be skipped cheaply (at most :data:`DISCARD_LIMIT` bytes left); a request that expected
``100-continue`` and was never told to continue closes it. A connection closed while its
request body is still arriving *lingers* as nginx's does: it stops writing and reads and drops
the rest of the body for up to :data:`LINGER_S` (and :data:`LINGER_BYTES`), so the client reads
the early answer (a ``413``, a ``408``) instead of a reset.

**Sending files**: ``sendfile(2)`` runs on the loop with the socket non-blocking; when the
socket is full the connection waits for it to be writable (through a ``dup`` of the socket's
descriptor, since uvloop keeps its own registration), so a client that stops reading holds
nothing but its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from cachedaemon.errors import InvalidArgument, RequestTimeout
from cachedaemon.server.http.request import BODY_HIGH_WATER, Body, Headers, Request
from cachedaemon.server.http.response import NO_BODY_STATUSES, StreamResponse, encode_head

if TYPE_CHECKING:
    from cachedaemon.server.http.server import HttpServer

log = logging.getLogger("cachedaemon.http")

#: Longest request target (path and query) accepted; longer is ``414``.
MAX_TARGET_BYTES = 16 << 10
#: Most bytes of request headers accepted (names and values); more is ``431``.
MAX_HEAD_BYTES = 64 << 10
#: Unread request-body bytes the connection skips to stay open after a response.
DISCARD_LIMIT = 256 << 10
#: How long, and how many bytes, a closing connection reads and drops of an unread body.
LINGER_S = 5.0
LINGER_BYTES = 64 << 20
#: Write-buffer limits of the transport (pause above the high mark, resume below the low).
WRITE_HIGH_WATER = 256 << 10
WRITE_LOW_WATER = 64 << 10

_LINGER_RESET = struct.pack("ii", 1, 0)

App = Callable[[Request], Awaitable[StreamResponse]]

# What the one timer of a connection is waiting for.
_NONE, _IDLE, _HEADERS, _BODY, _DISCARD, _WRITE = range(6)


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module doc)."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: Any = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        self._closed = False
        self._close_after = False  # close once the current response is out
        self._broken = False  # unparseable input follows the current request
        # The request being parsed (headers, then body), and the ones waiting for a turn.
        self._head_started: float | None = None
        self._url = b""
        self._headers = Headers()
        self._head_bytes = 0
        self._parsing: Request | None = None
        self._queue: deque[Request] = deque()
        # The request being answered.
        self._active: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._response: StreamResponse | None = None
        self._discarding: Body | None = None
        self._linger_until = 0.0  # > 0: closing once the unread body is dropped
        # Flow control.
        self._reading = True
        self._pause_for_body = False
        self._paused_writing = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._flush_waiter: asyncio.Future[None] | None = None
        self._sock_fd = -1
        self._dup_fd = -1
        # The timer.
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._body_progress = 0.0
        self._write_progress = 0.0
        self._write_waiting = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        server = self._server
        if not server.admit(self):
            transport.abort()  # over server.max_connections: closed at once
            self._closed = True
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._remote = f"{peer[0]}:{peer[1]}"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._sock_fd = sock.fileno()
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        now = self._loop.time()
        self._head_started = now  # the first request's headers are due by header_timeout
        self._idle_since = now
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        gone = ConnectionResetError("the client closed the connection")
        for req in (self._active, self._parsing, *self._queue):
            if req is not None:
                req.content.fail(gone)
        for waiter in (self._drain_waiter, self._flush_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(gone)
        self._queue.clear()
        self._close_dup()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade we do not speak: answer the request as plain HTTP/1.1, then close
            # (the parser stops at the upgrade, so the connection cannot continue).
            self._broken = True
            self._close_after = True
            if self._parsing is not None:
                self._parsing.content.feed_eof()
                self._parsing = None
            self._set_reading()
        except httptools.HttpParserError as exc:
            # An exception raised by a callback comes back as the context of the parser's.
            cause = exc.__context__
            if isinstance(cause, _HeadTooLarge):
                self._protocol_error(cause.status, str(cause))
            elif isinstance(exc, httptools.parser.errors.HttpParserCallbackError):
                log.error("internal error while parsing a request: %r", cause, exc_info=cause)
                self._protocol_error(500, "internal error")
            else:
                self._protocol_error(400, _reason(exc))

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._write_progress = self._loop.time()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._write_progress = self._loop.time()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self._flush_waiter
        if waiter is not None and not waiter.done():
            self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
            waiter.set_result(None)

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = Headers()
        self._head_bytes = 0
        if self._head_started is None:
            self._head_started = now = self._loop.time()
            timer = self._timer
            if self._active is None and (
                    timer is None or timer.when() > now + self._server.header_timeout):
                # Usually a timer is pending that fires before these headers' deadline
                # (_rearm sets idle ones within header_timeout): nothing to arm per request.
                self._rearm()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET_BYTES:
            raise _HeadTooLarge(414, f"the request target is over {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge(431, f"the request headers are over {MAX_HEAD_BYTES} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if dict.__contains__(headers, key):
            text = f"{dict.__getitem__(headers, key)}, {text}"
        dict.__setitem__(headers, key, text)

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        version = parser.get_http_version()
        get = dict.get  # keys are lower case: skip Headers' case folding
        clen = get(headers, "content-length")
        length: int | None
        if clen is not None:
            length = int(clen)  # llhttp checked it
        elif "chunked" in (get(headers, "transfer-encoding") or "").lower():
            length = None
        else:
            length = 0
        expect = version == "1.1" and (get(headers, "expect") or "").lower() == "100-continue"
        body = Body(self, length, expect)
        req = Request(self, parser.get_method().decode("ascii", "replace"),
                      self._url.decode("utf-8", "surrogateescape"), headers, version,
                      parser.should_keep_alive(), body, self._remote)
        self._head_started = None
        self._parsing = req
        if self._active is None and not self._queue:
            self._start(req)
        else:
            self._queue.append(req)
            self._set_reading()

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        if req is None:
            return
        self._body_progress = self._loop.time()
        body = req.content
        if body is self._discarding:
            body.received += len(data)
            if self._linger_until and body.received > LINGER_BYTES:
                self._close_now()
            return
        body.feed(data)
        if body.buffered > BODY_HIGH_WATER and not self._pause_for_body:
            self._pause_for_body = True
            self._set_reading()

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is None:
            return
        self._parsing = None
        req.content.feed_eof()
        if req.content is self._discarding:
            self._discarding = None
            if self._linger_until:
                self._close_now()
                return
            self._next()
        elif self._active is None and not self._queue:
            self._rearm()

    # --- requests --------------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        self._active = req
        self._response = None
        self._task = self._loop.create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        try:
            resp = await self._server.app(req)
            self._response = resp
            if not resp.prepared:
                self._send(req, resp)
            elif not resp.finished:
                await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self._drop()
            return
        except Exception as exc:  # the app maps errors; this is a bug in a response
            log.error("failed to send a response: %r", exc, exc_info=exc)
            self._drop()
            return
        self._finish(req)

    def _send(self, req: Request, resp: StreamResponse) -> None:
        keep = self._keep_alive(req)
        status = resp.status
        body = resp.body
        head = encode_head(status, resp.headers,
                           None if status in NO_BODY_STATUSES else len(body),
                           chunked=False, keep_alive=keep, http10=req.version == "1.0",
                           raw=resp.raw)
        if req.method == "HEAD" or not body or status in NO_BODY_STATUSES:
            self._transport.write(head)
        elif len(body) <= 16384:
            self._transport.write(head + body)
        else:
            self._transport.writelines((head, body))
        if not keep:
            self._close_after = True

    def start_response(self, resp: StreamResponse, length: int | None, *, chunked: bool) -> None:
        """Send a streamed response's head (called by :meth:`StreamResponse.prepare`)."""
        req = self._active
        if self._closed or req is None:
            raise ConnectionResetError("the client closed the connection")
        keep = self._keep_alive(req)
        if chunked and req.version == "1.0":
            keep = False  # no chunking in HTTP/1.0: the end of the body is the close
            chunked = False
        self._response = resp
        self._transport.write(encode_head(resp.status, resp.headers, length, chunked=chunked,
                                          keep_alive=keep, http10=req.version == "1.0",
                                          raw=resp.raw))
        if not keep:
            self._close_after = True

    def _keep_alive(self, req: Request) -> bool:
        if self._close_after or self._broken or not req.keep_alive or self._server.closing:
            return False
        body = req.content
        if body.complete:
            return True
        if body.continue_pending:
            return False
        return body.length is not None and body.length - body.received <= DISCARD_LIMIT

    def _finish(self, req: Request) -> None:
        """The response to ``req`` is out: close, or skip its unread body, or go on."""
        resp = self._response
        self._active = None
        self._task = None
        self._response = None
        if self._closed:
            return
        if resp is not None and resp.prepared and not resp.complete:
            self._close_after = True
        body = req.content
        if self._close_after or not self._keep_alive(req):
            if body.complete or self._broken or self._parsing is not req:
                self._close_now()
                return
            # Linger: stop writing, drop the rest of the body, then close.
            self._linger_until = self._loop.time() + min(LINGER_S, self._server.body_timeout)
            self._close_after = True
            if self._transport.can_write_eof():
                self._transport.write_eof()
        if not body.complete:
            body.drop_continue()
            self._discarding = body
            self._pause_for_body = False
            self._set_reading()
            self._rearm()
            return
        self._next()

    def _close_now(self) -> None:
        self._closed = True
        self._transport.close()

    def _next(self) -> None:
        self._pause_for_body = False
        if self._queue:
            self._start(self._queue.popleft())
        else:
            self._idle_since = now = self._loop.time()
            timer = self._timer
            if timer is None or timer.when() > now + self._server.idle_timeout:
                self._rearm()
        self._set_reading()

    def _set_reading(self) -> None:
        want = not (self._pause_for_body or self._broken or self._closed
                    or (self._active is not None and bool(self._queue)))
        if want != self._reading and self._transport is not None and not self._closed:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _protocol_error(self, status: int, reason: str) -> None:
        self._broken = True
        if status < 500:
            log.warning("malformed request from %s: %s", self._remote or "?", reason)
        if self._parsing is not None:
            # A handler reading this body answers 400 (and the connection then closes).
            self._parsing.content.fail(InvalidArgument(f"malformed HTTP request: {reason}"))
        if self._active is not None:
            # Answer the request in progress first; the bad bytes after it end the connection.
            self._close_after = True
            self._set_reading()
            return
        code = "internal" if status >= 500 else "invalid_argument"
        message = reason if status >= 500 else f"malformed HTTP request: {reason}"
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        head = encode_head(status, {"Content-Type": "application/json"}, len(body),
                           chunked=False, keep_alive=False)
        self._transport.write(head + body)
        self._transport.close()
        self._closed = True

    # --- the body's side -------------------------------------------------------------------

    def send_continue(self) -> None:
        if not self._closed and self._response is None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_wait_started(self) -> None:
        self._body_progress = max(self._body_progress, self._loop.time())
        self._rearm()

    def body_wait_ended(self) -> None:
        pass  # the timer re-checks what it waits for when it fires

    def body_drained(self) -> None:
        if self._pause_for_body:
            self._pause_for_body = False
            self._set_reading()

    # --- writing ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket and our buffer are full (bounded by body_timeout)."""
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        if not self._paused_writing:
            return
        self._drain_waiter = self._loop.create_future()
        self._write_waiting = True
        self._rearm()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
            self._write_waiting = False

    async def _flush(self) -> None:
        """Wait until the transport has handed every buffered byte to the socket."""
        transport = self._transport
        if transport.get_write_buffer_size() == 0:
            return
        self._flush_waiter = self._loop.create_future()
        self._write_waiting = True
        self._rearm()
        try:
            # With both marks at 0 the transport calls resume_writing() once it is empty.
            transport.set_write_buffer_limits(high=0, low=0)
            await self._flush_waiter
        finally:
            self._flush_waiter = None
            self._write_waiting = False

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """``sendfile(2)`` ``count`` bytes of ``fd`` from ``offset`` into the socket."""
        if self._closed or self._sock_fd < 0:
            raise ConnectionResetError("the client closed the connection")
        await self._flush()
        sock_fd = self._sock_fd
        while count > 0:
            if self._closed:
                raise ConnectionResetError("the client closed the connection")
            try:
                n = os.sendfile(sock_fd, fd, offset, count)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as exc:
                raise ConnectionResetError(f"sending the file failed: {exc.strerror}") from exc
            if n == 0:
                raise ConnectionResetError("the file shrank while it was being sent")
            offset += n
            count -= n
            self._write_progress = self._loop.time()

    async def _writable(self) -> None:
        if self._dup_fd < 0:
            self._dup_fd = os.dup(self._sock_fd)
        fd = self._dup_fd
        waiter = self._loop.create_future()
        self._drain_waiter = waiter

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._loop.add_writer(fd, ready)
        self._write_waiting = True
        self._write_progress = self._loop.time()
        self._rearm()
        try:
            await waiter
        finally:
            self._loop.remove_writer(fd)
            self._drain_waiter = None
            self._write_waiting = False

    def _close_dup(self) -> None:
        if self._dup_fd >= 0:
            self._loop.remove_writer(self._dup_fd)
            os.close(self._dup_fd)
            self._dup_fd = -1

    # --- the timer -------------------------------------------------------------------------

    def _deadline(self) -> tuple[int, float]:
        server = self._server
        if self._write_waiting:
            return _WRITE, self._write_progress + server.body_timeout
        active = self._active
        if active is not None:
            if active.content.waiting:
                return _BODY, self._body_progress + server.body_timeout
            return _NONE, 0.0
        if self._discarding is not None:
            deadline = self._body_progress + server.body_timeout
            if self._linger_until:
                deadline = min(deadline, self._linger_until)
            return _DISCARD, deadline
        if self._head_started is not None:
            return _HEADERS, self._head_started + server.header_timeout
        if self._queue:
            return _NONE, 0.0
        return _IDLE, self._idle_since + server.idle_timeout

    def _rearm(self) -> None:
        if self._closed:
            return
        kind, deadline = self._deadline()
        timer = self._timer
        if kind == _NONE:
            return  # a pending timer finds nothing to do when it fires
        if kind == _IDLE:
            # Wake up within header_timeout anyway: the next request's header deadline then
            # never needs a timer of its own (the hot path arms nothing).
            deadline = min(deadline, self._loop.time() + self._server.header_timeout)
        if timer is not None:
            if timer.when() <= deadline:
                return  # fires earlier and re-arms itself for the later deadline
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        kind, deadline = self._deadline()
        if kind == _NONE:
            return
        if self._loop.time() < deadline:
            self._rearm()
            return
        if kind == _BODY:
            assert self._active is not None
            self._close_after = True
            self._active.content.fail(RequestTimeout(
                f"no request body byte for {self._server.body_timeout:g}s"))
        elif kind == _WRITE:
            log.info("client %s stopped reading for %gs: connection aborted",
                     self._remote or "?", self._server.body_timeout)
            self._drop()  # the handler's pending write raises ConnectionResetError
        else:
            # Idle keep-alive, headers not complete in time, an unread body that stalls, or
            # the end of a linger.
            self._close_now()

    # --- the server's side -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a request is being answered."""
        return self._active is not None

    def close_if_idle(self) -> bool:
        """Close now if no request is being answered or parsed; True if it closed."""
        if self._closed:
            return True
        if self._active is None and self._parsing is None and not self._queue:
            self._transport.close()
            self._closed = True
            return True
        self._close_after = True
        return False

    def abort(self) -> None:
        """Drop the connection now; a running handler is cancelled (shut-down)."""
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._drop()

    def _drop(self) -> None:
        """Drop the connection now; a running handler sees ConnectionResetError on its next
        read or write, and cleans up as for a client that went away.

        The socket is reset (SO_LINGER 0), not closed gracefully: what the client did not read
        is discarded instead of trickling out of the kernel's send queue to a stalled reader."""
        self._closed = True
        transport = self._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and not transport.is_closing():
                with contextlib.suppress(OSError, ValueError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            with contextlib.suppress(Exception):
                transport.abort()


class _HeadTooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _reason(exc: BaseException) -> str:
    """llhttp's reason, printable and short (never the request's bytes)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:120]
