"""The blocking client: :class:`AsyncClient` driven on a private event loop in a daemon thread.

Each method submits the async method to that loop and waits for its result, so both clients
share one implementation (request spelling, errors, pagination). Iterators (``list``,
``kv_scan``, an open object's chunks) pull one item per hop. Progress callbacks run on the
client's loop thread. One :class:`Client` may be used from several threads (calls are
serialised on its loop); ``close()`` (or ``with``) stops the loop and its thread.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from cachedaemon.client.async_client import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_URL,
    AsyncClient,
    ByteRange,
    ObjectReader,
    Progress,
    PutData,
)
from cachedaemon.client.types import (
    CacheStats,
    DomainInfo,
    Explanation,
    HotSetInfo,
    KvOp,
    MissRatioCurve,
    ObjectInfo,
    ObjectMeta,
    Reservations,
    TrimResult,
    WarmStatus,
)

T = TypeVar("T")


async def _next(agen: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await agen.__anext__()
    except StopAsyncIteration:
        return False, None


async def _from_sync(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


class SyncObjectReader:
    """The blocking view of an :class:`ObjectReader`: ``meta``, ``for chunk in reader``,
    ``read()``."""

    def __init__(self, client: Client, reader: ObjectReader) -> None:
        self._client = client
        self._reader = reader
        self.meta = reader.meta

    def __iter__(self) -> Generator[bytes, None, None]:
        return self.iter_chunks()

    def iter_chunks(self, chunk_bytes: int | None = None) -> Generator[bytes, None, None]:
        return self._client._iterate(self._reader.iter_chunks(chunk_bytes))

    def read(self) -> bytes:
        return self._client._run(self._reader.read())


class Client:
    """Blocking client of one daemon; same arguments and methods as :class:`AsyncClient`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout_s: float | None = None,
        timeout: float | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self._async = AsyncClient(
            url, token=token, timeout_s=timeout_s, timeout=timeout, chunk_bytes=chunk_bytes)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cachedaemon-client", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return self._async.url

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    # --- bridging ----------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in the caller: stop the request on the loop too.
            future.cancel()
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Generator[T, None, None]:
        try:
            while True:
                more, item = self._run(_next(agen))
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._closed:
                self._run(aclose())

    # --- objects -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: PutData | Iterable[bytes],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        deadline_ms: int | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """As :meth:`AsyncClient.put`; also takes a plain iterable of byte chunks."""
        body: Any = data
        if not isinstance(data, bytes | bytearray | memoryview | os.PathLike) and not hasattr(
            data, "read") and not hasattr(data, "__aiter__") and isinstance(data, Iterable):
            body = _from_sync(data)
        return self._run(self._async.put(
            key, body, if_none_match=if_none_match, if_match=if_match,
            deadline_ms=deadline_ms, size=size, progress=progress))

    def put_file(self, key: str, path: str | os.PathLike[str], **kwargs: Any) -> ObjectInfo:
        return self._run(self._async.put_file(key, path, **kwargs))

    def get(self, key: str, *, byte_range: ByteRange | None = None) -> bytes:
        return self._run(self._async.get(key, byte_range=byte_range))

    @contextlib.contextmanager
    def open(self, key: str, *, byte_range: ByteRange | None = None) -> Iterator[SyncObjectReader]:
        """``with client.open(key) as r:`` then ``r.meta`` and ``for chunk in r``."""
        cm = self._async.open(key, byte_range=byte_range)
        reader = self._run(cm.__aenter__())
        try:
            yield SyncObjectReader(self, reader)
        except BaseException as exc:
            if not self._run(cm.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._run(cm.__aexit__(None, None, None))

    def get_into(
        self, key: str, out: BinaryIO, *, byte_range: ByteRange | None = None,
        progress: Progress | None = None,
        on_meta: Callable[[ObjectMeta], None] | None = None,
    ) -> ObjectMeta:
        return self._run(self._async.get_into(
            key, out, byte_range=byte_range, progress=progress, on_meta=on_meta))

    def get_to_file(
        self, key: str, path: str | os.PathLike[str], *, byte_range: ByteRange | None = None,
        progress: Progress | None = None,
        on_meta: Callable[[ObjectMeta], None] | None = None,
    ) -> ObjectMeta:
        return self._run(self._async.get_to_file(
            key, path, byte_range=byte_range, progress=progress, on_meta=on_meta))

    def head(self, key: str) -> ObjectMeta:
        return self._run(self._async.head(key))

    def delete(self, key: str) -> None:
        self._run(self._async.delete(key))

    def list_page(
        self, prefix: str | None = None, *, start_after: str | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[ObjectInfo], str | None]:
        return self._run(self._async.list_page(prefix, start_after=start_after, limit=limit))

    def list(
        self, prefix: str | None = None, *, start_after: str | None = None,
        page_size: int | None = None,
    ) -> Generator[ObjectInfo, None, None]:
        """Every object in key order, page by page; ``close()`` it to stop early."""
        return self._iterate(
            self._async.list(prefix, start_after=start_after, page_size=page_size))

    # --- cache administration ----------------------------------------------------------------

    def cache_stats(self) -> CacheStats:
        return self._run(self._async.cache_stats())

    def trim(self) -> TrimResult:
        return self._run(self._async.trim())

    def drop_cached(self, key: str) -> None:
        self._run(self._async.drop_cached(key))

    def mrc(self) -> MissRatioCurve:
        return self._run(self._async.mrc())

    def explain(self, key: str) -> Explanation:
        return self._run(self._async.explain(key))

    def reservations(self) -> Reservations:
        return self._run(self._async.reservations())

    def warm(self, source: str = "any", *, max_bytes: int | None = None,
             timeout_s: float | None = None) -> WarmStatus:
        return self._run(self._async.warm(source, max_bytes=max_bytes, timeout_s=timeout_s))

    def warm_status(self) -> WarmStatus:
        return self._run(self._async.warm_status())

    def hotsets(self) -> builtins.list[HotSetInfo]:
        return self._run(self._async.hotsets())

    def publish_hotset(self) -> HotSetInfo:
        return self._run(self._async.publish_hotset())

    # --- key-value domains -------------------------------------------------------------------

    def kv_put(self, domain: str, key: bytes | str, value: bytes) -> None:
        self._run(self._async.kv_put(domain, key, value))

    def kv_get(self, domain: str, key: bytes | str) -> bytes:
        return self._run(self._async.kv_get(domain, key))

    def kv_delete(self, domain: str, key: bytes | str) -> None:
        self._run(self._async.kv_delete(domain, key))

    def kv_batch(
        self, domain: str,
        ops: Iterable[KvOp | tuple[str, bytes | str] | tuple[str, bytes | str, bytes]],
    ) -> None:
        self._run(self._async.kv_batch(domain, builtins.list(ops)))

    def kv_scan_page(
        self, domain: str, *, start: bytes | str | None = None, end: bytes | str | None = None,
        prefix: bytes | str | None = None, limit: int | None = None, reverse: bool = False,
    ) -> tuple[builtins.list[tuple[bytes, bytes]], bytes | None]:
        return self._run(self._async.kv_scan_page(
            domain, start=start, end=end, prefix=prefix, limit=limit, reverse=reverse))

    def kv_scan(
        self, domain: str, *, start: bytes | str | None = None, end: bytes | str | None = None,
        prefix: bytes | str | None = None, reverse: bool = False, page_size: int | None = None,
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """``(key, value)`` pairs, page by page; ``close()`` it to stop early."""
        return self._iterate(self._async.kv_scan(
            domain, start=start, end=end, prefix=prefix, reverse=reverse, page_size=page_size))

    def domain_info(self, domain: str) -> DomainInfo:
        return self._run(self._async.domain_info(domain))

    def domains(self) -> builtins.list[str]:
        return self._run(self._async.domains())

    def flush(self, domain: str) -> None:
        self._run(self._async.flush(domain))

    def compact(self, domain: str) -> None:
        self._run(self._async.compact(domain))

    # --- health ------------------------------------------------------------------------------

    def healthz(self) -> bool:
        return self._run(self._async.healthz())

    def readyz(self) -> bool:
        return self._run(self._async.readyz())
