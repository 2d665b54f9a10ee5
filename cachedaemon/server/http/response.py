"""Responses a handler returns, and the bytes of their status line and headers.

* :class:`Response`: status, headers and a body held in memory; the connection writes it in
  one go after the handler returns.
* :class:`StreamResponse`: a response the handler sends itself while it runs: ``await
  resp.prepare(request)`` sends the head, ``write`` sends body bytes (waiting while the
  client's socket is full, at most ``server.body_timeout`` without progress), ``sendfile``
  sends a file's bytes with ``sendfile(2)`` on the event loop, ``write_eof`` ends it. The
  length is ``content_length`` (or a ``Content-Length`` header) when known, else the body is
  sent chunked.

HEAD responses carry the headers of the GET they stand for (``Content-Length`` included) and
never a body: the connection drops whatever body a handler gives one.

The names follow aiohttp's ``web.Response``/``web.StreamResponse`` because the handlers were
written against them. Used on the shard of the request's connection.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachedaemon.server.http.protocol import HttpConnection
    from cachedaemon.server.http.request import Request

SERVER_NAME = "cachedaemon"

_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}
_STATUS_LINES[499] = b"HTTP/1.1 499 Client Closed Request\r\n"
#: Statuses that never carry a body nor a Content-Length of one.
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} Status {status}\r\n".encode()
    return line


class _DateHeader:
    """``Date: ...\\r\\nServer: ...\\r\\n``, formatted at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = (f"Date: {formatdate(now, usegmt=True)}\r\n"
                          f"Server: {SERVER_NAME}\r\n").encode()
        return self._line


DATE = _DateHeader()


def encode_head(status: int, headers: Mapping[str, str], length: int | None, *,
                chunked: bool, keep_alive: bool, http10: bool = False, raw: bytes = b""
                ) -> bytes:
    """The status line and header block of a response.

    ``length`` is the Content-Length to announce (None: chunked or no body); a
    ``Content-Length`` header in ``headers`` (spelled so) wins: HEAD responses use that."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if "\n" in text.replace("\r\n", ""):
        raise ValueError("a response header has a line break in its value")
    tail = b""
    if status not in NO_BODY_STATUSES and "Content-Length" not in headers:
        if chunked:
            tail = b"Transfer-Encoding: chunked\r\n"
        elif length is not None:
            tail = b"Content-Length: %d\r\n" % length
    if not keep_alive:
        tail += b"Connection: close\r\n"
    elif http10:
        tail += b"Connection: keep-alive\r\n"
    return b"".join((status_line(status), DATE.get(), text.encode("latin-1", "replace"), raw,
                     tail, b"\r\n"))


class StreamResponse:
    """A response sent by the handler as it goes (see the module doc); the base of
    :class:`Response`, as in aiohttp, so a handler is typed ``-> StreamResponse`` either way."""

    __slots__ = ("_chunked", "_conn", "_eof", "_head", "body", "content_length", "headers",
                 "raw", "sent", "status")

    def __init__(self, *, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.raw = b""  # header lines already encoded (hot paths), sent after ``headers``
        self.body = b""
        self.content_length: int | None = None
        self._conn: HttpConnection | None = None
        self._chunked = False
        self._eof = False
        self._head = False  # a HEAD request: send no body
        self.sent = 0  # body bytes sent

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    @property
    def finished(self) -> bool:
        return self._eof

    async def prepare(self, request: Request) -> None:
        """Send the status line and headers."""
        if self._conn is not None:
            return
        conn = request.conn
        if conn is None:
            raise RuntimeError("a forwarded request is answered with a complete Response")
        self._head = request.method == "HEAD"
        length = self.content_length
        declared = self.headers.get("Content-Length")  # canonical spelling, as encode_head
        if declared is not None:
            length = int(declared)
        self._chunked = length is None and self.status not in NO_BODY_STATUSES
        if length is not None:
            self.content_length = length
        self._conn = conn
        conn.start_response(self, length, chunked=self._chunked)

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            raise RuntimeError("write() before prepare()")
        if not data or self._head:
            return
        self.sent += len(data)
        if self._chunked:
            conn.write(b"%x\r\n" % len(data))
            conn.write(data)
            conn.write(b"\r\n")
        else:
            conn.write(data)
        await conn.drain()

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of file ``fd`` from ``offset`` (``sendfile(2)``, no copy)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("sendfile() before prepare()")
        if self._head or count <= 0:
            return
        if self._chunked:
            conn.write(b"%x\r\n" % count)
            await conn.sendfile(fd, offset, count)
            conn.write(b"\r\n")
        else:
            await conn.sendfile(fd, offset, count)
        self.sent += count

    async def write_eof(self) -> None:
        conn = self._conn
        if conn is None or self._eof:
            return
        self._eof = True
        if self._chunked and not self._head:
            conn.write(b"0\r\n\r\n")
        await conn.drain()

    @property
    def complete(self) -> bool:
        """True if the whole announced body went out (the connection can be reused)."""
        if not self._eof:
            return False
        return self._head or self._chunked or self.content_length is None \
            or self.sent == self.content_length


class Response(StreamResponse):
    """A complete response (see the module doc): the connection sends it after the handler
    returns."""

    __slots__ = ()

    def __init__(self, *, status: int = 200, body: bytes | None = None, text: str | None = None,
                 content_type: str | None = None,
                 headers: Mapping[str, str] | None = None, raw: bytes = b"") -> None:
        super().__init__(status=status, headers=headers)
        self.raw = raw
        if text is not None:
            body = text.encode("utf-8")
        if body is not None:
            self.body = body
        if content_type is not None:
            self.headers["Content-Type"] = content_type


__all__ = ["NO_BODY_STATUSES", "Response", "StreamResponse", "encode_head", "status_line"]
