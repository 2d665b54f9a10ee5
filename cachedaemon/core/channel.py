"""Links between shards: calls and posts as messages over Unix stream sockets.

Every shard owns one :class:`ShardLinks`, on its own loop. It listens on
``<directory>/<shard>.sock`` (the directory is private to the daemon, mode 0700) and serves
the calls and posts other shards send to the services registered here
(:meth:`ShardLinks.register`); and it opens one outgoing link per peer shard on first use,
through which it sends its own calls and posts to that shard. Frames are those of
:mod:`cachedaemon.core.messages`. A link starts with a HELLO carrying the daemon's secret.

Semantics, as Seastar's ``smp::submit_to`` has them:

* ``call`` returns the method's result or raises its exception (rebuilt from data); the
  caller's cancellation cancels the remote task (a CANCEL frame); a ``deadline`` travels with
  the call and cancels the remote work when it passes (:class:`DeadlineExceeded`).
* ``post`` sends and forgets. Posts and calls from one shard to another run on the target in
  the order they were sent, as long as the methods they name are synchronous (an async method
  starts in order and then runs concurrently).
* A shard that is gone, or goes away while a call is pending, raises :class:`ShardStopped`;
  the next call tries to link again (a restarted shard listens on the same path).
* A call to a service that is not registered yet waits for it (shards start concurrently);
  posts to it are queued in order.

Only method names and plain data cross; dunder methods are never callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from cachedaemon.core import messages as m
from cachedaemon.errors import DeadlineExceeded, ShardStopped

log = logging.getLogger("cachedaemon.channel")
T = TypeVar("T")

#: How long a call waits for its target service to be registered (start-up) before failing.
REGISTER_WAIT_S = 60.0
CONNECT_TIMEOUT_S = 5.0


def socket_path(directory: str, shard: int) -> str:
    return os.path.join(directory, f"{shard}.sock")


class _FrameReader:
    """Splits a byte stream into frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[m.Frame]:
        buf = self._buf
        buf += data
        out: list[m.Frame] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = m.HEADER.unpack_from(buf, pos)
            if length > m.MAX_FRAME:
                raise m.MessageError(f"frame of {length} bytes is over the limit")
            if n - pos - 4 < length:
                break
            # A copy: decoded payloads (msgspec.Raw) keep referring to the bytes they came from.
            out.append(m.decode_frame(bytes(buf[pos + 4:pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


class _Link(asyncio.Protocol):
    """One connection: outgoing (we send calls/posts) or incoming (we serve them)."""

    def __init__(self, links: ShardLinks, peer: int | None) -> None:
        self.links = links
        self.peer = peer  # known for outgoing links; set by HELLO for incoming ones
        self.outgoing = peer is not None
        self.transport: asyncio.Transport | None = None
        self.reader = _FrameReader()
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.greeted = peer is not None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.links._lost(self)
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    def send(self, frame: bytes) -> None:
        if self.closed or self.transport is None:
            raise ShardStopped(f"shard {self.peer} is not reachable")
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except m.MessageError as exc:
            log.error("link with shard %s: %s; closing it", self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return
        for frame in frames:
            self._handle(frame)

    def _handle(self, frame: m.Frame) -> None:
        kind, ident, a, b, payload = frame
        if not self.greeted:
            if kind != m.HELLO or not isinstance(b, bytes) or \
                    not hmac.compare_digest(b, self.links.secret):
                log.warning("refused a shard link without the daemon's secret")
                if self.transport is not None:
                    self.transport.close()
                return
            self.greeted = True
            self.peer = ident
            return
        if kind == m.OK or kind == m.ERROR:
            assert self.peer is not None
            entry = self.links._pending.get(self.peer, {}).pop(ident, None)
            if entry is None:
                return  # cancelled meanwhile
            fut, result_type = entry
            if fut.done():
                return
            try:
                if kind == m.OK:
                    fut.set_result(m.decode_value(payload, result_type))
                else:
                    fut.set_exception(m.rebuild_error(a, b, m.decode_value(payload) or {}))
            except Exception as exc:  # a result that does not decode as asked
                fut.set_exception(exc)
        elif kind == m.CALL:
            self.links._serve_call(self, ident, a, b, payload)
        elif kind == m.POST:
            self.links._serve_post(a, payload)
        elif kind == m.CANCEL:
            task = self.tasks.pop(ident, None)
            if task is not None:
                task.cancel()


class ShardLinks:
    """This shard's message endpoints (see the module doc). Lives on its shard's loop."""

    def __init__(self, shard: int, directory: str, secret: bytes) -> None:
        self.shard = shard
        self.directory = directory
        self.secret = secret
        self._services: dict[str, object] = {}
        self._registered: dict[str, asyncio.Event] = {}
        self._queued_posts: dict[str, list[tuple[str, list[Any]]]] = {}
        self._out: dict[int, _Link] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}
        # Per peer: calls awaiting an answer, and frames sent before its link was up.
        self._pending: dict[int, dict[int, tuple[asyncio.Future[Any], type[Any] | None]]] = {}
        self._backlog: dict[int, list[bytes]] = {}
        self._incoming: set[_Link] = set()
        self._server: asyncio.AbstractServer | None = None
        self._ids = 0
        self.on_peer_lost: Callable[[int], None] | None = None

    # --- serving ---------------------------------------------------------------------------

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        path = socket_path(self.directory, self.shard)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await loop.create_unix_server(lambda: self._accept(), path)

    def _accept(self) -> _Link:
        link = _Link(self, None)
        self._incoming.add(link)
        return link

    def register(self, name: str, service: object) -> None:
        """Serve ``service``'s methods as ``name`` on this shard."""
        self._services[name] = service
        for method, args in self._queued_posts.pop(name, []):
            self._run_post(name, method, args)
        event = self._registered.get(name)
        if event is not None:
            event.set()

    def unregister(self, name: str) -> None:
        self._services.pop(name, None)
        self._registered.pop(name, None)

    def _resolve(self, target: str) -> tuple[str, str]:
        service, _, method = target.partition(".")
        if not service or not method or method.startswith("__"):
            raise m.MessageError(f"bad call target {target!r}")
        return service, method

    def _serve_post(self, target: Any, payload: msgspec.Raw) -> None:
        try:
            service, method = self._resolve(str(target))
            args = m.decode_value(payload)
        except m.MessageError as exc:
            log.error("dropped a post: %s", exc)
            return
        if service not in self._services:
            self._queued_posts.setdefault(service, []).append((method, args))
            return
        self._run_post(service, method, args)

    def _run_post(self, service: str, method: str, args: list[Any]) -> None:
        try:
            result = getattr(self._services[service], method)(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_post_failure)
        except Exception as exc:
            log.error("post %s.%s failed: %r", service, method, exc, exc_info=exc)

    def _serve_call(self, link: _Link, ident: int, target: Any, deadline: Any,
                    payload: msgspec.Raw) -> None:
        try:
            service, method = self._resolve(str(target))
            args = m.decode_value(payload)
        except m.MessageError as exc:
            self._reply_error(link, ident, exc)
            return
        svc = self._services.get(service)
        if svc is not None:
            try:
                fn = getattr(svc, method)
                result = fn(*args)
            except Exception as exc:
                self._reply_error(link, ident, exc)
                return
            if not inspect.isawaitable(result):
                self._reply(link, ident, result)
                return
            coro: Any = result
        else:
            coro = self._call_when_registered(service, method, args)
        task = asyncio.ensure_future(coro)
        link.tasks[ident] = task
        timer = None
        if deadline is not None:
            delay = float(deadline) - time.monotonic()
            timer = asyncio.get_running_loop().call_later(max(0.0, delay), task.cancel)

        def done(t: asyncio.Task[Any]) -> None:
            if timer is not None:
                timer.cancel()
            if link.tasks.pop(ident, None) is None:
                return  # the caller cancelled: it waits for no answer
            if t.cancelled():
                self._reply_error(link, ident, DeadlineExceeded(
                    f"{target} ran past its deadline on shard {self.shard}"))
            elif (exc := t.exception()) is not None:
                self._reply_error(link, ident, exc)
            else:
                self._reply(link, ident, t.result())

        task.add_done_callback(done)

    async def _call_when_registered(self, service: str, method: str, args: list[Any]) -> Any:
        event = self._registered.setdefault(service, asyncio.Event())
        if service not in self._services:
            try:
                await asyncio.wait_for(event.wait(), REGISTER_WAIT_S)
            except TimeoutError:
                raise ShardStopped(f"service {service} is not running on shard "
                                   f"{self.shard}") from None
        result = getattr(self._services[service], method)(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _reply(self, link: _Link, ident: int, value: Any) -> None:
        if link.closed:
            return
        try:
            link.send(m.encode_frame(m.OK, ident, None, None, value))
        except m.MessageError as exc:
            self._reply_error(link, ident, exc)

    def _reply_error(self, link: _Link, ident: int, exc: BaseException) -> None:
        if link.closed:
            return
        name, message, fields = m.error_fields(exc)
        try:
            link.send(m.encode_frame(m.ERROR, ident, name, message, fields))
        except m.MessageError:
            link.send(m.encode_frame(m.ERROR, ident, name, message, {}))

    # --- sending ---------------------------------------------------------------------------

    def _send(self, shard: int, frame: bytes) -> None:
        """Send now, or queue behind the frames waiting for the link to come up."""
        link = self._out.get(shard)
        if link is not None and not link.closed and shard not in self._backlog:
            link.send(frame)
            return
        self._backlog.setdefault(shard, []).append(frame)
        if shard not in self._connecting:
            task = asyncio.ensure_future(self._connect(shard))
            self._connecting[shard] = task

    async def _connect(self, shard: int) -> None:
        loop = asyncio.get_running_loop()
        path = socket_path(self.directory, shard)
        try:
            try:
                _, link = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: _Link(self, shard), path),
                    CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                self._backlog.pop(shard, None)
                self._fail_pending(shard, ShardStopped(f"shard {shard} is not running ({exc})"))
                return
            link.send(m.encode_frame(m.HELLO, self.shard, None, self.secret, None))
            for frame in self._backlog.pop(shard, []):
                link.send(frame)
            self._out[shard] = link
        finally:
            self._connecting.pop(shard, None)

    def _fail_pending(self, shard: int, exc: BaseException) -> None:
        for fut, _ in self._pending.pop(shard, {}).values():
            if not fut.done():
                fut.set_exception(exc)

    def _lost(self, link: _Link) -> None:
        self._incoming.discard(link)
        if link.outgoing and link.peer is not None and self._out.get(link.peer) is link:
            del self._out[link.peer]
            self._fail_pending(link.peer, ShardStopped(
                f"shard {link.peer} went away during the call"))
            if self.on_peer_lost is not None:
                self.on_peer_lost(link.peer)

    async def call(self, shard: int, service: str, method: str, args: list[Any] | tuple[Any, ...],
                   *, deadline: float | None = None, result_type: type[T] | None = None) -> Any:
        """Run ``service.method(*args)`` on ``shard``; its result (as ``result_type``)."""
        self._ids += 1
        ident = self._ids
        frame = m.encode_frame(m.CALL, ident, f"{service}.{method}", deadline, list(args))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(shard, {})
        pending[ident] = (fut, result_type)
        try:
            self._send(shard, frame)
            return await fut
        except asyncio.CancelledError:
            if pending.pop(ident, None) is not None:
                with contextlib.suppress(ShardStopped):
                    self._send(shard, m.encode_frame(m.CANCEL, ident))
            raise
        finally:
            pending.pop(ident, None)

    def post(self, shard: int, service: str, method: str,
             args: list[Any] | tuple[Any, ...]) -> None:
        """Send ``service.method(*args)`` to ``shard`` and forget it (see the module doc)."""
        self._send(shard, m.encode_frame(m.POST, 0, f"{service}.{method}", None, list(args)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in [*self._out.values(), *self._incoming]:
            if link.transport is not None:
                link.transport.close()
        for shard in list(self._pending):
            self._fail_pending(shard, ShardStopped(f"shard {self.shard} is stopping"))
        self._out.clear()
        self._incoming.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path(self.directory, self.shard))


def _log_post_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, ShardStopped):
        log.error("a posted method failed: %r", exc, exc_info=exc)
