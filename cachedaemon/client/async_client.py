"""The asyncio client of the daemon's HTTP API (``shared/API.md``), over one aiohttp session.

Objects (put/get/head/delete/list), cache administration (stats, trim, drop a local copy), the
key-value domains of the metastore, and health. Every failure is an exception of
:mod:`cachedaemon.errors`: an error response becomes the class of its ``code``
(:func:`~cachedaemon.client.wire.error_from_response`); a daemon that cannot be reached, or a
connection that breaks, :class:`~cachedaemon.errors.DaemonUnreachable`; no answer in
``timeout_s``, :class:`~cachedaemon.errors.DeadlineExceeded`. Reads of a missing object or key
raise :class:`~cachedaemon.errors.NotFound` (an HTTP client cannot tell a miss from a fault
any other way, and it keeps the CLI's exit status simple).

Lives on the event loop that first uses it (the session is created lazily there); not
thread-safe. :class:`~cachedaemon.client.Client` drives one on a private loop for sync callers.
Requests are not retried: a PUT body may be a one-shot stream.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import json
import os
import stat
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

import aiohttp
import yarl

from cachedaemon.client.types import (
    CacheStats,
    DomainInfo,
    Explanation,
    HotSetInfo,
    KvDelete,
    KvOp,
    KvPut,
    MissRatioCurve,
    ObjectInfo,
    ObjectMeta,
    Reservations,
    TrimResult,
    WarmStatus,
)
from cachedaemon.client.wire import (
    b64,
    cached_object_path,
    domain_path,
    error_from_response,
    explain_path,
    kv_path,
    object_path,
    query_string,
    unb64,
)
from cachedaemon.errors import CacheDaemonError, DaemonUnreachable, DeadlineExceeded

DEFAULT_URL = "http://127.0.0.1:8470"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CHUNK_BYTES = 256 * 1024

Progress = Callable[[int], None]
"""Called with the number of bytes just sent or received (on the client's loop thread)."""


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


PutData = bytes | bytearray | memoryview | os.PathLike[str] | BinaryIO | _Readable | AsyncIterable[bytes]
"""What :meth:`AsyncClient.put` sends: bytes, a file path (``pathlib.Path``; a plain ``str`` is
not taken for a path), a binary file object, or an async iterable of byte chunks."""

ByteRange = tuple[int, int | None] | str
"""``(first, last)`` inclusive, ``(first, None)`` to the end, or a raw ``bytes=...`` spec."""


def _range_header(byte_range: ByteRange | None) -> dict[str, str]:
    if byte_range is None:
        return {}
    if isinstance(byte_range, str):
        spec = byte_range if byte_range.startswith("bytes=") else f"bytes={byte_range}"
        return {"Range": spec}
    first, last = byte_range
    return {"Range": f"bytes={first}-{'' if last is None else last}"}


def _meta(key: str, resp: aiohttp.ClientResponse) -> ObjectMeta:
    length_header = resp.headers.get("Content-Length")
    length = int(length_header) if length_header and length_header.isdigit() else None
    content_range = resp.headers.get("Content-Range")
    size = length if length is not None else -1
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            size = int(total)
    return ObjectMeta(
        key=key,
        size=size,
        etag=resp.headers.get("ETag"),
        content_length=length,
        cache=resp.headers.get("X-Cache"),
        content_range=content_range,
    )


class ObjectReader:
    """An open GET response: :attr:`meta`, then the body as chunks (``async for``) or at once
    (:meth:`read`). Obtained from :meth:`AsyncClient.open`, valid inside its ``async with``."""

    def __init__(
        self, client: AsyncClient, resp: aiohttp.ClientResponse, meta: ObjectMeta, what: str
    ) -> None:
        self.meta = meta
        self._client = client
        self._resp = resp
        self._what = what

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.iter_chunks()

    async def iter_chunks(self, chunk_bytes: int | None = None) -> AsyncGenerator[bytes, None]:
        size = chunk_bytes or self._client.chunk_bytes
        with self._client._translating(self._what):
            async for chunk in self._resp.content.iter_chunked(size):
                yield chunk

    async def read(self) -> bytes:
        with self._client._translating(self._what):
            return await self._resp.read()


class AsyncClient:
    """Client of one daemon. ``url`` is its base (``http://127.0.0.1:8470``); ``token`` is sent
    as ``Authorization: Bearer``; ``timeout_s`` bounds connecting and each wait for data (not a
    whole transfer). ``timeout`` is accepted as another name for ``timeout_s``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float | None = None,
        timeout: float | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s if timeout_s is not None else (
            timeout if timeout is not None else DEFAULT_TIMEOUT_S)
        self.chunk_bytes = chunk_bytes
        self._session: aiohttp.ClientSession | None = None

    # --- life cycle --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # identity: object bytes must arrive exactly as stored (no decompression step).
            headers = {"Accept-Encoding": "identity"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_read=self.timeout_s),
                auto_decompress=False,
            )
        return self._session

    # --- the request core --------------------------------------------------------------------

    @contextlib.contextmanager
    def _translating(self, what: str) -> Iterator[None]:
        """Library exceptions of a request or a body read -> the exception tree."""
        try:
            yield
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error
            reason = os.strerror(err.errno) if err.errno else (str(err) or str(exc))
            raise DaemonUnreachable(f"cannot reach the daemon at {self.url}: {reason}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise DaemonUnreachable(
                f"cannot reach the daemon at {self.url}: no connection within "
                f"{self.timeout_s:g}s") from exc
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"{what}: the daemon at {self.url} did not answer within {self.timeout_s:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise DaemonUnreachable(
                f"{what}: the connection to the daemon at {self.url} failed: "
                f"{exc or type(exc).__name__}") from exc

    async def _open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> aiohttp.ClientResponse:
        """Send a request; return the response if its status is in ``ok`` (the caller releases
        it), else read the error body and raise it."""
        session = self._ensure_session()
        url = yarl.URL(self.url + path + query_string(query or {}), encoded=True)
        what = f"{method} {path}"
        with self._translating(what):
            resp = await session.request(method, url, data=data, headers=headers)
        if resp.status in ok:
            return resp
        try:
            with self._translating(what):
                body = await resp.read()
        except DaemonUnreachable:
            body = b""
        finally:
            resp.release()
        raise error_from_response(resp.status, body, resp.headers, what=what)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> bytes:
        resp = await self._open(method, path, query=query, data=data, headers=headers, ok=ok)
        try:
            with self._translating(f"{method} {path}"):
                return await resp.read()
        finally:
            resp.release()

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        body = await self._call(method, path, **kwargs)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CacheDaemonError(
                f"{method} {path}: the daemon answered with invalid JSON: {body[:200]!r}"
            ) from exc

    # --- objects -----------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: PutData,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        deadline_ms: int | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Store an object; returns once the bucket holds it. ``if_none_match`` creates only;
        ``if_match`` replaces only that etag; ``deadline_ms`` bounds the wait for cache space.
        ``size`` (the body length) is found for bytes and files, and lets the daemon refuse an
        oversized body up front; a stream of unknown size is sent chunked."""
        headers = {"Content-Type": "application/octet-stream"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = if_match
        if deadline_ms is not None:
            headers["X-Deadline-Ms"] = str(int(deadline_ms))
        body, length = self._body(data, size, progress)
        if length is not None:
            headers["Content-Length"] = str(length)
        doc = await self._json("PUT", object_path(key), data=body, headers=headers, ok=(200, 201))
        return ObjectInfo.from_json(doc)

    async def put_file(
        self, key: str, path: str | os.PathLike[str], **kwargs: Any
    ) -> ObjectInfo:
        """:meth:`put` with the contents of the file at ``path``."""
        return await self.put(key, Path(path), **kwargs)

    def _body(
        self, data: PutData, size: int | None, progress: Progress | None
    ) -> tuple[Any, int | None]:
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            if progress is None:
                return bytes(view) if not isinstance(data, bytes) else data, len(view)
            return self._chunks_of_bytes(view, progress), len(view)
        if isinstance(data, os.PathLike):
            path = Path(data)
            length = path.stat().st_size if size is None else size
            return self._chunks_of_path(path, progress), length
        if hasattr(data, "read"):
            reader: _Readable = data  # type: ignore[assignment]
            return self._chunks_of_file(reader, progress), (
                size if size is not None else _remaining_size(reader))
        if isinstance(data, AsyncIterable):
            return self._chunks_of_stream(data, progress), size
        raise TypeError(
            f"put() takes bytes, a pathlib.Path, a binary file or an async iterable of bytes, "
            f"not {type(data).__name__}")

    async def _chunks_of_bytes(self, view: memoryview, progress: Progress) -> AsyncIterator[bytes]:
        for start in range(0, len(view), self.chunk_bytes):
            chunk = bytes(view[start:start + self.chunk_bytes])
            yield chunk
            progress(len(chunk))

    async def _chunks_of_path(self, path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(path.open, "rb")
        try:
            async for chunk in self._chunks_of_file(f, progress):
                yield chunk
        finally:
            f.close()

    async def _chunks_of_file(
        self, f: _Readable, progress: Progress | None
    ) -> AsyncIterator[bytes]:
        while True:
            chunk = await asyncio.to_thread(f.read, self.chunk_bytes)
            if not chunk:
                return
            yield chunk
            if progress is not None:
                progress(len(chunk))

    async def _chunks_of_stream(
        self, stream: AsyncIterable[bytes], progress: Progress | None
    ) -> AsyncIterator[bytes]:
        async for chunk in stream:
            if chunk:
                yield bytes(chunk)
                if progress is not None:
                    progress(len(chunk))

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes (or the range's). Raises NotFound, InvalidRange (``.size``)."""
        return await self._call(
            "GET", object_path(key), headers=_range_header(byte_range), ok=(200, 206))

    @contextlib.asynccontextmanager
    async def open(
        self, key: str, *, byte_range: ByteRange | None = None
    ) -> AsyncIterator[ObjectReader]:
        """``async with client.open(key) as r:`` then ``r.meta`` and ``async for chunk in r``."""
        path = object_path(key)
        resp = await self._open("GET", path, headers=_range_header(byte_range), ok=(200, 206))
        try:
            yield ObjectReader(self, resp, _meta(key, resp), f"GET {path}")
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    async def get_into(
        self,
        key: str,
        out: BinaryIO,
        *,
        byte_range: ByteRange | None = None,
        progress: Progress | None = None,
        on_meta: Callable[[ObjectMeta], None] | None = None,
    ) -> ObjectMeta:
        """Stream the object into a binary file object (written in a worker thread, about a
        megabyte at a time). ``on_meta`` sees the headers before the first byte."""
        async with self.open(key, byte_range=byte_range) as reader:
            if on_meta is not None:
                on_meta(reader.meta)
            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in reader:
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= 1024 * 1024:
                    await asyncio.to_thread(out.write, b"".join(pending))
                    pending, pending_bytes = [], 0
                if progress is not None:
                    progress(len(chunk))
            if pending:
                await asyncio.to_thread(out.write, b"".join(pending))
            await asyncio.to_thread(out.flush)
            return reader.meta

    async def get_to_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        byte_range: ByteRange | None = None,
        progress: Progress | None = None,
        on_meta: Callable[[ObjectMeta], None] | None = None,
    ) -> ObjectMeta:
        """Download into ``path``. A regular (or new) file is written beside it and renamed into
        place, so a failed download leaves the old file alone; other paths (a FIFO,
        ``/dev/stdout``) are written directly."""
        target = Path(path)
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            with target.open("wb") as f:
                return await self.get_into(
                    key, f, byte_range=byte_range, progress=progress, on_meta=on_meta)
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".download", dir=target.parent or ".")
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                meta = await self.get_into(
                    key, f, byte_range=byte_range, progress=progress, on_meta=on_meta)
            await asyncio.to_thread(os.replace, tmp_name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return meta

    async def head(self, key: str) -> ObjectMeta:
        """The object's headers (size, etag). Raises NotFound."""
        path = object_path(key)
        resp = await self._open("HEAD", path)
        resp.release()
        return _meta(key, resp)

    async def delete(self, key: str) -> None:
        """Remove from the bucket and the cache. Succeeds when the object is absent too."""
        await self._call("DELETE", object_path(key), ok=(200, 204))

    async def list_page(
        self, prefix: str | None = None, *, start_after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[ObjectInfo], str | None]:
        """One page of :meth:`list`: the objects and the ``next`` key (None when done)."""
        doc = await self._json("GET", "/v1/objects", query={
            "prefix": prefix, "start_after": start_after, "limit": limit})
        objects = [ObjectInfo.from_json(o) for o in doc.get("objects", ())]
        nxt = doc.get("next")
        return objects, (str(nxt) if nxt is not None else None)

    async def list(
        self, prefix: str | None = None, *, start_after: str | None = None,
        page_size: int | None = None,
    ) -> AsyncGenerator[ObjectInfo, None]:
        """Every object (under ``prefix``) in key order, following ``next`` page by page."""
        after = start_after
        while True:
            objects, after = await self.list_page(prefix, start_after=after, limit=page_size)
            for info in objects:
                yield info
            if after is None:
                return

    # --- cache administration ----------------------------------------------------------------

    async def cache_stats(self) -> CacheStats:
        return CacheStats.from_json(await self._json("GET", "/v1/cache"))

    async def trim(self) -> TrimResult:
        """Trim now, to the low watermark."""
        doc = await self._json("POST", "/v1/cache/trim")
        return TrimResult(bytes_freed=int(doc.get("bytes_freed", 0)),
                          objects_freed=int(doc.get("objects_freed", 0)))

    async def drop_cached(self, key: str) -> None:
        """Drop the local copy only (the bucket keeps the object)."""
        await self._call("DELETE", cached_object_path(key), ok=(200, 204))

    async def mrc(self) -> MissRatioCurve:
        """The miss-ratio curve: the hit ratio the cache would have at other sizes."""
        return MissRatioCurve.from_json(await self._json("GET", "/v1/cache/mrc"))

    async def explain(self, key: str) -> Explanation:
        """Why ``key`` is, or is not, in the cache."""
        return Explanation.from_json(await self._json("GET", explain_path(key)))

    async def reservations(self) -> Reservations:
        """Every live reservation of cache space and every queued request."""
        return Reservations.from_json(await self._json("GET", "/v1/cache/reservations"))

    async def warm(self, source: str = "any", *, max_bytes: int | None = None,
                   timeout_s: float | None = None) -> WarmStatus:
        """Start warming the cache from the hot set ``source`` (a node id, or ``any``)
        published; returns at once with the warm-up's status (poll :meth:`warm_status`)."""
        body: dict[str, Any] = {"from": source}
        if max_bytes is not None:
            body["bytes"] = max_bytes
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return WarmStatus.from_json(await self._json(
            "POST", "/v1/cache/warm", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, ok=(200, 202)))

    async def warm_status(self) -> WarmStatus:
        return WarmStatus.from_json(await self._json("GET", "/v1/cache/warm"))

    async def hotsets(self) -> builtins.list[HotSetInfo]:
        """The hot sets published in the bucket, newest first."""
        doc = await self._json("GET", "/v1/cache/hotsets")
        return [HotSetInfo.from_json(h) for h in doc.get("hotsets", ())]

    async def publish_hotset(self) -> HotSetInfo:
        """Publish this daemon's hot set now."""
        return HotSetInfo.from_json(await self._json("POST", "/v1/cache/hotset"))

    # --- key-value domains -------------------------------------------------------------------

    async def kv_put(self, domain: str, key: bytes | str, value: bytes) -> None:
        """Durable once this returns. A domain is created on first write."""
        await self._call("PUT", kv_path(domain, key), data=bytes(value), ok=(200, 201, 204),
                         headers={"Content-Type": "application/octet-stream"})

    async def kv_get(self, domain: str, key: bytes | str) -> bytes:
        """The value. Raises NotFound (no such key, or a domain never written)."""
        return await self._call("GET", kv_path(domain, key))

    async def kv_delete(self, domain: str, key: bytes | str) -> None:
        await self._call("DELETE", kv_path(domain, key), ok=(200, 204))

    async def kv_batch(
        self, domain: str, ops: Iterable[KvOp | tuple[str, bytes | str] | tuple[str, bytes | str, bytes]]
    ) -> None:
        """Apply puts and deletes atomically. ``ops`` are :class:`KvPut`/:class:`KvDelete`, or
        tuples ``("put", key, value)`` / ``("delete", key)``."""
        body: list[dict[str, str]] = []
        for op in ops:
            if isinstance(op, tuple):
                op = _op_from_tuple(op)
            if isinstance(op, KvPut):
                body.append({"op": "put", "key": b64(op.key), "value": b64(op.value)})
            else:
                body.append({"op": "delete", "key": b64(op.key)})
        await self._call(
            "POST", domain_path(domain, "/batch"), data=json.dumps({"ops": body}).encode(),
            headers={"Content-Type": "application/json"}, ok=(200, 204))

    async def kv_scan_page(
        self,
        domain: str,
        *,
        start: bytes | str | None = None,
        end: bytes | str | None = None,
        prefix: bytes | str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> tuple[builtins.list[tuple[bytes, bytes]], bytes | None]:
        """One page of :meth:`kv_scan`: ``(key, value)`` pairs and ``next`` (None when done)."""
        doc = await self._json("GET", domain_path(domain, "/scan"), query={
            "start": None if start is None else b64(start),
            "end": None if end is None else b64(end),
            "prefix": None if prefix is None else b64(prefix),
            "limit": limit,
            "reverse": 1 if reverse else None,
        })
        items = [(unb64(it.get("key")), unb64(it.get("value"))) for it in doc.get("items", ())]
        nxt = doc.get("next")
        return items, (None if nxt is None else unb64(nxt))

    async def kv_scan(
        self,
        domain: str,
        *,
        start: bytes | str | None = None,
        end: bytes | str | None = None,
        prefix: bytes | str | None = None,
        reverse: bool = False,
        page_size: int | None = None,
    ) -> AsyncGenerator[tuple[bytes, bytes], None]:
        """``(key, value)`` in key order (descending with ``reverse``) from ``start``
        (inclusive) to ``end`` (exclusive), following ``next``. Each page is a consistent
        snapshot; the whole scan is not."""
        while True:
            items, nxt = await self.kv_scan_page(
                domain, start=start, end=end, prefix=prefix, limit=page_size, reverse=reverse)
            for item in items:
                yield item
            if nxt is None:
                return
            if reverse:
                end = nxt
            else:
                start = nxt

    async def domain_info(self, domain: str) -> DomainInfo:
        return DomainInfo.from_json(await self._json("GET", domain_path(domain)))

    async def domains(self) -> builtins.list[str]:
        doc = await self._json("GET", "/v1/domains")
        return [str(name) for name in doc.get("domains", ())]

    async def flush(self, domain: str) -> None:
        """Memtable to SSTs in the bucket, manifest written."""
        await self._call("POST", domain_path(domain, "/flush"), ok=(200, 204))

    async def compact(self, domain: str) -> None:
        await self._call("POST", domain_path(domain, "/compact"), ok=(200, 204))

    # --- health ------------------------------------------------------------------------------

    async def healthz(self) -> bool:
        """True when the process serves (raises DaemonUnreachable when it cannot be reached)."""
        resp = await self._open("GET", "/healthz", ok=(200, 503))
        resp.release()
        return resp.status == 200

    async def readyz(self) -> bool:
        """True after startup recovery, False before it and while shutting down."""
        resp = await self._open("GET", "/readyz", ok=(200, 503))
        resp.release()
        return resp.status == 200


def _op_from_tuple(op: tuple[Any, ...]) -> KvOp:
    if len(op) == 3 and op[0] == "put":
        return KvPut(op[1], op[2])
    if len(op) == 2 and op[0] == "delete":
        return KvDelete(op[1])
    raise TypeError(f"a batch op is ('put', key, value) or ('delete', key), not {op!r}")


def _remaining_size(f: _Readable) -> int | None:
    """Bytes left in a seekable file object (a regular file, ``BytesIO``): end - position.
    None for pipes, sockets and other streams, which are then sent chunked."""
    try:
        fileno = getattr(f, "fileno", None)
        if fileno is not None:
            with contextlib.suppress(io.UnsupportedOperation):
                if not stat.S_ISREG(os.fstat(fileno()).st_mode):
                    return None
        seekable = getattr(f, "seekable", None)
        if seekable is None or not seekable():
            return None
        pos = f.tell()  # type: ignore[attr-defined]
        end = f.seek(0, os.SEEK_END)  # type: ignore[attr-defined]
        f.seek(pos)  # type: ignore[attr-defined]
        return max(0, int(end) - int(pos))
    except (OSError, ValueError):
        return None
