"""SigV4 verification against botocore's own signer (a real client), and S3's documented
chunked-upload example for the streaming form."""

from __future__ import annotations

import calendar
import hashlib
import time
import urllib.parse
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from cachedaemon.server.s3.chunked import AwsChunkedDecoder
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.sigv4 import (
    STREAMING_SIGNED,
    UNSIGNED_PAYLOAD,
    Credentials,
    Verifier,
    uri_encode_path,
)

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"


def signed(method: str, path: str, *, headers: dict[str, str] | None = None,
           body: bytes = b"", secret: str = SK, akid: str = AK, region: str = REGION,
           presign: int | None = None) -> tuple[str, str, dict[str, str]]:
    """(raw path, raw query, lower-case headers) of a request botocore signed."""
    req = AWSRequest(method=method, url=f"http://127.0.0.1:9000{path}", headers=headers or {},
                     data=body)
    creds = BotoCredentials(akid, secret)
    if presign is None:
        S3SigV4Auth(creds, "s3", region).add_auth(req)
    else:
        S3SigV4QueryAuth(creds, "s3", region, expires=presign).add_auth(req)
    prepared = req.prepare()
    url = urllib.parse.urlsplit(prepared.url)
    hdrs = {k.lower(): v for k, v in prepared.headers.items()}
    hdrs["host"] = url.netloc
    return url.path, url.query, hdrs


def verifier(offset: float = 0.0) -> Verifier:
    return Verifier(Credentials(AK, SK), REGION, clock=lambda: time.time() + offset)


@pytest.mark.parametrize("key", ["plain.txt", "dir/sub/file", "sp ace+plus", "é/ü~(1)!*'", "a%b"])
def test_header_signatures_of_botocore_verify(key: str) -> None:
    path = "/bucket/" + urllib.parse.quote(key, safe="/~")
    raw_path, query, headers = signed("PUT", path, body=b"hello",
                                      headers={"x-amz-meta-colour": "blue",
                                               "Content-Type": "text/plain"})
    sig = verifier().verify("PUT", raw_path, query, headers)
    assert sig.payload == hashlib.sha256(b"hello").hexdigest()
    assert sig.access_key_id == AK


def test_query_parameters_are_canonicalised() -> None:
    raw_path, query, headers = signed(
        "GET", "/bucket?list-type=2&prefix=a%2Fb%20c&delimiter=%2F&encoding-type=url")
    verifier().verify("GET", raw_path, query, headers)


def test_a_path_escaped_differently_still_verifies() -> None:
    # Signed as botocore escapes it; sent with '~' escaped (some clients do) — S3 decodes first.
    raw_path, query, headers = signed("GET", "/bucket/a~b")
    verifier().verify("GET", raw_path.replace("~", "%7E"), query, headers)
    assert uri_encode_path("/b/a%7eb") == "/b/a~b"


def test_wrong_secret_is_signature_does_not_match() -> None:
    raw_path, query, headers = signed("GET", "/bucket/k", secret="not-the-secret")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.status == 403
    assert "CanonicalRequest" in info.value.extra


def test_wrong_access_key_is_invalid_access_key_id() -> None:
    raw_path, query, headers = signed("GET", "/bucket/k", akid="AKIDOTHER")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "InvalidAccessKeyId"


@pytest.mark.parametrize("header,value", [("range", "bytes=0-1"), ("x-amz-meta-colour", "red"),
                                          ("content-type", "text/html")])
def test_tampered_signed_header_is_refused(header: str, value: str) -> None:
    raw_path, query, headers = signed("GET", "/bucket/k", headers={
        "Range": "bytes=0-9", "x-amz-meta-colour": "blue", "Content-Type": "text/plain"})
    headers[header] = value
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "SignatureDoesNotMatch"


def test_tampered_method_path_or_query_is_refused() -> None:
    raw_path, query, headers = signed("GET", "/bucket/k?versionId=1")
    for method, path, q in (("DELETE", raw_path, query), ("GET", "/bucket/other", query),
                            ("GET", raw_path, "versionId=2")):
        with pytest.raises(S3Error) as info:
            verifier().verify(method, path, q, headers)
        assert info.value.code == "SignatureDoesNotMatch"


def test_an_unsigned_amz_header_is_refused() -> None:
    raw_path, query, headers = signed("PUT", "/bucket/k", body=b"x")
    headers["x-amz-meta-sneaky"] = "1"
    with pytest.raises(S3Error) as info:
        verifier().verify("PUT", raw_path, query, headers)
    assert (info.value.code, info.value.status) == ("AccessDenied", 403)
    assert info.value.extra["HeadersNotSigned"] == "x-amz-meta-sneaky"


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60])
def test_clock_skew_over_15_minutes(offset: float) -> None:
    raw_path, query, headers = signed("GET", "/bucket/k")
    with pytest.raises(S3Error) as info:
        verifier(offset).verify("GET", raw_path, query, headers)
    assert (info.value.code, info.value.status) == ("RequestTimeTooSkewed", 403)
    verifier(offset * 14 / 16).verify("GET", raw_path, query, headers)  # 14 min: fine


def test_wrong_region_names_the_right_one() -> None:
    raw_path, query, headers = signed("GET", "/bucket/k", region="eu-west-1")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "AuthorizationHeaderMalformed"
    assert info.value.extra["Region"] == REGION


def test_unsigned_request_is_access_denied_and_open_mode_accepts_it() -> None:
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", "/bucket/k", "", {"host": "h"})
    assert info.value.code == "AccessDenied"
    sig = Verifier(None, REGION).verify("GET", "/bucket/k", "", {"host": "h"})
    assert sig.payload == UNSIGNED_PAYLOAD


def test_presigned_url_verifies_until_it_expires() -> None:
    raw_path, query, headers = signed("GET", "/bucket/dir/k%20x", presign=60)
    sig = verifier().verify("GET", raw_path, query, headers)
    assert sig.presigned and sig.payload == UNSIGNED_PAYLOAD
    with pytest.raises(S3Error) as info:
        verifier(61).verify("GET", raw_path, query, headers)
    assert (info.value.code, info.value.message) == ("AccessDenied", "Request has expired")
    tampered = query.replace("X-Amz-Expires=60", "X-Amz-Expires=6000")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, tampered, headers)
    assert info.value.code == "SignatureDoesNotMatch"


def test_presigned_url_longer_than_a_week_is_refused() -> None:
    raw_path, query, headers = signed("GET", "/bucket/k", presign=60)
    query = query.replace("X-Amz-Expires=60", "X-Amz-Expires=604801")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "AuthorizationQueryParametersError"


# --- S3's documented chunked upload example ----------------------------------------------------
# "Signature Calculations for the Authorization Header: Transferring Payload in Multiple Chunks"
# in the Amazon S3 API reference: 66560 bytes of 'a' in chunks of 64 KiB and 1 KiB.

DOC_AK, DOC_SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
DOC_CHUNKS = [(65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
              (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
              (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")]
DOC_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
    "content-length": "66824",
    "x-amz-content-sha256": STREAMING_SIGNED,
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"
                     "aws4_request,SignedHeaders=content-encoding;content-length;host;"
                     "x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
                     f"x-amz-storage-class,Signature={DOC_SEED}",
}


def doc_body(signatures: list[str] | None = None) -> bytes:
    out = b""
    for (size, _sig), use in zip(DOC_CHUNKS, signatures or [s for _, s in DOC_CHUNKS],
                                strict=True):
        out += f"{size:x};chunk-signature={use}\r\n".encode() + b"a" * size + b"\r\n"
    return out


def doc_verifier() -> Verifier:
    t = calendar.timegm(time.strptime("20130524T000100Z", "%Y%m%dT%H%M%SZ"))
    return Verifier(Credentials(DOC_AK, DOC_SK), "us-east-1", clock=lambda: t)


async def decode(body: bytes, sig: Any, split: int) -> tuple[bytes, AwsChunkedDecoder]:
    pieces = [body[i:i + split] for i in range(0, len(body), split)]

    async def read() -> bytes:
        return pieces.pop(0) if pieces else b""

    decoder = AwsChunkedDecoder(read, sig.payload, sig.signer, [], 66560)
    out = b"".join([p async for p in decoder.payload()])
    return out, decoder


@pytest.mark.parametrize("split", [1 << 20, 7, 4096])
async def test_the_documented_chunked_upload_verifies(split: int) -> None:
    sig = doc_verifier().verify("PUT", "/examplebucket/chunkObject.txt", "", DOC_HEADERS)
    assert sig.payload == STREAMING_SIGNED and sig.signer is not None
    data, _ = await decode(doc_body(), sig, split)
    assert data == b"a" * 66560


async def test_a_tampered_chunk_is_refused() -> None:
    sig = doc_verifier().verify("PUT", "/examplebucket/chunkObject.txt", "", DOC_HEADERS)
    body = doc_body().replace(b"a" * 1024 + b"\r\n0;", b"a" * 1023 + b"b\r\n0;")
    with pytest.raises(S3Error) as info:
        await decode(body, sig, 4096)
    assert info.value.code == "SignatureDoesNotMatch"


async def test_chunks_replayed_out_of_order_are_refused() -> None:
    sig = doc_verifier().verify("PUT", "/examplebucket/chunkObject.txt", "", DOC_HEADERS)
    sigs = [s for _, s in DOC_CHUNKS]
    body = doc_body([sigs[0], sigs[0], sigs[2]])
    with pytest.raises(S3Error) as info:
        await decode(body, sig, 4096)
    assert info.value.code == "SignatureDoesNotMatch"


# --- signature version 2 (boto3's default for presigned URLs) -------------------------------


def signed_v2(method: str, path: str, *, headers: dict[str, str] | None = None,
              secret: str = SK, presign: int | None = None) -> tuple[str, str, dict[str, str]]:
    from botocore.auth import HmacV1Auth, HmacV1QueryAuth

    req = AWSRequest(method=method, url=f"http://127.0.0.1:9000{path}", headers=headers or {})
    creds = BotoCredentials(AK, secret)
    if presign is None:
        HmacV1Auth(creds).add_auth(req)
    else:
        HmacV1QueryAuth(creds, expires=presign).add_auth(req)
    prepared = req.prepare()
    url = urllib.parse.urlsplit(prepared.url)
    hdrs = {k.lower(): v for k, v in prepared.headers.items()}
    hdrs["host"] = url.netloc
    return url.path, url.query, hdrs


def test_v2_header_and_query_signatures_of_botocore_verify() -> None:
    for args in ({}, {"presign": 60}):
        raw_path, query, headers = signed_v2(
            "PUT", "/bucket/dir/a%20b?uploadId=abc&partNumber=2",
            headers={"Content-Type": "text/plain", "x-amz-meta-a": "1"}, **args)
        sig = verifier().verify("PUT", raw_path, query, headers)
        assert sig.payload == UNSIGNED_PAYLOAD


def test_v2_wrong_secret_tampering_skew_and_expiry() -> None:
    raw_path, query, headers = signed_v2("GET", "/bucket/k", secret="wrong")
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, headers)
    assert info.value.code == "SignatureDoesNotMatch"
    raw_path, query, headers = signed_v2("GET", "/bucket/k", headers={"x-amz-meta-a": "1"})
    with pytest.raises(S3Error) as info:
        verifier().verify("GET", raw_path, query, {**headers, "x-amz-meta-a": "2"})
    assert info.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as info:
        verifier(16 * 60).verify("GET", raw_path, query, headers)
    assert info.value.code == "RequestTimeTooSkewed"
    raw_path, query, headers = signed_v2("GET", "/bucket/k", presign=30)
    with pytest.raises(S3Error) as info:
        verifier(31).verify("GET", raw_path, query, headers)
    assert (info.value.code, info.value.message) == ("AccessDenied", "Request has expired")
