"""One parsed HTTP request as a handler sees it: method, raw target, headers, query, and body.

Built by :class:`~cachedaemon.server.http.protocol.HttpConnection` when a request's headers are
complete; handed to the application; dead when its response is finished. Lives on the shard
(event loop) of the connection that carried it.

* :class:`Headers`: the request headers, looked up case-insensitively (keys are stored lower
  case). A header sent several times is one entry, its values joined with ``", "`` (RFC 9110
  §5.3), which is how lists such as ``If-Match`` are meant to be read.
* :class:`Body`: the request body as it arrives. Reading waits for bytes; a wait that sees no
  byte for ``server.body_timeout`` raises :class:`~cachedaemon.errors.RequestTimeout` (408);
  a client that goes away raises :class:`ConnectionResetError`. The first read answers
  ``Expect: 100-continue``, so a handler that refuses a request before reading its body never
  invites the client to send it. The buffer is bounded: past :data:`BODY_HIGH_WATER` bytes
  unread the connection stops reading from the socket until the handler catches up.

The method names follow aiohttp's (``content.read``, ``iter_any``, ``raw_path``, ``query``)
because the handlers were written against them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from cachedaemon.errors import RequestTimeout, TooLarge

if TYPE_CHECKING:
    from cachedaemon.server.http.protocol import HttpConnection

#: Unread body bytes past which the connection stops reading the socket.
BODY_HIGH_WATER = 1 << 20
#: ... and below which it reads again.
BODY_LOW_WATER = 256 << 10


class Headers(dict[str, str]):
    """Request headers: lower-case names -> values, looked up case-insensitively."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Query(dict[str, str]):
    """Query parameters: the first value of each name (``getall`` for every value)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self._pairs = pairs
        for name, value in pairs:
            self.setdefault(name, value)

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self._pairs if k == name]


_EMPTY_QUERY = Query([])


def parse_query(qs: str) -> list[tuple[str, str]]:
    """``parse_qsl(qs, keep_blank_values=True)``, without its machinery for the common query
    that has nothing to decode (no ``%``, no ``+``): an L1 lookup's ``offset=N`` is parsed on
    every request."""
    if "%" in qs or "+" in qs:
        return parse_qsl(qs, keep_blank_values=True)
    pairs = []
    for part in qs.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


class Body:
    """The request body, fed by the connection, read by the handler (see the module doc)."""

    __slots__ = ("_chunks", "_conn", "_continue", "_eof", "_exc", "_waiter", "buffered",
                 "length", "received")

    @classmethod
    def complete_body(cls, data: bytes) -> Body:
        """A body that arrived whole elsewhere (a request forwarded from another shard)."""
        body = cls(None, len(data), False)
        if data:
            body.feed(data)
        body.feed_eof()
        return body

    def __init__(self, conn: HttpConnection | None, length: int | None,
                 expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue
        self.length = length  # Content-Length, None when chunked
        self.received = 0  # body bytes received so far
        self.buffered = 0  # received, not yet read

    # --- the connection's side -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        n = len(data)
        self.received += n
        self.buffered += n
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    @property
    def waiting(self) -> bool:
        """True while the handler waits for bytes (the body timeout runs then)."""
        return self._waiter is not None

    @property
    def continue_pending(self) -> bool:
        """True if the client asked ``Expect: 100-continue`` and was not answered yet."""
        return self._continue

    def drop_continue(self) -> None:
        self._continue = False

    # --- the handler's side ----------------------------------------------------------------

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    @property
    def complete(self) -> bool:
        """True once the whole body was received (read or not)."""
        return self._eof

    async def _wait(self) -> None:
        conn = self._conn
        assert conn is not None, "a complete body never waits"
        if self._continue:
            self._continue = False
            conn.send_continue()
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        conn.body_wait_started()
        try:
            await self._waiter
        finally:
            self._waiter = None
            conn.body_wait_ended()

    async def readany(self) -> bytes:
        """The next bytes received (all that are buffered), or ``b""`` at the end."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._consumed(len(data))
        return data

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all of the body when ``n < 0``); ``b""`` at the end."""
        if n < 0:
            parts: list[bytes] = []
            while True:
                data = await self.readany()
                if not data:
                    return b"".join(parts)
                parts.append(data)
        while True:
            if self._chunks:
                first = self._chunks[0]
                if len(first) <= n:
                    self._chunks.pop(0)
                    self._consumed(len(first))
                    return first
                self._chunks[0] = first[n:]
                self._consumed(n)
                return first[:n]
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()

    async def read_all(self, limit: int, what: str = "body") -> bytes:
        """The whole body; :class:`TooLarge` as soon as it passes ``limit`` bytes."""
        if self.length is not None and self.length > limit:
            raise TooLarge(f"{what} of {self.length} bytes is over the limit of {limit} bytes")
        parts: list[bytes] = []
        total = 0
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise TooLarge(f"{what} is over the limit of {limit} bytes")
            parts.append(data)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.readany()
            if not data:
                return
            yield data

    def _consumed(self, n: int) -> None:
        before = self.buffered
        self.buffered = before - n
        if before >= BODY_LOW_WATER > self.buffered and self._conn is not None:
            self._conn.body_drained()


class Request:
    """One request (see the module doc). ``raw_path`` is the request target as sent."""

    __slots__ = ("_query", "conn", "content", "headers", "keep_alive", "method", "path",
                 "query_string", "raw_path", "remote", "version")

    def __init__(self, conn: HttpConnection | None, method: str, target: str, headers: Headers,
                 version: str, keep_alive: bool, content: Body, remote: str) -> None:
        self.conn = conn
        self.method = method
        self.raw_path = target
        path, _, qs = target.partition("?")
        self.path = path
        self.query_string = qs
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.content = content
        self.remote = remote
        self._query: Query | None = None

    @classmethod
    def forwarded(cls, method: str, target: str, headers: dict[str, str], body: bytes,
                  remote: str) -> Request:
        """A request received by another shard and handed to this one whole (no connection:
        its handler must answer with a complete :class:`Response`)."""
        return cls(None, method, target, Headers(headers), "1.1", True,
                   Body.complete_body(body), remote)

    @property
    def query(self) -> Query:
        q = self._query
        if q is None:
            q = self._query = Query(parse_query(self.query_string)) \
                if self.query_string else _EMPTY_QUERY
        return q

    @property
    def content_length(self) -> int | None:
        return self.content.length


__all__ = ["BODY_HIGH_WATER", "BODY_LOW_WATER", "Body", "Headers", "Query", "Request",
           "RequestTimeout", "parse_query"]
