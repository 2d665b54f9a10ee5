"""Opening the configured bucket: ``remote.url`` -> an :class:`ObjectStore`, and a start-up check.

``open_object_store(url)`` understands ``file:///abs/path`` (:class:`LocalObjectStore`, the
embedded default), ``s3://bucket[/prefix]`` (:class:`S3ObjectStore`, optionally against
``s3_endpoint`` such as moto or MinIO) and ``memory://name`` (tests). A URL it cannot use raises
``ConfigError("remote.url", source, problem)`` so the CLI exits 2 naming the setting; a
``file://`` directory that cannot be created raises :class:`Unavailable` ("unreachable bucket
...", exit 1).

``check_bucket(store)`` is the start-up reachability probe (one small listing, optionally
creating a missing S3 bucket); it raises :class:`Unavailable` with "unreachable bucket ..." so
the CLI can exit 1 naming the cause.

Called by the application's wiring, once per shard (an S3 store binds to its shard's loop).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from cachedaemon.errors import (
    CacheDaemonError,
    ConfigError,
    Unavailable,
)
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from cachedaemon.remote.s3 import (
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    S3ObjectStore,
    error_code,
    translate_error,
)

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def open_object_store(
    url: str,
    *,
    s3_endpoint: str | None = None,
    region: str = "us-east-1",
    source: str = "config",
    **s3_options: Any,
) -> ObjectStore:
    """The store for ``url``. ``s3_options`` go to :class:`S3ObjectStore` (pool, part size...)."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                "remote.url",
                source,
                f"{url!r}: a file URL needs an absolute path (file:///path), "
                f"not host {parsed.netloc!r}",
            )
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise ConfigError("remote.url", source, f"{url!r}: the path must be absolute")
        if parsed.query or parsed.fragment:
            raise ConfigError("remote.url", source, f"{url!r}: no query or fragment allowed")
        try:
            return LocalObjectStore(path)
        except CacheDaemonError as exc:
            # A well-formed URL whose directory cannot be made is a start-up failure (exit 1),
            # not invalid configuration (exit 2).
            raise Unavailable(f"unreachable bucket {url}: {exc.message}") from exc
    if scheme == "s3":
        bucket = parsed.netloc
        if not bucket:
            raise ConfigError("remote.url", source, f"{url!r}: missing bucket (s3://bucket)")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise ConfigError("remote.url", source, f"{url!r}: invalid bucket name {bucket!r}")
        if parsed.query or parsed.fragment:
            raise ConfigError("remote.url", source, f"{url!r}: no query or fragment allowed")
        prefix = urllib.parse.unquote(parsed.path).strip("/")
        if any(seg in ("", ".", "..") for seg in prefix.split("/")) and prefix:
            raise ConfigError("remote.url", source, f"{url!r}: invalid prefix {prefix!r}")
        if s3_endpoint is not None:
            endpoint = urllib.parse.urlsplit(s3_endpoint)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ConfigError(
                    "remote.s3_endpoint",
                    source,
                    f"{s3_endpoint!r}: expected http(s)://host[:port]",
                )
        if not region:
            raise ConfigError("remote.region", source, "must not be empty")
        part_size = s3_options.get("part_size")
        if part_size is not None and part_size < MIN_PART_SIZE:
            raise ConfigError(
                "remote.multipart_part_size",
                source,
                f"{part_size} is below S3's minimum part size of {MIN_PART_SIZE} bytes (5 MiB)",
            )
        threshold = s3_options.get("multipart_threshold")
        if threshold is not None and threshold < (part_size or DEFAULT_PART_SIZE):
            raise ConfigError(
                "remote.multipart_threshold",
                source,
                f"{threshold} is below the multipart part size",
            )
        try:
            return S3ObjectStore(
                bucket, prefix, endpoint_url=s3_endpoint, region=region, **s3_options
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError("remote.url", source, f"{url!r}: {exc}") from exc
    if scheme == "memory":
        return MemoryObjectStore(parsed.netloc or "default")
    raise ConfigError(
        "remote.url",
        source,
        f"{url!r}: unsupported URL; expected file:///path or s3://bucket[/prefix]",
    )


async def check_bucket(store: ObjectStore, *, create: bool = False) -> None:
    """Probe the bucket once; raise :class:`Unavailable` ("unreachable bucket ...") if it fails.

    With ``create=True`` a missing S3 bucket is created first (development against moto/MinIO).
    """
    try:
        if isinstance(store, S3ObjectStore):
            await _ensure_s3_bucket(store, create)
        await store.list(limit=1)
    except CacheDaemonError as exc:
        raise Unavailable(f"unreachable bucket {store.url}: {exc.message}") from exc


async def _ensure_s3_bucket(store: S3ObjectStore, create: bool) -> None:
    client = await store.client()
    try:
        await client.head_bucket(Bucket=store.bucket)
        return
    except Exception as exc:
        from botocore.exceptions import ClientError

        missing = isinstance(exc, ClientError) and error_code(exc)[1] == 404
        if not (missing and create):
            raise translate_error(exc, f"head bucket {store.bucket}") from exc
    try:
        if store.region == "us-east-1":
            await client.create_bucket(Bucket=store.bucket)
        else:
            await client.create_bucket(
                Bucket=store.bucket,
                CreateBucketConfiguration={"LocationConstraint": store.region},  # type: ignore[typeddict-item]
            )
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and error_code(exc)[0] in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            return
        raise translate_error(exc, f"create bucket {store.bucket}") from exc
