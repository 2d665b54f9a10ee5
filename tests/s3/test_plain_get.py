"""The S3 endpoint's hot path (``app.py``): on an endpoint without credentials a GET of a key
with no query string goes straight to GetObject (no signature call, no dispatch). It must
answer exactly as the full path does: a harmless query parameter (``x-id``, which boto adds)
forces the full path for the same object, and the two answers must match header for header —
on a small hit, a large hit and a miss — and in what they refuse (reserved keys, a malformed
payload hash)."""

from __future__ import annotations

import http.client
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from tests.s3.conftest import S3Daemon, client, s3_daemon

#: Values that differ from one answer to the next whatever the path.
PER_REQUEST = frozenset({"date", "x-amz-request-id", "x-amz-id-2"})
FULL = "?x-id=GetObject"


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Daemon]:
    with s3_daemon(tmp_path_factory.mktemp("plain"), "file", "single", credentials=False
                   ) as daemon:
        yield daemon


def get(d: S3Daemon, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(d.url)
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        names = [name.lower() for name, _ in resp.getheaders()]
        assert len(names) == len(set(names)), f"a header sent twice: {names}"
        return resp.status, {n.lower(): v for n, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def evict(d: S3Daemon, key: str) -> None:
    req = urllib.request.Request(f"{d.v1}/v1/cache/objects/{d.daemon_key(key)}",
                                 method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 204)


def same_answer(fast: tuple[int, dict[str, str], bytes],
                full: tuple[int, dict[str, str], bytes]) -> None:
    """Status, headers and body alike, but for what differs per request (an error's body
    names its request id)."""
    assert fast[0] == full[0]
    assert without_id(fast) == without_id(full)
    assert set(fast[1]) == set(full[1])
    for name in set(fast[1]) - PER_REQUEST:
        assert fast[1][name] == full[1][name], name
    for name in ("x-amz-request-id", "x-amz-id-2"):
        assert fast[1][name] and fast[1][name] != full[1][name]


def without_id(answer: tuple[int, dict[str, str], bytes]) -> bytes:
    return answer[2].replace(answer[1]["x-amz-request-id"].encode(), b"")


@pytest.mark.parametrize("size", [5, 100 * 1024])  # answered inline, and through describe
def test_a_plain_get_answers_as_the_full_path(d: S3Daemon, size: int) -> None:
    key = f"plain/{size}"
    body = os.urandom(size)
    client(d).put_object(Bucket=d.bucket, Key=key, Body=body, ContentType="text/x-test",
                         CacheControl="max-age=60", ContentDisposition="inline",
                         Metadata={"colour": "blue", "n": "1"})
    path = f"/{d.bucket}/{key}"
    fast, full = get(d, path), get(d, path + FULL)
    assert fast[0] == 200 and fast[2] == body and fast[1]["x-cache"] == "hit"
    for name, value in [("content-type", "text/x-test"), ("cache-control", "max-age=60"),
                        ("content-disposition", "inline"), ("x-amz-meta-colour", "blue"),
                        ("x-amz-meta-n", "1"), ("accept-ranges", "bytes"),
                        ("content-length", str(size))]:
        assert fast[1][name] == value, name
    assert fast[1]["etag"].startswith('"') and "last-modified" in fast[1]
    same_answer(fast, full)
    # A miss (the copy evicted) fills the cache the same way on both paths.
    evict(d, key)
    fast_miss = get(d, path)
    evict(d, key)
    full_miss = get(d, path + FULL)
    assert fast_miss[1]["x-cache"] == full_miss[1]["x-cache"] == "miss"
    same_answer(fast_miss, full_miss)
    assert get(d, path)[1]["x-cache"] == "hit"


def test_ranges_and_conditions_on_a_plain_get(d: S3Daemon) -> None:
    key = "plain/cond"
    client(d).put_object(Bucket=d.bucket, Key=key, Body=b"0123456789")
    path = f"/{d.bucket}/{key}"
    etag = get(d, path)[1]["etag"]
    for headers in ({"Range": "bytes=2-4"}, {"If-None-Match": etag}, {"If-Match": '"nope"'},
                    {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
                    {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}):
        fast, full = get(d, path, headers), get(d, path + FULL, headers)
        same_answer(fast, full)
    assert get(d, path, {"Range": "bytes=2-4"})[2] == b"234"
    assert get(d, path, {"If-None-Match": etag})[0] == 304
    assert get(d, path, {"If-Match": '"nope"'})[0] == 412


def test_what_a_plain_get_refuses(d: S3Daemon) -> None:
    # The daemon's own keys cannot exist through S3; the refusal names no daemon detail.
    for key in (".cachedaemon/hotset/x", ".cachedaemon", "a//b"):
        path = f"/{d.bucket}/{urllib.parse.quote(key)}"
        fast, full = get(d, path), get(d, path + FULL)
        assert fast[0] == 404 and b"<Code>NoSuchKey</Code>" in fast[2], key
        same_answer(fast, full)
    bad = {"x-amz-content-sha256": "not-a-hash"}
    path = f"/{d.bucket}/plain/cond"
    fast, full = get(d, path, bad), get(d, path + FULL, bad)
    assert fast[0] == 400 and b"<Code>InvalidArgument</Code>" in fast[2]
    same_answer(fast, full)
    status, _, body = get(d, f"/{d.bucket}/plain/missing")
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body


def test_a_new_version_with_the_same_bytes_answers_its_own_metadata(d: S3Daemon) -> None:
    # Same bytes, same ETag: only the record tells the versions apart.
    key = "plain/same-bytes"
    path = f"/{d.bucket}/{key}"
    s3 = client(d)
    for n, content_type in enumerate(["text/plain", "application/json", "text/plain"]):
        s3.put_object(Bucket=d.bucket, Key=key, Body=b"same", ContentType=content_type,
                      Metadata={"n": str(n)})
        for _ in range(2):
            status, headers, _ = get(d, path)
            assert status == 200 and headers["x-cache"] == "hit"
            assert (headers["content-type"], headers["x-amz-meta-n"]) == (content_type, str(n))
    s3.copy_object(Bucket=d.bucket, Key=key, CopySource={"Bucket": d.bucket, "Key": key},
                   MetadataDirective="REPLACE", ContentType="image/png", Metadata={"n": "c"})
    status, headers, body = get(d, path)
    assert (status, body, headers["content-type"], headers["x-amz-meta-n"]) == \
        (200, b"same", "image/png", "c")


def test_every_answer_has_one_request_id(d: S3Daemon) -> None:
    key = f"/{d.bucket}/plain/ids"
    for method, path, body, status in [
            ("PUT", key, b"ids", 200), ("GET", key, None, 200), ("HEAD", key, None, 200),
            ("GET", key + FULL, None, 200), ("GET", f"/{d.bucket}?list-type=2", None, 200),
            ("GET", f"/{d.bucket}/plain/none", None, 404), ("GET", "/", None, 200),
            ("DELETE", key, None, 204)]:
        got, headers, _ = get(d, path, method=method, body=body)  # (no header twice)
        assert got == status, (method, path)
        assert headers["x-amz-request-id"] == headers["x-amz-id-2"], (method, path)
        assert len(headers["x-amz-request-id"]) == 16, (method, path)
