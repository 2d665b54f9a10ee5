"""S3ObjectStore specifics against a real moto server: multipart, aborts, errors, start-up probe."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from cachedaemon.errors import (
    NotFound,
    PreconditionFailed,
    TransientUpstreamError,
    Unavailable,
    UpstreamError,
)
from cachedaemon.remote.factory import check_bucket
from cachedaemon.remote.s3 import S3ObjectStore, translate_error
from tests.conftest import bare_aio_s3_client
from tests.remote.test_contract import BodyFailed, chunked, failing_body, payload

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


@pytest.fixture
async def small_parts(moto_endpoint: str, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    """A store that goes multipart above 5 MiB, in 5 MiB parts (fast multipart tests)."""
    store = S3ObjectStore(
        s3_bucket, endpoint_url=moto_endpoint, multipart_threshold=5 * MiB, part_size=5 * MiB
    )
    try:
        yield store
    finally:
        await store.close()


async def multipart_uploads(endpoint: str, bucket: str) -> list[Any]:
    """In-progress multipart uploads, through a bare aiobotocore client (not the store)."""
    async with bare_aio_s3_client(endpoint) as client:
        resp = await client.list_multipart_uploads(Bucket=bucket)
        return list(resp.get("Uploads", []))


@pytest.mark.parametrize("kind", ["bytes", "path", "stream"])
async def test_multipart_round_trip(
    small_parts: S3ObjectStore, tmp_path: Path, kind: str, moto_endpoint: str
) -> None:
    data = payload(12 * MiB + 3, seed=12)
    body: Any = data
    if kind == "path":
        body = tmp_path / "src"
        body.write_bytes(data)
    elif kind == "stream":
        body = chunked(data, 300_000)
    info = await small_parts.put("mp", body)
    assert info.size == len(data)
    assert info.etag.endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert await small_parts.get_bytes("mp") == data
    head = await small_parts.head("mp")
    assert head is not None and head.etag == info.etag
    assert await multipart_uploads(moto_endpoint, small_parts.bucket) == []


async def test_stream_at_threshold_is_single_part(small_parts: S3ObjectStore) -> None:
    data = payload(5 * MiB, seed=5)
    info = await small_parts.put("sp", chunked(data))
    assert info.etag == hashlib.md5(data).hexdigest()


async def test_failed_multipart_is_aborted(small_parts: S3ObjectStore, moto_endpoint: str) -> None:
    with pytest.raises(BodyFailed):
        await small_parts.put("mp", failing_body(30 * MiB, 12 * MiB))
    assert await small_parts.head("mp") is None
    assert await multipart_uploads(moto_endpoint, small_parts.bucket) == []


async def test_cancelled_multipart_is_aborted(
    small_parts: S3ObjectStore, moto_endpoint: str
) -> None:
    started = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield payload(11 * MiB)  # two parts go out
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(small_parts.put("mp", stalled()))
    await asyncio.wait_for(started.wait(), 10)
    # Let the upload be created and the first parts start.
    for _ in range(50):
        if await multipart_uploads(moto_endpoint, small_parts.bucket):
            break
        await asyncio.sleep(0.02)
    assert await multipart_uploads(moto_endpoint, small_parts.bucket), "multipart never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await small_parts.head("mp") is None
    assert await multipart_uploads(moto_endpoint, small_parts.bucket) == []


async def test_multipart_conditional(small_parts: S3ObjectStore, moto_endpoint: str) -> None:
    big1 = payload(11 * MiB, seed=1)
    big2 = payload(11 * MiB, seed=2)
    v1 = await small_parts.put_if_absent("mp", big1)
    with pytest.raises(PreconditionFailed):
        await small_parts.put_if_absent("mp", big2)
    with pytest.raises(PreconditionFailed):
        await small_parts.put_if_match("mp", big2, "0" * 32)
    with pytest.raises(PreconditionFailed):
        await small_parts.put_if_match("absent", big2, v1.etag)
    v2 = await small_parts.put_if_match("mp", big2, v1.etag)
    assert v2.etag != v1.etag
    assert await small_parts.get_bytes("mp") == big2
    assert await multipart_uploads(moto_endpoint, small_parts.bucket) == []


async def test_multipart_put_if_absent_race_at_complete(
    small_parts: S3ObjectStore, moto_endpoint: str
) -> None:
    """Two multipart creators that both pass the early HEAD: the server's check at Complete
    (If-None-Match: *) picks one."""
    release = asyncio.Event()

    async def gated(data: bytes) -> AsyncIterator[bytes]:
        yield data[: 6 * MiB]
        await release.wait()
        yield data[6 * MiB :]

    async def attempt(seed: int) -> bool:
        try:
            await small_parts.put_if_absent("race", gated(payload(11 * MiB, seed)))
            return True
        except PreconditionFailed:
            return False

    tasks = [asyncio.create_task(attempt(s)) for s in (1, 2)]
    for _ in range(100):  # both uploads created (both passed the early HEAD)
        if len(await multipart_uploads(moto_endpoint, small_parts.bucket)) == 2:
            break
        await asyncio.sleep(0.02)
    release.set()
    results = await asyncio.gather(*tasks)
    assert sorted(results) == [False, True]
    assert await multipart_uploads(moto_endpoint, small_parts.bucket) == []


async def test_prefix_is_applied_and_stripped(moto_endpoint: str, s3_bucket: str) -> None:
    store = S3ObjectStore(s3_bucket, "tenant/one", endpoint_url=moto_endpoint)
    other = S3ObjectStore(s3_bucket, endpoint_url=moto_endpoint)
    try:
        assert store.url == f"s3://{s3_bucket}/tenant/one"
        await store.put("x/y", b"1")
        assert [o.key for o in (await store.list()).objects] == ["x/y"]
        assert [o.key for o in (await other.list()).objects] == ["tenant/one/x/y"]
        assert await other.get_bytes("tenant/one/x/y") == b"1"
    finally:
        await store.close()
        await other.close()


async def test_list_page_spanning_requests(moto_endpoint: str, s3_bucket: str) -> None:
    """A page bigger than one ListObjectsV2 answer (1000 keys on S3; 3 here) is stitched."""
    store = S3ObjectStore(s3_bucket, endpoint_url=moto_endpoint)
    store.max_keys_per_request = 3
    try:
        keys = [f"k/{i:02d}" for i in range(11)]
        await asyncio.gather(*(store.put(k, b"") for k in keys))
        page = await store.list("k/", limit=8)
        assert [o.key for o in page.objects] == keys[:8]
        assert page.next == "k/07"
        rest = await store.list("k/", start_after=page.next, limit=8)
        assert [o.key for o in rest.objects] == keys[8:]
        assert rest.next is None
        exact = await store.list("k/", limit=11)
        assert len(exact.objects) == 11 and exact.next is None
        await store.delete_many(keys)
        assert (await store.list("k/")).objects == []
    finally:
        await store.close()


async def test_missing_bucket_is_upstream_error(moto_endpoint: str) -> None:
    store = S3ObjectStore("no-such-bucket-here", endpoint_url=moto_endpoint)
    try:
        with pytest.raises(UpstreamError) as info:
            await store.put("k", b"x")
        assert not info.value.retryable
        with pytest.raises(Unavailable, match="unreachable bucket"):
            await check_bucket(store)
        await check_bucket(store, create=True)
        await store.put("k", b"x")
        assert await store.get_bytes("k") == b"x"
    finally:
        await store.close()


async def test_unreachable_endpoint_is_transient() -> None:
    from tests.conftest import _free_port

    store = S3ObjectStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{_free_port()}", connect_timeout_s=2
    )
    try:
        with pytest.raises(TransientUpstreamError):
            await store.head("k")
        with pytest.raises(Unavailable, match="unreachable bucket"):
            await check_bucket(store)
    finally:
        await store.close()


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, NotFound),
        ("PreconditionFailed", 412, PreconditionFailed),
        ("ConditionalRequestConflict", 409, PreconditionFailed),
        ("SlowDown", 503, TransientUpstreamError),
        ("InternalError", 500, TransientUpstreamError),
        ("Throttling", 400, TransientUpstreamError),
        ("TooManyRequests", 429, TransientUpstreamError),
        ("AccessDenied", 403, UpstreamError),
        ("NoSuchBucket", 404, UpstreamError),
    ],
)
def test_error_translation(code: str, status: int, expected: type[Exception]) -> None:
    err = translate_error(_client_error(code, status), "op")
    assert type(err) is expected


def test_library_errors_are_transient() -> None:
    assert isinstance(
        translate_error(EndpointConnectionError(endpoint_url="http://x"), "op"),
        TransientUpstreamError,
    )
    assert isinstance(
        translate_error(ReadTimeoutError(endpoint_url="http://x"), "op"), TransientUpstreamError
    )
    assert isinstance(translate_error(ConnectionResetError(), "op"), TransientUpstreamError)
    assert type(translate_error(ValueError("x"), "op")) is UpstreamError
