"""The streaming payload forms of SigV4 against the running endpoint.

* ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: what boto3 sends over TLS by default (an
  ``aws-chunked`` body with a CRC32 trailer). The endpoint speaks plain HTTP, so the test gives
  boto3 an ``https://`` endpoint and carries its requests, byte for byte as prepared, over plain
  HTTP (a ``before-send`` hook): the request is exactly what boto3 sends over TLS.
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` (the AWS SDKs for Java and Go, and ``mc``): no Python
  client sends it, so the test signs such a body itself, with an implementation written here
  from S3's documentation and checked against the documented example first.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import io
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from tests.s3.conftest import ACCESS_KEY, SECRET_KEY, S3Daemon, client, s3_daemon

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Daemon]:
    with s3_daemon(tmp_path_factory.mktemp("stream"), "file", "single") as daemon:
        yield daemon


def tls_client(d: S3Daemon, sent: list[dict[str, str]],
               mutate: Any = None) -> Any:
    """A boto3 client that believes it talks TLS (so it sends trailer checksums);
    ``mutate(body) -> body`` may change what goes on the wire."""
    port = d.url.rsplit(":", 1)[1]
    s3 = client(d, endpoint=f"https://127.0.0.1:{port}")
    pool = urllib3.PoolManager()

    def over_plain_http(request: Any, **_: Any) -> AWSResponse:
        url = request.url.replace("https://", "http://", 1)
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if mutate is not None and body:
            body = mutate(body)
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v
                     for k, v in request.headers.items()})
        raw = pool.request(request.method, url, body=body, headers=dict(request.headers),
                           preload_content=False, retries=False)
        return AWSResponse(url, raw.status, raw.headers, raw)

    s3.meta.events.register_first("before-send.s3", over_plain_http)
    return s3


def test_boto3_trailer_checksums_over_tls(d: S3Daemon) -> None:
    sent: list[dict[str, str]] = []
    s3 = tls_client(d, sent)
    body = bytes(range(256)) * 4096
    s3.put_object(Bucket=d.bucket, Key="trailer", Body=io.BytesIO(body))
    assert sent[-1]["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert sent[-1]["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert "aws-chunked" in sent[-1]["content-encoding"]
    got = client(d).get_object(Bucket=d.bucket, Key="trailer")
    assert got["Body"].read() == body
    assert got.get("ContentEncoding") is None  # aws-chunked is not the object's encoding
    # Multipart parts come the same way.
    data = bytes(range(256)) * (11 * MiB // 256)
    s3.upload_fileobj(io.BytesIO(data), d.bucket, "trailer-mp",
                      Config=TransferConfig(multipart_threshold=5 * MiB,
                                            multipart_chunksize=5 * MiB))
    assert any(h.get("x-amz-trailer") for h in sent if "x-amz-decoded-content-length" in h)
    assert client(d).get_object(Bucket=d.bucket, Key="trailer-mp")["Body"].read() == data


def test_a_wrong_trailer_checksum_stores_nothing(d: S3Daemon) -> None:
    def corrupt(body: bytes) -> bytes:
        return body.replace(b"x-amz-checksum-crc32:", b"x-amz-checksum-crc32:AAAA")

    s3 = tls_client(d, [], corrupt)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=d.bucket, Key="bad-trailer", Body=io.BytesIO(b"payload" * 100))
    assert info.value.response["Error"]["Code"] in ("BadDigest", "InvalidDigest")
    with pytest.raises(ClientError):
        client(d).head_object(Bucket=d.bucket, Key="bad-trailer")


# --- STREAMING-AWS4-HMAC-SHA256-PAYLOAD, signed here from S3's documentation --------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), date)
    for part in ("us-east-1", "s3", "aws4_request"):
        k = _hmac(k, part)
    return k


def sign_streaming(method: str, host: str, path: str, payload: bytes, chunk: int, *,
                   secret: str, akid: str, amz_date: str,
                   extra: dict[str, str] | None = None,
                   trailer: tuple[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and aws-chunked body of a signed streaming upload (S3 API reference,
    "Transferring Payload in Multiple Chunks"; with ``trailer`` (name, value), the
    ``-TRAILER`` form: the trailing header and its signature follow the final chunk)."""
    empty = hashlib.sha256(b"").hexdigest()
    sizes = [len(payload[i:i + chunk]) for i in range(0, len(payload), chunk)]
    encoded = sum(len(f"{n:x};chunk-signature=".encode()) + 64 + 4 + n for n in sizes) + \
        len(b"0;chunk-signature=") + 64 + 4
    form = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    trailer_lines = b""
    if trailer is not None:
        form += "-TRAILER"
        trailer_lines = f"{trailer[0]}:{trailer[1]}\r\n".encode()
        # The final CRLF moves after the trailer and its signature line.
        encoded += len(trailer_lines) + len(b"x-amz-trailer-signature:") + 64 + 2
    headers = {"host": host, "x-amz-date": amz_date, "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(payload)),
               "content-length": str(encoded),
               "x-amz-content-sha256": form, **(extra or {})}
    if trailer is not None:
        headers["x-amz-trailer"] = trailer[0]
    signed = sorted(headers)
    canonical = "\n".join([method, urllib.parse.quote(path, safe="/~"), "",
                           "".join(f"{h}:{headers[h].strip()}\n" for h in signed),
                           ";".join(signed), headers["x-amz-content-sha256"]])
    date = amz_date[:8]
    scope = f"{date}/us-east-1/s3/aws4_request"
    key = signing_key(secret, date)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    seed = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={akid}/{scope},"
                                f"SignedHeaders={';'.join(signed)},Signature={seed}")
    previous, body = seed, b""
    for data in [payload[i:i + chunk] for i in range(0, len(payload), chunk)] + [b""]:
        text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, empty,
                          hashlib.sha256(data).hexdigest()])
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        body += f"{len(data):x};chunk-signature={previous}\r\n".encode() + data
        body += b"\r\n" if data or trailer is None else b""
    if trailer is not None:
        signed_trailer = f"{trailer[0]}:{trailer[1]}\n".encode()
        text = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous,
                          hashlib.sha256(signed_trailer).hexdigest()])
        trailer_sig = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        body += trailer_lines + f"x-amz-trailer-signature:{trailer_sig}\r\n\r\n".encode()
    return headers, body


def test_the_signer_here_reproduces_the_documented_example() -> None:
    headers, body = sign_streaming(
        "PUT", "s3.amazonaws.com", "/examplebucket/chunkObject.txt", b"a" * 66560, 65536,
        secret="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", akid="AKIAIOSFODNN7EXAMPLE",
        amz_date="20130524T000000Z", extra={"x-amz-storage-class": "REDUCED_REDUNDANCY"})
    assert headers["authorization"].endswith(
        "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
    assert headers["content-length"] == "66824" and len(body) == 66824
    assert b"chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648" \
        in body
    assert body.endswith(b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb"
                         b"9323e279d449df9\r\n\r\n")


def put_streaming(d: S3Daemon, key: str, payload: bytes, chunk: int, *,
                  corrupt: bool = False, secret: str = SECRET_KEY,
                  trailer: tuple[str, str] | None = None) -> tuple[int, bytes]:
    host = urllib.parse.urlsplit(d.url).netloc
    amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = f"/{d.bucket}/{key}"
    headers, body = sign_streaming("PUT", host, path, payload, chunk, secret=secret,
                                   akid=ACCESS_KEY, amz_date=amz_date, trailer=trailer)
    if corrupt:
        i = body.index(b"\r\n") + 2 + 10
        body = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_signed_streaming_upload(d: S3Daemon) -> None:
    payload = bytes(range(256)) * 3000
    status, body = put_streaming(d, "streamed", payload, 64 * 1024)
    assert status == 200, body
    got = client(d).get_object(Bucket=d.bucket, Key="streamed")
    assert got["Body"].read() == payload
    assert got["ETag"] == f'"{hashlib.md5(payload).hexdigest()}"'


def test_a_tampered_signed_chunk_stores_nothing(d: S3Daemon) -> None:
    status, body = put_streaming(d, "tampered-stream", b"z" * 200_000, 64 * 1024, corrupt=True)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = put_streaming(d, "wrong-key-stream", b"z" * 1000, 512, secret="nope")
    assert status == 403
    for key in ("tampered-stream", "wrong-key-stream"):
        with pytest.raises(ClientError):
            client(d).head_object(Bucket=d.bucket, Key=key)


def crc32_b64(data: bytes) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_signed_streaming_upload_with_a_signed_trailer(d: S3Daemon) -> None:
    payload = bytes(range(256)) * 1000
    good = ("x-amz-checksum-crc32", crc32_b64(payload))
    status, body = put_streaming(d, "signed-trailer", payload, 32 * 1024, trailer=good)
    assert status == 200, body
    assert client(d).get_object(Bucket=d.bucket, Key="signed-trailer")["Body"].read() == payload
    # A checksum that does not match the body (correctly signed) is BadDigest.
    wrong = ("x-amz-checksum-crc32", crc32_b64(payload + b"!"))
    status, body = put_streaming(d, "signed-trailer-bad", payload, 32 * 1024, trailer=wrong)
    assert status == 400 and b"BadDigest" in body
    with pytest.raises(ClientError):
        client(d).head_object(Bucket=d.bucket, Key="signed-trailer-bad")


def test_a_trailer_changed_after_signing_is_refused(d: S3Daemon) -> None:
    payload = b"t" * 5000
    host = urllib.parse.urlsplit(d.url).netloc
    amz_date = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = f"/{d.bucket}/trailer-tampered"
    headers, body = sign_streaming("PUT", host, path, payload, 1024, secret=SECRET_KEY,
                                   akid=ACCESS_KEY, amz_date=amz_date,
                                   trailer=("x-amz-checksum-crc32", crc32_b64(payload)))
    forged = crc32_b64(b"other")
    body = body.replace(crc32_b64(payload).encode(), forged.encode())
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=headers)
        resp = conn.getresponse()
        status, text = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 403 and b"SignatureDoesNotMatch" in text
