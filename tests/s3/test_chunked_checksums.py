"""aws-chunked bodies with checksum trailers (built by botocore's own AwsChunkedWrapper) and
the body checks: Content-MD5, x-amz-checksum-*, the signed payload hash."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib

import google_crc32c
import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum, Sha256Checksum

from cachedaemon.server.s3.checksums import BodyChecks
from cachedaemon.server.s3.chunked import AwsChunkedDecoder
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.sigv4 import STREAMING_UNSIGNED_TRAILER

DATA = bytes(range(256)) * 1000 + b"tail"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def wrapped(data: bytes, checksum_cls: type, name: str, chunk: int) -> bytes:
    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=checksum_cls, checksum_name=name,
                             chunk_size=chunk).read()


async def run(body: bytes, trailers: list[str], length: int | None, split: int = 1000
              ) -> tuple[bytes, dict[str, str]]:
    pieces = [body[i:i + split] for i in range(0, len(body), split)]

    async def read() -> bytes:
        return pieces.pop(0) if pieces else b""

    decoder = AwsChunkedDecoder(read, STREAMING_UNSIGNED_TRAILER, None, trailers, length)
    out = b"".join([p async for p in decoder.payload()])
    return out, decoder.trailers


@pytest.mark.parametrize("chunk", [1024, 65536, 1 << 20])
async def test_botocore_trailer_bodies_decode_and_verify(chunk: int) -> None:
    body = wrapped(DATA, Crc32Checksum, "x-amz-checksum-crc32", chunk)
    data, trailers = await run(body, ["x-amz-checksum-crc32"], len(DATA))
    assert data == DATA
    checks = BodyChecks({}, None, ["x-amz-checksum-crc32"])
    checks.update(data)
    checks.verify(trailers)
    assert checks.checksums()["crc32"] == b64(zlib.crc32(DATA).to_bytes(4, "big"))


async def test_a_wrong_trailer_checksum_is_bad_digest() -> None:
    body = wrapped(DATA, Sha256Checksum, "x-amz-checksum-sha256", 4096)
    data, trailers = await run(body, ["x-amz-checksum-sha256"], len(DATA))
    checks = BodyChecks({}, None, ["x-amz-checksum-sha256"])
    checks.update(data[:-1] + b"X")
    with pytest.raises(S3Error) as info:
        checks.verify(trailers)
    assert info.value.code == "BadDigest"


async def test_an_unannounced_trailer_is_refused() -> None:
    body = wrapped(DATA, Crc32Checksum, "x-amz-checksum-crc32", 4096)
    with pytest.raises(S3Error) as info:
        await run(body, [], len(DATA))
    assert info.value.code == "InvalidRequest"


@pytest.mark.parametrize("cut", [10, 5000, -3])
async def test_a_truncated_body_is_incomplete(cut: int) -> None:
    body = wrapped(DATA, Crc32Checksum, "x-amz-checksum-crc32", 4096)
    with pytest.raises(S3Error) as info:
        await run(body[:cut], ["x-amz-checksum-crc32"], len(DATA))
    assert info.value.code == "IncompleteBody"


async def test_a_wrong_decoded_length_is_incomplete() -> None:
    body = wrapped(DATA, Crc32Checksum, "x-amz-checksum-crc32", 4096)
    with pytest.raises(S3Error) as info:
        await run(body, ["x-amz-checksum-crc32"], len(DATA) + 1)
    assert info.value.code == "IncompleteBody"


def test_content_md5_and_header_checksums() -> None:
    md5 = b64(hashlib.md5(DATA).digest())
    crc32c = b64(int(google_crc32c.value(DATA)).to_bytes(4, "big"))
    good = BodyChecks({"content-md5": md5, "x-amz-checksum-crc32c": crc32c}, None, [])
    good.update(DATA)
    good.verify()
    for headers in ({"content-md5": md5}, {"x-amz-checksum-crc32c": crc32c}):
        bad = BodyChecks(headers, None, [])
        bad.update(DATA + b"!")
        with pytest.raises(S3Error) as info:
            bad.verify()
        assert info.value.code == "BadDigest"
    with pytest.raises(S3Error) as info:
        BodyChecks({"content-md5": "not base64!"}, None, [])
    assert info.value.code == "InvalidDigest"
    with pytest.raises(S3Error) as info:
        BodyChecks({"x-amz-checksum-md4": "AAAA"}, None, [])
    assert info.value.code == "InvalidRequest"


def test_the_signed_payload_hash_is_checked() -> None:
    checks = BodyChecks({}, hashlib.sha256(DATA).hexdigest(), [])
    checks.update(DATA)
    checks.verify()
    checks = BodyChecks({}, hashlib.sha256(b"other").hexdigest(), [])
    checks.update(DATA)
    with pytest.raises(S3Error) as info:
        checks.verify()
    assert info.value.code == "XAmzContentSHA256Mismatch"
