"""The object-store contract: what every bucket backend and wrapper provides.

An :class:`ObjectStore` is a flat namespace of keys mapping to immutable byte strings, as in S3.
Backends (``s3``, ``local``, ``memory``) and wrappers (``retrying``, ``instrumented``,
``faulty``) all satisfy the same Protocol, and one contract test suite runs over every backend.

Semantics every implementation keeps:

- Misses are values: ``get``/``get_bytes``/``head`` return ``None`` for a missing key;
  ``delete`` of a missing key is not an error.
- ``get`` streams: it returns a :class:`GetResult` whose body is read with
  ``async for chunk in result.iter_chunks()`` or ``await result.read()``, and which must be
  closed (``async with`` does it). A ``byte_range`` is ``(first, last)`` inclusive as in HTTP;
  ``last`` is clamped to ``size - 1``; ``first >= size`` (or a malformed range) raises
  :class:`InvalidRange` carrying the object's size.
- ``put`` writes the whole object or nothing. ``if_none_match=True`` creates only;
  ``if_match=etag`` replaces only that version (a missing object fails too). A losing
  conditional put raises :class:`PreconditionFailed`. Etags are unquoted strings.
- ``list`` returns keys in byte order (UTF-8 code-point order), at most ``limit`` per page;
  ``ListPage.next`` is the last key of the page when more remain (pass it as ``start_after``).
- Metadata (:class:`ObjectMeta`: the content headers and the user's ``x-amz-meta-*`` pairs,
  what S3 keeps with an object) is given to ``put`` and comes back, whole, from ``head`` and
  ``get`` (an object put without any has ``ObjectMeta()``); a put replaces it with the object.
  Listings do not carry it (``ObjectInfo.meta is None``), as S3's do not.
- Part layouts: ``put(..., part_sizes=[n1, n2, ...])`` stores the object as a multipart upload
  of exactly those parts (they must add up to the body's size), so its etag is S3's
  ``md5(md5(part1) + ... + md5(partN))-N``; ``single_part=True`` stores it as one part, so its
  etag is the body's md5 whatever its size (S3's single ``PutObject``, up to 5 GiB); neither
  leaves the layout to the store (the S3 backend goes multipart above its threshold).
- Faults are :mod:`cachedaemon.errors` exceptions: :class:`TransientUpstreamError` (worth a
  retry), :class:`UpstreamError`, :class:`InvalidKey`. Library exceptions never leak.

Keys are checked the same way by every backend (:func:`check_key`), so a key that works on the
in-memory store also works on the local directory store: UTF-8, 1..1024 bytes, ``/``-separated
segments of 1..255 bytes, no NUL, no ``.``/``..`` segment, no leading or trailing ``/``.

Instances are owned by one shard (one event loop); the S3 backend in particular binds an HTTP
session to its loop, so the application creates one store per shard.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Protocol, runtime_checkable

from cachedaemon.errors import InvalidArgument, InvalidKey, InvalidRange

#: What ``put`` accepts: the bytes, a file to upload, or a stream of chunks (not replayable).
Body = bytes | bytearray | memoryview | pathlib.Path | AsyncIterable[bytes]

#: An inclusive byte range ``(first, last)`` as in an HTTP ``Range: bytes=first-last`` header.
ByteRange = tuple[int, int]

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """An object's metadata as S3 keeps it: the content headers given when it was written and
    the user's ``x-amz-meta-*`` pairs (``user``: lower-case names without the prefix, sorted).
    ``None`` fields were not given."""

    content_type: str | None = None
    content_encoding: str | None = None
    content_disposition: str | None = None
    content_language: str | None = None
    cache_control: str | None = None
    expires: str | None = None
    user: tuple[tuple[str, str], ...] = ()

    #: The content headers' fields and HTTP names, in the order S3 documents them.
    HEADERS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("content_type", "Content-Type"),
        ("content_encoding", "Content-Encoding"),
        ("content_disposition", "Content-Disposition"),
        ("content_language", "Content-Language"),
        ("cache_control", "Cache-Control"),
        ("expires", "Expires"),
    )

    @staticmethod
    def make(user: Mapping[str, str] | None = None, **headers: str | None) -> ObjectMeta:
        """An ObjectMeta from header fields and a user mapping (names lower-cased, sorted)."""
        pairs = tuple(sorted((k.lower(), v) for k, v in (user or {}).items()))
        return ObjectMeta(**headers, user=pairs)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: getattr(self, f) for f, _ in self.HEADERS
                               if getattr(self, f) is not None}
        if self.user:
            out["user"] = dict(self.user)
        return out

    @staticmethod
    def from_json(raw: Any) -> ObjectMeta:
        """The inverse of :meth:`to_json`; anything malformed gives ``ObjectMeta()``."""
        if not isinstance(raw, dict):
            return ObjectMeta()
        fields = {f: raw[f] for f, _ in ObjectMeta.HEADERS if isinstance(raw.get(f), str)}
        user = raw.get("user")
        pairs: dict[str, str] = {}
        if isinstance(user, dict):
            pairs = {str(k): str(v) for k, v in user.items()}
        return ObjectMeta.make(pairs, **fields)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a bucket knows about one object. ``etag`` is unquoted; ``last_modified`` is epoch s;
    ``meta`` is its metadata (``None`` where not known: listings)."""

    key: str
    size: int
    etag: str
    last_modified: float | None = None
    meta: ObjectMeta | None = None


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing, in key order. ``next`` is the last key if more remain, else None."""

    objects: list[ObjectInfo]
    next: str | None


class GetResult:
    """A streamed object body (or a range of it).

    Single use: iterate once (``iter_chunks``) or ``read()`` once. Always closed by its user
    (``async with`` or ``await close()``); closing early releases the connection or file.
    ``content_length`` is the number of body bytes that follow; ``range`` is the served
    ``(first, last)`` when a range was asked for, else ``None``.
    """

    __slots__ = ("_chunks", "_close", "_closed", "_consumed", "content_length", "info", "range")

    def __init__(
        self,
        info: ObjectInfo,
        content_length: int,
        byte_range: ByteRange | None,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.info = info
        self.content_length = content_length
        self.range = byte_range
        self._chunks = chunks
        self._close = close
        self._closed = False
        self._consumed = False

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks in order (non-empty). Raises if the body was already consumed."""
        if self._consumed:
            raise RuntimeError("GetResult body already consumed")
        self._consumed = True
        async for chunk in self._chunks:
            if chunk:
                yield chunk

    async def read(self) -> bytes:
        """The whole (remaining) body as one bytes object, then close."""
        try:
            parts = [chunk async for chunk in self.iter_chunks()]
        finally:
            await self.close()
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close is not None:
            await self._close()

    async def __aenter__(self) -> GetResult:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@runtime_checkable
class ObjectStore(Protocol):
    """The bucket contract (see the module docstring for the semantics)."""

    url: str

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None: ...

    async def get_bytes(self, key: str, *, byte_range: ByteRange | None = None) -> bytes | None: ...

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
    ) -> ObjectInfo: ...

    async def put_if_absent(self, key: str, body: Body) -> ObjectInfo: ...

    async def put_if_match(self, key: str, body: Body, etag: str) -> ObjectInfo: ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> None: ...

    async def delete_many(self, keys: Iterable[str]) -> None: ...

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage: ...

    def list_all(self, prefix: str = "") -> AsyncIterator[ObjectInfo]: ...

    async def close(self) -> None: ...


class ObjectStoreBase:
    """The conveniences of :class:`ObjectStore` written once over the primitives.

    A backend or wrapper inherits this and implements ``get``, ``put``, ``head``, ``delete``,
    ``list`` and ``close`` (and may override ``delete_many`` with a batched form).
    """

    url: str = ""

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        raise NotImplementedError

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
        raise NotImplementedError

    async def head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    async def get_bytes(self, key: str, *, byte_range: ByteRange | None = None) -> bytes | None:
        result = await self.get(key, byte_range=byte_range)
        if result is None:
            return None
        return await result.read()

    async def put_if_absent(self, key: str, body: Body) -> ObjectInfo:
        """Create ``key`` only if it does not exist; else :class:`PreconditionFailed`."""
        return await self.put(key, body, if_none_match=True)

    async def put_if_match(self, key: str, body: Body, etag: str) -> ObjectInfo:
        """Replace ``key`` only if its etag is ``etag``; else :class:`PreconditionFailed`."""
        return await self.put(key, body, if_match=etag)

    async def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            await self.delete(key)

    async def list_all(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, page by page."""
        start_after: str | None = None
        while True:
            page = await self.list(prefix, start_after=start_after)
            for info in page.objects:
                yield info
            if page.next is None:
                return
            start_after = page.next


# --- helpers shared by the backends ----------------------------------------------------------


def check_key(key: str) -> str:
    """Validate an object key (rules in the module docstring); returns it, or raises InvalidKey."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid key {key!r}: empty")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"invalid key {key!r}: not valid UTF-8") from exc
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(f"invalid key {key[:40]!r}...: longer than {MAX_KEY_BYTES} bytes")
    if "\x00" in key:
        raise InvalidKey(f"invalid key {key!r}: contains NUL")
    if key.startswith("/"):
        raise InvalidKey(f"invalid key {key!r}: absolute (leading '/')")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"invalid key {key!r}: empty segment")
        if segment in (".", ".."):
            raise InvalidKey(f"invalid key {key!r}: '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"invalid key {key!r}: segment longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def check_list_args(prefix: str, limit: int) -> None:
    if "\x00" in prefix:
        raise InvalidArgument(f"invalid list prefix {prefix!r}: contains NUL")
    if limit < 1:
        raise InvalidArgument(f"invalid list limit {limit}: must be >= 1")


def resolve_range(byte_range: ByteRange | None, size: int) -> ByteRange | None:
    """Clamp an inclusive range to an object of ``size`` bytes; InvalidRange if unsatisfiable."""
    if byte_range is None:
        return None
    first, last = byte_range
    if first < 0 or last < first:
        raise InvalidRange(f"invalid range {first}-{last}", size)
    if first >= size:
        raise InvalidRange(f"range {first}-{last} starts past the end ({size} bytes)", size)
    return first, min(last, size - 1)


def body_size(body: Body) -> int | None:
    """The size of a ``put`` body when it is known up front (bytes or a file), else None."""
    if isinstance(body, bytes | bytearray | memoryview):
        return memoryview(body).nbytes
    if isinstance(body, pathlib.Path):
        return body.stat().st_size
    return None


async def single_chunk(data: bytes) -> AsyncIterator[bytes]:
    """An async iterator over one chunk (used to hand in-memory bodies to GetResult)."""
    if data:
        yield data


def check_part_sizes(part_sizes: Sequence[int] | None, single_part: bool) -> tuple[int, ...] | None:
    """The validated part layout of a ``put`` (see the module docstring), as a tuple."""
    if part_sizes is None:
        return None
    if single_part:
        raise InvalidArgument("a put takes part_sizes or single_part, not both")
    sizes = tuple(int(n) for n in part_sizes)
    if not sizes or any(n < 0 for n in sizes):
        raise InvalidArgument(f"invalid part sizes {sizes[:5]!r}: need one or more sizes >= 0")
    return sizes


def put_options(meta: ObjectMeta | None, part_sizes: Sequence[int] | None, single_part: bool
                ) -> dict[str, Any]:
    """A put's metadata and part-layout arguments, for a wrapper to pass on unchanged."""
    return {"meta": meta, "part_sizes": part_sizes, "single_part": single_part}


def check_total(part_sizes: tuple[int, ...] | None, total: int) -> None:
    """InvalidArgument unless the parts add up to the body's ``total`` size."""
    if part_sizes is not None and sum(part_sizes) != total:
        raise InvalidArgument(
            f"the part sizes add up to {sum(part_sizes)} bytes but the body has {total}")


class PartHasher:
    """The etag of a body as it streams past: its md5, or with a part layout S3's multipart
    etag (md5 of the parts' md5 digests, ``-N``). Feed it with :meth:`update`."""

    __slots__ = ("_digests", "_part", "_remaining", "_sizes", "md5", "size")

    def __init__(self, part_sizes: tuple[int, ...] | None) -> None:
        self.md5 = hashlib.md5()
        self.size = 0
        self._sizes = list(part_sizes) if part_sizes is not None else None
        self._digests: list[bytes] = []
        self._part = hashlib.md5()
        self._remaining = self._sizes.pop(0) if self._sizes else 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.md5.update(view)
        self.size += view.nbytes
        if self._sizes is None:
            return
        while view.nbytes:
            if self._remaining == 0 and self._sizes:
                self._digests.append(self._part.digest())
                self._part = hashlib.md5()
                self._remaining = self._sizes.pop(0)
            take = view[: self._remaining] if self._remaining else view
            self._part.update(take)
            self._remaining -= min(self._remaining, take.nbytes)
            view = view[take.nbytes :]
            if not self._remaining and not self._sizes:
                # Past the last part: extra bytes are caught by check_total.
                self._part.update(view)
                break

    def etag(self) -> str:
        if self._sizes is None:
            return self.md5.hexdigest()
        digests = [*self._digests, self._part.digest()]
        # Parts of zero bytes at the end never saw a byte.
        digests += [hashlib.md5().digest()] * len(self._sizes)
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
