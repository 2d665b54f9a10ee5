"""The daemon's HTTP/1.1 server: uvloop transports, llhttp parsing (``httptools``), our limits.

Chosen by measurement over aiohttp's server (``docs/performance.md``): on this project's
machine a bare handler answers ~104k requests/s here against ~28k/s with aiohttp, and the
per-request budget of the hot routes is what the daemon is judged on. Handlers see
:class:`Request` and return :class:`Response`/:class:`StreamResponse`; the protocol, its
timeouts and flow control live in :mod:`.protocol`, accepting and shutting down in
:mod:`.server`. aiohttp stays the HTTP *client* (``cachedaemon.client``).
"""

from cachedaemon.server.http.request import Body, Headers, Query, Request
from cachedaemon.server.http.response import Response, StreamResponse
from cachedaemon.server.http.server import HttpServer, Limits

__all__ = ["Body", "Headers", "HttpServer", "Limits", "Query", "Request", "Response",
           "StreamResponse"]
