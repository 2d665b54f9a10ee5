"""Zero-copy responses: ``sendfile(2)`` from a cached file straight into the client's socket.

uvloop does not implement ``loop.sendfile`` (so aiohttp's ``FileResponse`` falls back to reading
the file in small chunks through the executor). :func:`send_file` instead hands the whole body
to one worker-thread job that loops ``os.sendfile`` on a ``dup`` of the connection's socket,
waiting with ``poll`` whenever the socket buffer is full: one thread hop per response, no copy
through Python. It is used only once the response headers have left (the transport's write
buffer is empty) and the loop writes nothing else on the connection until the job ends. The
``dup`` keeps the socket alive even if the loop closes the transport meanwhile (the job then
fails with EPIPE); a cancelled handler shuts the socket down for writing so the job stops at
once; a client that stops reading for :data:`STALL_TIMEOUT_S` fails the job.

The jobs run in their own pool (:data:`MAX_SENDERS` threads, process-wide, shared by the
shards) so slow clients cannot starve the default executor that file operations use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

MAX_SENDERS = 64
STALL_TIMEOUT_S = 60.0

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(MAX_SENDERS, thread_name_prefix="cachedaemon-sendfile")
    return _executor


def _send_all(sock_fd: int, file_fd: int, offset: int, count: int) -> None:
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    while count > 0:
        try:
            n = os.sendfile(sock_fd, file_fd, offset, count)
        except BlockingIOError:
            if not poller.poll(int(STALL_TIMEOUT_S * 1000)):
                raise ConnectionResetError("the client stopped reading") from None
            continue
        if n == 0:
            raise ConnectionResetError("the cached file shrank while it was being sent")
        offset += n
        count -= n


def can_send_file(request: web.BaseRequest) -> bool:
    """True if the connection is a plain TCP socket whose write buffer is empty."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    if transport.get_extra_info("sslcontext") is not None:
        return False
    sock = transport.get_extra_info("socket")
    return sock is not None and transport.get_write_buffer_size() == 0


async def send_file(request: web.BaseRequest, file_fd: int, offset: int, count: int) -> None:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` on the request's connection.

    Call after the response's headers were sent and :func:`can_send_file` is True."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    sock_fd = os.dup(sock.fileno())
    try:
        fut = asyncio.get_running_loop().run_in_executor(
            _pool(), _send_all, sock_fd, file_fd, offset, count)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                socket.socket(fileno=os.dup(sock_fd)).shutdown(socket.SHUT_WR)
            with contextlib.suppress(BaseException):
                await fut
            raise
    finally:
        os.close(sock_fd)
