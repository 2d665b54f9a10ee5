"""SigV4 against the running endpoint: wrong keys, tampered headers, skewed clocks, anonymous
requests; the auth token as the secret key; the open endpoint when nothing is configured."""

from __future__ import annotations

import datetime
import http.client
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.s3.conftest import ACCESS_KEY, SECRET_KEY, S3Daemon, client, s3_daemon


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Daemon]:
    with s3_daemon(tmp_path_factory.mktemp("auth"), "file", "single") as daemon:
        client(daemon).put_object(Bucket=daemon.bucket, Key="k", Body=b"secret stuff")
        yield daemon


def error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def send(d: S3Daemon, method: str, path: str, headers: dict[str, str], body: bytes = b""
         ) -> tuple[int, bytes]:
    url = urllib.parse.urlsplit(d.url)
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def signed_headers(d: S3Daemon, method: str, path: str, headers: dict[str, str],
                   body: bytes = b"", secret: str = SECRET_KEY) -> dict[str, str]:
    req = AWSRequest(method=method, url=d.url + path, headers=headers, data=body)
    S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", "us-east-1").add_auth(req)
    return dict(req.prepare().headers)


@pytest.mark.parametrize("who", ["wrong-secret", "wrong-key"])
def test_wrong_keys_are_refused(d: S3Daemon, who: str) -> None:
    bad = client(d, secret_key="not-it") if who == "wrong-secret" else \
        client(d, access_key="AKIDNOBODY")
    for call in (lambda: bad.get_object(Bucket=d.bucket, Key="k"),
                 lambda: bad.put_object(Bucket=d.bucket, Key="k", Body=b"overwritten"),
                 lambda: bad.list_objects_v2(Bucket=d.bucket)):
        with pytest.raises(ClientError) as info:
            call()
        assert error(info) == (("SignatureDoesNotMatch" if who == "wrong-secret"
                                else "InvalidAccessKeyId"), 403)
    assert client(d).get_object(Bucket=d.bucket, Key="k")["Body"].read() == b"secret stuff"


def test_tampered_headers_and_bodies_are_refused(d: S3Daemon) -> None:
    path = f"/{d.bucket}/tampered"
    headers = signed_headers(d, "PUT", path, {"x-amz-meta-owner": "alice",
                                              "Content-Type": "text/plain"}, b"original")
    assert send(d, "PUT", path, headers, b"original")[0] == 200
    stamp = headers["X-Amz-Date"]
    later = stamp[:-3] + ("58Z" if stamp[-3:-1] != "58" else "59Z")  # same day, seconds apart
    for change in ({"x-amz-meta-owner": "mallory"}, {"Content-Type": "text/html"},
                   {"X-Amz-Date": later}):
        status, body = send(d, "PUT", path, {**headers, **change}, b"original")
        assert status == 403 and b"SignatureDoesNotMatch" in body, (change, body)
    status, body = send(d, "PUT", path, {**headers, "x-amz-meta-extra": "1"}, b"original")
    assert status == 403 and b"HeadersNotSigned" in body
    # The body is signed too (x-amz-content-sha256 over plain HTTP).
    status, body = send(d, "PUT", path, headers, b"0riginal")
    assert status == 400 and b"XAmzContentSHA256Mismatch" in body
    assert client(d).get_object(Bucket=d.bucket, Key="tampered")["Body"].read() == b"original"


def test_anonymous_requests_are_access_denied(d: S3Daemon) -> None:
    status, body = send(d, "GET", f"/{d.bucket}/k", {})
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, body = send(d, "PUT", f"/{d.bucket}/k", {}, b"anonymous")
    assert status == 403
    assert client(d).get_object(Bucket=d.bucket, Key="k")["Body"].read() == b"secret stuff"


def test_a_plain_get_of_a_cached_object_is_verified(d: S3Daemon) -> None:
    # The shape of the open endpoint's hot path (GET of a key, no query): with credentials it
    # is verified like any request, even when the object is a cache hit.
    got = client(d).get_object(Bucket=d.bucket, Key="k")
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "hit"
    path = f"/{d.bucket}/k"
    assert send(d, "GET", path, {})[0] == 403
    forged = {"Authorization": "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, "
                               "Signature=00"}
    status, body = send(d, "GET", path, forged)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, body = send(d, "GET", path, signed_headers(d, "GET", path, {}, secret="not-it"))
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    assert send(d, "GET", path, signed_headers(d, "GET", path, {})) == (200, b"secret stuff")


@pytest.mark.parametrize("minutes", [-16, 16])
def test_a_clock_skewed_over_15_minutes(d: S3Daemon, monkeypatch: pytest.MonkeyPatch,
                                        minutes: int) -> None:
    import botocore.auth

    def skewed() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + \
            datetime.timedelta(minutes=minutes)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", skewed)
    with pytest.raises(ClientError) as info:
        client(d).get_object(Bucket=d.bucket, Key="k")
    assert error(info) == ("RequestTimeTooSkewed", 403)

    def close() -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + \
            datetime.timedelta(minutes=minutes * 14 // 16)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", close)
    assert client(d).get_object(Bucket=d.bucket, Key="k")["Body"].read() == b"secret stuff"


def test_a_region_other_than_the_daemons_is_redirected(d: S3Daemon) -> None:
    # S3 answers AuthorizationHeaderMalformed naming its region; botocore re-signs for it.
    other = client(d, region="eu-west-1", retries=3)
    assert other.get_object(Bucket=d.bucket, Key="k")["Body"].read() == b"secret stuff"


def test_the_auth_token_is_the_secret_key(tmp_path: Path) -> None:
    env = {"CACHEDAEMON_SERVER_AUTH_TOKEN": "the-token"}
    with s3_daemon(tmp_path, "file", "single", credentials=False, env=env) as daemon:
        good = client(daemon, access_key="cachedaemon", secret_key="the-token")
        good.put_object(Bucket=daemon.bucket, Key="k", Body=b"v")
        with pytest.raises(ClientError) as info:
            client(daemon).get_object(Bucket=daemon.bucket, Key="k")
        assert error(info)[1] == 403
        assert send(daemon, "GET", f"/{daemon.bucket}/k", {})[0] == 403


def test_with_no_credentials_the_endpoint_is_open(tmp_path: Path) -> None:
    with s3_daemon(tmp_path, "file", "single", credentials=False) as daemon:
        any_keys: Any = client(daemon, access_key="whoever", secret_key="whatever")
        any_keys.put_object(Bucket=daemon.bucket, Key="k", Body=b"open")
        assert send(daemon, "GET", f"/{daemon.bucket}/k", {}) == (200, b"open")
