"""``S3ObjectStore``: the bucket over the S3 API (AWS, MinIO, Ceph RGW, moto), on aiobotocore.

The only module of cachedaemon that imports botocore. Library exceptions are translated here
and nowhere else (:func:`translate_error`): ``NoSuchKey``/404 become ``None`` (or
:class:`NotFound`), 412 / ``PreconditionFailed`` / ``ConditionalRequestConflict`` become
:class:`PreconditionFailed`, throttling, 5xx, connection errors and timeouts become
:class:`TransientUpstreamError`, everything else :class:`UpstreamError`. botocore's own retries
are off: the retry policy lives in :mod:`cachedaemon.remote.retrying`, bounded by deadlines.

Ownership: one instance per shard. It holds one long-lived client (one aiohttp session and
connection pool), created on first use and bound to that shard's loop; ``close()`` releases it.
Nothing is shared across loops and nothing needs a lock beyond the first-use guard.

Tuning (the benchmark ``bench/remote.py`` holds us to a bare aiobotocore client): a pool of
``max_pool_connections`` (default 64) connections; bodies are streamed with ``iter_chunks`` in
large chunks (1 MiB); no payload signing (``UNSIGNED-PAYLOAD``) and checksums only where the
API requires them (``request_checksum_calculation`` / ``response_checksum_validation`` =
``when_required``), so a put never hashes its body twice.

Multipart
---------
A body larger than ``multipart_threshold`` (16 MiB) is uploaded in parts of ``part_size``
(8 MiB), ``multipart_concurrency`` (4) parts in flight, so memory stays bounded at
``part_size * (concurrency + 1)`` for streamed bodies. Any failure — an error from a part, the
body's iterator raising, or cancellation of the caller — aborts the upload (shielded from the
cancellation) so no dangling multipart upload keeps storage. A streamed body is buffered up to the
threshold first: if it ends there, one ``PutObject`` is sent.

Part layouts and metadata
-------------------------
``single_part=True`` sends one ``PutObject`` whatever the size (a file body is streamed from
the file, never read into memory), and ``part_sizes`` uploads exactly those parts (a file
body's parts are streamed from slices of the file), so the bucket computes the etag an S3
client expects (:mod:`cachedaemon.remote.base`). ``meta`` goes out as S3's own metadata
(``Content-Type`` and the other content headers, ``x-amz-meta-*``) on the ``PutObject`` or the
``CreateMultipartUpload``, and comes back from ``head`` and ``get``; S3's default content type
(``binary/octet-stream``, set when none was given) reads back as "not given".

Conditional puts
----------------
``if_none_match`` sends ``If-None-Match: *`` and ``if_match`` sends ``If-Match: <etag>`` on
``PutObject`` and on ``CompleteMultipartUpload``; AWS S3 evaluates both atomically at the
moment the object is committed, so concurrent writers get exactly one winner. A 404 for
``If-Match`` (no such object) is reported as :class:`PreconditionFailed` too.

moto 5.2.5 (our test server) honours both headers on ``PutObject`` and ``If-None-Match`` on
``CompleteMultipartUpload``, but ignores ``If-Match`` on ``CompleteMultipartUpload``, and it
evaluates a condition and stores the object in separate steps of a threaded server: two
concurrent multipart completes with ``If-None-Match: *`` were both seen to win (single-part
conditional puts held up in our tests: 16 racing writers, one winner, every time). So:

- Every conditional commit (the ``PutObject``, or the ``CompleteMultipartUpload`` together with
  the check before it) holds a process-wide lock for its key, shared by all shards' stores.
  Writers in one process are therefore serialised whatever the server does.
- For a multipart put-if-match we also ``HEAD`` the object right before completing (under that
  lock) and fail if its etag moved.
- Before uploading a multipart body, a conditional put checks its condition with a ``HEAD``, so
  a loser does not upload 16+ MiB for nothing.

The limit: against a server with moto's gaps, two *processes* racing multipart conditional puts
on one key can both win (and a multipart put-if-match can overwrite a version written by another
process between our ``HEAD`` and our ``Complete``). Against AWS S3 (atomic conditional writes on
both calls) there is no such window. Metastore manifests, the fencing objects, are single-part.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import ipaddress
import logging
import os
import pathlib
import threading
import urllib.parse
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from cachedaemon.errors import (
    CacheDaemonError,
    InvalidRange,
    NotFound,
    PreconditionFailed,
    TransientUpstreamError,
    UpstreamError,
)
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStoreBase,
    body_size,
    check_key,
    check_list_args,
    check_part_sizes,
    check_total,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

T = TypeVar("T")

MiB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
DEFAULT_PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
#: The content type S3 records when a put gives none.
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
#: ObjectMeta fields and the botocore parameter names they travel as.
_META_PARAMS = (
    ("content_type", "ContentType"),
    ("content_encoding", "ContentEncoding"),
    ("content_disposition", "ContentDisposition"),
    ("content_language", "ContentLanguage"),
    ("cache_control", "CacheControl"),
    ("expires", "Expires"),
)
DEFAULT_READ_CHUNK = 1 * MiB
DELETE_BATCH = 1000

_THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_TRANSIENT_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ResponseStreamingError,
    HTTPClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)


def error_code(exc: ClientError) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError."""
    response: Any = exc.response
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate_error(exc: BaseException, what: str) -> CacheDaemonError:
    """The cachedaemon error for a library exception raised while doing ``what``."""
    if isinstance(exc, CacheDaemonError):
        return exc
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
            return NotFound(f"{what}: not found ({code})")
        if status == 412 or code in _PRECONDITION_CODES:
            return PreconditionFailed(f"{what}: precondition failed ({code})")
        if code in _THROTTLE_CODES or status == 429 or status >= 500:
            return TransientUpstreamError(f"{what}: {code or status} (retryable)")
        return UpstreamError(f"{what}: {code or status}: {exc}")
    if isinstance(exc, _TRANSIENT_LIBRARY_ERRORS):
        return TransientUpstreamError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, BotoCoreError | OSError):
        return UpstreamError(f"{what}: {type(exc).__name__}: {exc}")
    return UpstreamError(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _unquote(etag: str) -> str:
    return etag.strip('"')


def meta_params(meta: ObjectMeta | None) -> dict[str, Any]:
    """botocore parameters of ``PutObject``/``CreateMultipartUpload`` for ``meta``."""
    if meta is None:
        return {}
    out: dict[str, Any] = {param: getattr(meta, field) for field, param in _META_PARAMS
                           if getattr(meta, field) is not None}
    if meta.user:
        out["Metadata"] = dict(meta.user)
    return out


def meta_from_response(resp: Mapping[str, Any]) -> ObjectMeta:
    """The ObjectMeta of a ``HeadObject``/``GetObject`` response."""
    fields: dict[str, str] = {}
    for field, param in _META_PARAMS:
        value = resp.get(param)
        if param == "Expires":
            value = resp.get("ExpiresString") or (
                value.strftime("%a, %d %b %Y %H:%M:%S GMT") if value is not None else None)
        if isinstance(value, str) and value:
            fields[field] = value
    if fields.get("content_type") == DEFAULT_CONTENT_TYPE:
        del fields["content_type"]
    return ObjectMeta.make(resp.get("Metadata") or {}, **fields)


class _FileSlice(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, as a seekable binary stream (a part body that
    botocore can rewind and aiohttp reads in its executor)."""

    def __init__(self, path: pathlib.Path, offset: int, length: int) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._offset = offset
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._offset + self._pos)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        if not self.closed and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


class S3ObjectStore(ObjectStoreBase):
    """A bucket (and optional key prefix) over the S3 API. ``url`` is ``s3://bucket[/prefix]``.

    Credentials come from the standard AWS environment/config chain; when an ``endpoint_url``
    is given and the environment has none, dummy ones are used (moto, a local MinIO).
    """

    #: S3 returns at most 1000 keys per ListObjectsV2; larger pages take several requests.
    max_keys_per_request = 1000

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        max_pool_connections: int = 64,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        multipart_concurrency: int = 4,
        read_chunk_size: int = DEFAULT_READ_CHUNK,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        addressing_style: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        if multipart_threshold < part_size:
            raise ValueError("multipart_threshold must be >= part_size")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}" + (f"/{self.prefix.rstrip('/')}" if self.prefix else "")
        self.endpoint_url = endpoint_url
        self.region = region
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.multipart_concurrency = max(1, multipart_concurrency)
        self.read_chunk_size = read_chunk_size
        self.config = client_config(
            region=region,
            max_pool_connections=max_pool_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            addressing_style=addressing_style or ("path" if endpoint_url else "auto"),
        )
        self._client: S3Client | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()
        self._closed = False

    # --- client lifecycle --------------------------------------------------------------------

    async def client(self) -> S3Client:
        """The long-lived client, created on first use on the caller's (the owning shard's) loop."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._closed:
                raise UpstreamError(f"{self.url}: store is closed")
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                kwargs = client_kwargs(self.endpoint_url, self.region, self.config)
                client = await stack.enter_async_context(
                    get_session().create_client("s3", **kwargs)
                )
                self._exit_stack = stack
                self._client = client
            return self._client

    async def close(self) -> None:
        self._closed = True
        stack, self._exit_stack, self._client = self._exit_stack, None, None
        if stack is not None:
            await stack.aclose()

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate_error(exc, what) from exc

    # --- reads -------------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo | None:
        full = self._full_key(key)
        client = await self.client()
        try:
            resp = await self._call(
                f"head {self.url} {key!r}", lambda: client.head_object(Bucket=self.bucket, Key=full)
            )
        except NotFound:
            return None
        modified = resp.get("LastModified")
        return ObjectInfo(
            key,
            int(resp["ContentLength"]),
            _unquote(resp["ETag"]),
            modified.timestamp() if modified is not None else None,
            meta_from_response(resp),
        )

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        full = self._full_key(key)
        client = await self.client()
        what = f"get {self.url} {key!r}"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if byte_range is not None:
            first, last = byte_range
            if first < 0 or last < first:
                info = await self.head(key)
                if info is None:
                    return None
                raise InvalidRange(f"invalid range {first}-{last}", info.size)
            kwargs["Range"] = f"bytes={first}-{last}"
        try:
            resp = await self._call(what, lambda: client.get_object(**kwargs))
        except NotFound:
            return None
        except UpstreamError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and (
                error_code(cause)[0] == "InvalidRange" or error_code(cause)[1] == 416
            ):
                info = await self.head(key)
                if info is None:
                    return None
                raise InvalidRange(f"range {byte_range} starts past the end", info.size) from exc
            raise
        body = resp["Body"]
        length = int(resp["ContentLength"])
        size = length
        served: ByteRange | None = None
        content_range = resp.get("ContentRange")
        if byte_range is not None:
            if content_range:
                # "bytes first-last/size"
                spec, _, total = content_range.partition(" ")[2].partition("/")
                a, _, b = spec.partition("-")
                served = (int(a), int(b))
                size = int(total) if total and total != "*" else length
            else:
                served = (0, length - 1) if length else None  # server ignored the range
        modified = resp.get("LastModified")
        info = ObjectInfo(
            key, size, _unquote(resp["ETag"]), modified.timestamp() if modified else None,
            meta_from_response(resp),
        )
        chunk_size = self.read_chunk_size

        async def chunks() -> AsyncIterator[bytes]:
            stream = body.iter_chunks(chunk_size)
            while True:
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise translate_error(exc, f"{what} (body)") from exc
                yield chunk

        async def close() -> None:
            body.close()

        return GetResult(info, length, served, chunks(), close)

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_list_args(prefix, limit)
        client = await self.client()
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": min(limit, self.max_keys_per_request),
        }
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        objects: list[ObjectInfo] = []
        more = False
        cut = len(self.prefix)
        while True:
            resp = await self._call(
                f"list {self.url} {prefix!r}",
                lambda kw=dict(kwargs): client.list_objects_v2(**kw),  # type: ignore[misc]
            )
            for item in resp.get("Contents", []):
                modified = item.get("LastModified")
                objects.append(
                    ObjectInfo(
                        item["Key"][cut:],
                        int(item["Size"]),
                        _unquote(item["ETag"]),
                        modified.timestamp() if modified else None,
                    )
                )
            more = bool(resp.get("IsTruncated"))
            if not more or len(objects) >= limit:
                break
            token = resp.get("NextContinuationToken")
            if token:
                kwargs["ContinuationToken"] = token
                kwargs.pop("StartAfter", None)
            else:
                kwargs["StartAfter"] = self.prefix + objects[-1].key
            kwargs["MaxKeys"] = min(limit - len(objects), self.max_keys_per_request)
        if len(objects) > limit:
            objects, more = objects[:limit], True
        return ListPage(objects, objects[-1].key if more and objects else None)

    # --- deletes -----------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        full = self._full_key(key)
        client = await self.client()
        try:
            await self._call(
                f"delete {self.url} {key!r}",
                lambda: client.delete_object(Bucket=self.bucket, Key=full),
            )
        except NotFound:
            return

    async def delete_many(self, keys: Iterable[str]) -> None:
        full = [self._full_key(k) for k in keys]
        if not full:
            return
        client = await self.client()
        for start in range(0, len(full), DELETE_BATCH):
            batch = full[start : start + DELETE_BATCH]
            delete: Any = {"Objects": [{"Key": k} for k in batch], "Quiet": True}
            resp = await self._call(
                f"delete {len(batch)} keys from {self.url}",
                lambda d=delete: client.delete_objects(Bucket=self.bucket, Delete=d),  # type: ignore[misc]
            )
            errors = [e for e in resp.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                message = f"delete {first.get('Key')!r} from {self.url}: {first.get('Code')}"
                if first.get("Code") in _THROTTLE_CODES:
                    raise TransientUpstreamError(message)
                raise UpstreamError(message)

    # --- puts --------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        body: Body,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        meta: ObjectMeta | None = None,
        part_sizes: Sequence[int] | None = None,
        single_part: bool = False,
    ) -> ObjectInfo:
        full = self._full_key(key)
        sizes = check_part_sizes(part_sizes, single_part)
        if_match = None if if_match is None else _unquote(if_match)
        size = body_size(body)
        extra = meta_params(meta)
        if sizes is not None:
            return await self._put_layout(key, full, body, sizes, if_none_match, if_match, meta)
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body) if not isinstance(body, bytes) else body
            if single_part or len(data) <= self.multipart_threshold:
                return await self._put_single(key, full, data, if_none_match, if_match, meta)
            return await self._put_multipart(
                key, full, _slices(data, self.part_size), if_none_match, if_match, extra, meta
            )
        if isinstance(body, pathlib.Path):
            assert size is not None
            if single_part:
                return await self._put_single(key, full, body, if_none_match, if_match, meta)
            if size <= self.multipart_threshold:
                data = await asyncio.to_thread(body.read_bytes)
                return await self._put_single(key, full, data, if_none_match, if_match, meta)
            return await self._put_multipart(
                key, full, _file_parts(body, self.part_size), if_none_match, if_match, extra,
                meta,
            )
        if single_part:
            data = b"".join([bytes(chunk) async for chunk in body])
            return await self._put_single(key, full, data, if_none_match, if_match, meta)
        return await self._put_stream(key, full, body, if_none_match, if_match, meta)

    async def _put_layout(
        self,
        key: str,
        full: str,
        body: Body,
        sizes: tuple[int, ...],
        if_none_match: bool,
        if_match: str | None,
        meta: ObjectMeta | None,
    ) -> ObjectInfo:
        """A multipart upload of exactly ``sizes`` (see "Part layouts")."""
        total = sum(sizes)
        parts: AsyncIterator[Any]
        if isinstance(body, pathlib.Path):
            check_total(sizes, body.stat().st_size)
            parts = _file_slices(body, sizes)
        elif isinstance(body, bytes | bytearray | memoryview):
            check_total(sizes, memoryview(body).nbytes)
            parts = _sized_slices(bytes(body), sizes)
        else:
            parts = _sized_stream_parts(body, sizes)
        return await self._put_multipart(
            key, full, parts, if_none_match, if_match, meta_params(meta), meta, total=total
        )

    async def _put_stream(
        self,
        key: str,
        full: str,
        body: AsyncIterable[bytes],
        if_none_match: bool,
        if_match: str | None,
        meta: ObjectMeta | None,
    ) -> ObjectInfo:
        stream = aiter(body)
        head: list[bytes] = []
        buffered = 0
        async for chunk in stream:
            head.append(bytes(chunk))
            buffered += len(chunk)
            if buffered > self.multipart_threshold:
                break
        else:
            return await self._put_single(key, full, b"".join(head), if_none_match, if_match,
                                          meta)
        return await self._put_multipart(
            key, full, _stream_parts(head, stream, self.part_size), if_none_match, if_match,
            meta_params(meta), meta,
        )

    def _condition_kwargs(self, if_none_match: bool, if_match: str | None) -> dict[str, str]:
        kwargs: dict[str, str] = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        return kwargs

    async def _conditional(
        self, key: str, if_none_match: bool, if_match: str | None, fn: Callable[[], Awaitable[T]]
    ) -> T:
        """Run a committing call; with a condition, a 404 means "no object to match" (412)."""
        try:
            return await fn()
        except NotFound as exc:
            if if_match is not None:
                raise PreconditionFailed(
                    f"put-if-match of {key!r} to {self.url}: no such object"
                ) from exc
            raise UpstreamError(f"put {key!r} to {self.url}: {exc.message}") from exc

    async def _put_single(
        self,
        key: str,
        full: str,
        data: bytes | pathlib.Path,
        if_none_match: bool,
        if_match: str | None,
        meta: ObjectMeta | None,
    ) -> ObjectInfo:
        client = await self.client()
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "ContentLength": size,
            **self._condition_kwargs(if_none_match, if_match),
            **meta_params(meta),
        }

        async def put() -> Any:
            # A file goes out as a stream, re-opened by every attempt of the retry layer.
            body: Any = data if isinstance(data, bytes) else _FileSlice(data, 0, size)
            try:
                return await client.put_object(Body=body, **kwargs)
            finally:
                if not isinstance(body, bytes):
                    body.close()

        async with self._commit_lock(full, if_none_match or if_match is not None):
            resp = await self._conditional(
                key,
                if_none_match,
                if_match,
                lambda: self._call(f"put {self.url} {key!r}", put),
            )
        return ObjectInfo(key, size, _unquote(resp["ETag"]), None, meta or ObjectMeta())

    @contextlib.asynccontextmanager
    async def _commit_lock(self, full: str, conditional: bool) -> AsyncIterator[None]:
        """Serialise this process's conditional commits of one key (module docstring)."""
        if not conditional:
            yield
            return
        lock = _COMMIT_LOCKS.acquire_ref((self.endpoint_url, self.bucket, full))
        try:
            await _acquire_thread_lock(lock)
            try:
                yield
            finally:
                lock.release()
        finally:
            _COMMIT_LOCKS.release_ref((self.endpoint_url, self.bucket, full))

    async def _check_condition(self, key: str, if_none_match: bool, if_match: str | None) -> None:
        if not if_none_match and if_match is None:
            return
        current = await self.head(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"put-if-absent of {key!r} to {self.url}: the object exists")
        if if_match is not None and (current is None or current.etag != if_match):
            raise PreconditionFailed(f"put-if-match of {key!r} to {self.url}: etag differs")

    async def _put_multipart(
        self,
        key: str,
        full: str,
        parts: AsyncIterator[Any],
        if_none_match: bool,
        if_match: str | None,
        extra: dict[str, Any],
        meta: ObjectMeta | None,
        total: int | None = None,
    ) -> ObjectInfo:
        what = f"multipart put {self.url} {key!r}"
        client = await self.client()
        await self._check_condition(key, if_none_match, if_match)
        created = await self._call(
            what, lambda: client.create_multipart_upload(Bucket=self.bucket, Key=full, **extra)
        )
        upload_id = created["UploadId"]
        try:
            completed, size = await self._upload_parts(client, full, upload_id, parts, what)
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": full,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": completed},
                **self._condition_kwargs(if_none_match, if_match),
            }
            async with self._commit_lock(full, if_none_match or if_match is not None):
                if if_match is not None:
                    # moto ignores If-Match on CompleteMultipartUpload (module docstring).
                    await self._check_condition(key, False, if_match)
                resp = await self._conditional(
                    key,
                    if_none_match,
                    if_match,
                    lambda: self._call(what, lambda: client.complete_multipart_upload(**kwargs)),
                )
        except BaseException:
            await asyncio.shield(self._abort(client, full, upload_id))
            raise
        finally:
            with contextlib.suppress(Exception):
                await _aclose(parts)
        if total is not None and size != total:  # pragma: no cover - the parts are sized
            raise UpstreamError(f"{what}: uploaded {size} bytes, expected {total}")
        return ObjectInfo(key, size, _unquote(resp["ETag"]), None, meta or ObjectMeta())

    async def _upload_parts(
        self,
        client: S3Client,
        full: str,
        upload_id: str,
        parts: AsyncIterator[Any],
        what: str,
    ) -> tuple[builtins.list[Any], int]:
        """Upload every part, ``multipart_concurrency`` at a time; the CompleteMultipart list."""
        etags: dict[int, str] = {}
        in_flight: set[asyncio.Task[None]] = set()
        size = 0

        async def upload(number: int, data: bytes | _FileSlice) -> None:
            try:
                resp = await self._call(
                    f"{what} part {number}",
                    lambda: client.upload_part(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=cast(Any, data),
                        ContentLength=len(data),
                    ),
                )
            finally:
                if isinstance(data, _FileSlice):
                    data.close()
            etags[number] = resp["ETag"]

        try:
            number = 0
            async for data in parts:
                number += 1
                size += len(data)
                in_flight.add(asyncio.ensure_future(upload(number, data)))
                if len(in_flight) >= self.multipart_concurrency:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()
            if in_flight:
                done, in_flight = await asyncio.wait(in_flight)
                for task in done:
                    task.result()
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.wait(in_flight)
        completed = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        return completed, size

    async def _abort(self, client: S3Client, full: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            await client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)


# --- process-wide commit locks ----------------------------------------------------------------


class _KeyLocks:
    """``threading.Lock`` per key, shared by every shard's store; dropped when unused."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str | None, str, str], tuple[threading.Lock, int]] = {}

    def acquire_ref(self, key: tuple[str | None, str, str]) -> threading.Lock:
        with self._guard:
            lock, refs = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, refs + 1)
            return lock

    def release_ref(self, key: tuple[str | None, str, str]) -> None:
        with self._guard:
            lock, refs = self._locks[key]
            if refs <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, refs - 1)


_COMMIT_LOCKS = _KeyLocks()


async def _acquire_thread_lock(lock: threading.Lock) -> None:
    """Take a threading lock without blocking the loop.

    Polls with a short, growing sleep instead of parking a thread per waiter (which could
    exhaust the default executor). Contention is rare: only conditional commits of one key.
    """
    delay = 0.0005
    while not lock.acquire(blocking=False):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


# --- botocore configuration ------------------------------------------------------------------


def client_config(
    *,
    region: str = "us-east-1",
    max_pool_connections: int = 64,
    connect_timeout_s: float = 10.0,
    read_timeout_s: float = 60.0,
    addressing_style: str = "auto",
) -> AioConfig:
    """The tuned botocore config (shared with the benchmark's bare client)."""
    return AioConfig(
        region_name=region,
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"payload_signing_enabled": False, "addressing_style": addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )


_THREAD_SESSIONS = threading.local()


def thread_session() -> AioSession:
    """This thread's (shard's) aiobotocore session: loading the S3 service model is costly
    (~0.5 s), a session caches it, and sessions are not meant to be shared across threads."""
    session: AioSession | None = getattr(_THREAD_SESSIONS, "session", None)
    if session is None:
        session = _THREAD_SESSIONS.session = get_session()
    return session


def _credentials_configured() -> bool:
    """Whether the standard chain has something to find without asking the network
    (environment variables, a profile, or a shared credentials file)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    if os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get(
        "AWS_WEB_IDENTITY_TOKEN_FILE"
    ):
        return True
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
    return os.path.exists(path)


def is_loopback_endpoint(endpoint_url: str) -> bool:
    """True if the endpoint's host is this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urllib.parse.urlsplit(endpoint_url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_warned_dummy: set[str] = set()


def client_kwargs(endpoint_url: str | None, region: str, config: AioConfig) -> dict[str, Any]:
    """``create_client`` arguments: endpoint, region, config, and, only for a local test
    server (moto, MinIO on loopback) with no credentials anywhere, dummy credentials.

    Any other endpoint gets botocore's normal credential chain, so an instance role or a
    container's credentials behind a custom endpoint are never overridden by a made-up key."""
    kwargs: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        if is_loopback_endpoint(endpoint_url) and not _credentials_configured():
            if endpoint_url not in _warned_dummy:
                _warned_dummy.add(endpoint_url)
                log.warning("no S3 credentials configured: signing requests to the local "
                            "endpoint %s with dummy credentials", endpoint_url)
            kwargs["aws_access_key_id"] = "testing"
            kwargs["aws_secret_access_key"] = "testing"
    return kwargs


# --- part sources ----------------------------------------------------------------------------


async def _slices(data: bytes, part_size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), part_size):
        yield data[start : start + part_size]


async def _file_parts(path: pathlib.Path, part_size: int) -> AsyncIterator[bytes]:
    """The file's parts, each read in one thread hop."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while True:
            data = await asyncio.to_thread(f.read, part_size)
            if not data:
                return
            yield data
    finally:
        f.close()


async def _sized_slices(data: bytes, sizes: Sequence[int]) -> AsyncIterator[bytes]:
    offset = 0
    for size in sizes:
        yield data[offset : offset + size]
        offset += size


async def _file_slices(path: pathlib.Path, sizes: Sequence[int]) -> AsyncIterator[_FileSlice]:
    """Each part as a slice of the file, read while it is sent (never held in memory)."""
    offset = 0
    for size in sizes:
        yield _FileSlice(path, offset, size)
        offset += size


async def _sized_stream_parts(
    stream: AsyncIterable[bytes], sizes: Sequence[int]
) -> AsyncIterator[bytes]:
    """Re-chunk a stream into parts of exactly ``sizes`` (InvalidArgument if they differ)."""
    want = list(sizes)
    buffer = bytearray()
    async for chunk in stream:
        buffer += chunk
        while want and len(buffer) >= want[0] and (want[0] > 0 or len(want) > 1):
            n = want.pop(0)
            yield bytes(buffer[:n])
            del buffer[:n]
        if not want and buffer:
            break
    if want == [len(buffer)]:
        yield bytes(buffer)
        return
    got = sum(sizes) - sum(want) + len(buffer)
    check_total(tuple(sizes), got if (want or buffer) else sum(sizes))


async def _stream_parts(
    head: list[bytes], stream: AsyncIterator[bytes], part_size: int
) -> AsyncIterator[bytes]:
    """Re-chunk a stream (whose first chunks are already in ``head``) into parts."""
    buffer = bytearray()
    for chunk in head:
        buffer += chunk
        while len(buffer) >= part_size:
            yield bytes(buffer[:part_size])
            del buffer[:part_size]
    async for chunk in stream:
        buffer += chunk
        while len(buffer) >= part_size:
            yield bytes(buffer[:part_size])
            del buffer[:part_size]
    if buffer:
        yield bytes(buffer)


async def _aclose(it: AsyncIterator[bytes]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()
