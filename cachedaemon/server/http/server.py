"""A shard's HTTP server: accepts connections on a listening socket and owns them.

One :class:`HttpServer` per shard, on that shard's loop. It accepts on an already bound and
listening socket (every shard has its own, on one port, with ``SO_REUSEPORT``), admits at most
``max_connections`` connections at once (past that a new connection is closed at once, so
the process never runs out of descriptors for its own files), carries the ``server.*``
timeouts its connections apply, and shuts down in two steps: :meth:`begin_shutdown` closes
idle connections and makes every connection close after its response (it still accepts, so
``/readyz`` can answer 503 to load balancers while requests drain); :meth:`abort_all` stops
accepting and drops what is left (running handlers are cancelled).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from cachedaemon.server.http.protocol import App, HttpConnection


@dataclass(frozen=True)
class Limits:
    """The ``server.*`` settings a connection applies (seconds, and a connection count)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 1024


class HttpServer:
    """One shard's server (see the module doc)."""

    def __init__(self, app: App, limits: Limits,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.app = app
        self.loop = loop or asyncio.get_running_loop()
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_connections = limits.max_connections
        self.closing = False
        self.connections: set[HttpConnection] = set()
        self.refused = 0  # connections closed at once (over max_connections)
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket, backlog: int = 1024) -> None:
        self._server = await self.loop.create_server(
            lambda: HttpConnection(self), sock=sock, backlog=backlog)

    def admit(self, conn: HttpConnection) -> bool:
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)

    @property
    def busy(self) -> int:
        """Requests being answered now."""
        return sum(1 for c in self.connections if c.busy)

    def begin_shutdown(self) -> None:
        """Close idle connections; every connection closes after its next response."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()

    def abort_all(self) -> None:
        """Stop accepting and drop every connection now (running handlers are cancelled)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
