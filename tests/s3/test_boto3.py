"""The S3 endpoint driven by boto3 (a real client, with its default checksum behaviour),
against a file:// and a moto bucket, in both bucket modes (``s3d``'s matrix)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import io
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.s3.conftest import S3Daemon, client, unique

MiB = 1024 * 1024


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def v1(d: S3Daemon, method: str, key: str, body: bytes | None = None
       ) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(f"{d.v1}/v1/objects/{urllib.request.quote(key)}", data=body,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def multipart_etag(data: bytes, part: int) -> str:
    digests = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    return f'"{hashlib.md5(digests).hexdigest()}-{-(-len(data) // part)}"'


def test_put_get_head_round_trip_with_metadata(s3d: S3Daemon, s3: Any) -> None:
    key = unique("obj") + "/file.txt"
    body = b"hello, cache" * 1000
    put = s3.put_object(Bucket=s3d.bucket, Key=key, Body=body, ContentType="text/plain",
                        Metadata={"colour": "blue", "Owner": "team-a"},
                        CacheControl="max-age=60", ContentDisposition="inline",
                        ContentLanguage="en")
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert put["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    for attempt in ("miss", "hit"):
        got = s3.get_object(Bucket=s3d.bucket, Key=key)
        assert got["Body"].read() == body, attempt
        assert got["ETag"] == put["ETag"]
        assert got["ContentType"] == "text/plain"
        assert got["Metadata"] == {"colour": "blue", "owner": "team-a"}
        assert (got["CacheControl"], got["ContentDisposition"], got["ContentLanguage"]) == \
            ("max-age=60", "inline", "en")
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-cache"] == "hit"
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=s3d.bucket, Key=key)
    assert (head["ContentLength"], head["ETag"], head["Metadata"]["colour"]) == \
        (len(body), put["ETag"], "blue")
    listed = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=key)["Contents"]
    assert [(o["Key"], o["Size"], o["ETag"]) for o in listed] == [(key, len(body), put["ETag"])]
    assert abs((listed[0]["LastModified"] - head["LastModified"]).total_seconds()) < 2
    # The same object through /v1: one namespace, one cache.
    status, data, headers = v1(s3d, "GET", s3d.daemon_key(key))
    assert (status, data, headers["X-Cache"]) == (200, body, "hit")


def test_an_object_put_through_v1_is_served_by_s3_and_deleted_by_it(s3d: S3Daemon,
                                                                     s3: Any) -> None:
    key = unique("v1")
    assert v1(s3d, "PUT", s3d.daemon_key(key), b"from v1")[0] == 201
    got = s3.get_object(Bucket=s3d.bucket, Key=key)
    assert got["Body"].read() == b"from v1"
    assert got["ContentType"] == "binary/octet-stream"
    s3.delete_object(Bucket=s3d.bucket, Key=key)
    assert v1(s3d, "GET", s3d.daemon_key(key))[0] == 404
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=s3d.bucket, Key=key)
    assert code(info)[1] == 404


def test_an_s3_overwrite_is_what_the_next_read_sees(s3d: S3Daemon, s3: Any) -> None:
    key = unique("over")
    for i in range(3):
        s3.put_object(Bucket=s3d.bucket, Key=key, Body=f"version {i}".encode(),
                      Metadata={"v": str(i)})
        got = s3.get_object(Bucket=s3d.bucket, Key=key)
        assert (got["Body"].read(), got["Metadata"]) == (f"version {i}".encode(), {"v": str(i)})


def test_ranges(s3d: S3Daemon, s3: Any) -> None:
    key = unique("range")
    body = bytes(range(256)) * 40
    s3.put_object(Bucket=s3d.bucket, Key=key, Body=body)
    for spec, want in (("bytes=0-9", body[:10]), ("bytes=10000-", body[10000:]),
                       ("bytes=-5", body[-5:])):
        got = s3.get_object(Bucket=s3d.bucket, Key=key, Range=spec)
        assert got["Body"].read() == want
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(body)}")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=s3d.bucket, Key=key, Range="bytes=20000-")
    assert code(info) == ("InvalidRange", 416)
    head = s3.head_object(Bucket=s3d.bucket, Key=key, Range="bytes=0-99")
    assert (head["ContentLength"], head["ResponseMetadata"]["HTTPStatusCode"]) == (100, 206)


def test_conditional_reads(s3d: S3Daemon, s3: Any) -> None:
    key = unique("cond")
    etag = s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"x")["ETag"]
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    assert s3.get_object(Bucket=s3d.bucket, Key=key, IfMatch=etag)["Body"].read() == b"x"
    assert s3.get_object(Bucket=s3d.bucket, Key=key, IfModifiedSince=past)["Body"].read() == b"x"
    for kwargs, want in (({"IfNoneMatch": etag}, ("304", 304)),
                         ({"IfMatch": '"other"'}, ("PreconditionFailed", 412)),
                         ({"IfUnmodifiedSince": past}, ("PreconditionFailed", 412))):
        for op in (s3.get_object, s3.head_object):
            with pytest.raises(ClientError) as info:
                op(Bucket=s3d.bucket, Key=key, **kwargs)
            assert code(info)[1] == want[1], (op, kwargs)
    # If-Match true wins over If-Unmodified-Since false (S3's rule).
    got = s3.get_object(Bucket=s3d.bucket, Key=key, IfMatch=etag, IfUnmodifiedSince=past)
    assert got["Body"].read() == b"x"


def test_response_overrides(s3d: S3Daemon, s3: Any) -> None:
    key = unique("ovr")
    s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"x", ContentType="text/plain")
    # Plain hits answer with header lines encoded once per record; overrides never leak into
    # them, nor they into an answer with overrides.
    for _ in range(2):
        plain = s3.get_object(Bucket=s3d.bucket, Key=key)
        assert (plain["ContentType"], plain.get("ContentDisposition"),
                plain["ResponseMetadata"]["HTTPHeaders"]["x-cache"]) == \
            ("text/plain", None, "hit")
        got = s3.get_object(Bucket=s3d.bucket, Key=key, ResponseContentType="application/json",
                            ResponseContentDisposition='attachment; filename="x.json"',
                            ResponseCacheControl="no-cache")
        assert (got["ContentType"], got["ContentDisposition"], got["CacheControl"]) == \
            ("application/json", 'attachment; filename="x.json"', "no-cache")


def test_listing(s3d: S3Daemon, s3: Any) -> None:
    base = unique("list") + "/"
    keys = [base + k for k in ("a", "b/1", "b/2", "c/x/y", "d", "sp ace+plus", "é/ü")]
    for k in keys:
        s3.put_object(Bucket=s3d.bucket, Key=k, Body=k.encode())
    everything = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=base)
    assert [o["Key"] for o in everything["Contents"]] == sorted(keys)
    assert everything["KeyCount"] == len(keys) and not everything["IsTruncated"]
    top = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=base, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == [base + "a", base + "d", base + "sp ace+plus"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == [base + "b/", base + "c/",
                                                             base + "é/"]
    # Pages of 2, keys and common prefixes counted together, through botocore's paginator.
    seen: list[str] = []
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=s3d.bucket, Prefix=base, Delimiter="/", PaginationConfig={"PageSize": 2})
    for page in pages:
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert sorted(seen) == sorted([base + "a", base + "d", base + "sp ace+plus", base + "b/",
                                   base + "c/", base + "é/"])
    after = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=base, StartAfter=base + "b/1")
    assert next(o["Key"] for o in after["Contents"]) == base + "b/2"
    # v1, with markers, through its paginator.
    v1_keys = [o["Key"] for page in s3.get_paginator("list_objects").paginate(
        Bucket=s3d.bucket, Prefix=base, PaginationConfig={"PageSize": 3})
        for o in page.get("Contents", [])]
    assert v1_keys == sorted(keys)
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket=s3d.bucket, ContinuationToken="bogus")
    assert code(info) == ("InvalidArgument", 400)


def test_reserved_keys_are_invisible_and_unreachable(s3d: S3Daemon, s3: Any) -> None:
    # The daemon's own .cachedaemon/bucket-id exists in the bucket: it must not show.
    listed = s3.list_objects_v2(Bucket=s3d.bucket)
    assert not any(o["Key"].startswith(".cachedaemon") for o in listed.get("Contents", []))
    top = s3.list_objects_v2(Bucket=s3d.bucket, Delimiter="/")
    assert not any(p["Prefix"].startswith(".cachedaemon")
                   for p in top.get("CommonPrefixes", []))
    if s3d.mode == "single":
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=s3d.bucket, Key=".cachedaemon/bucket-id")
        assert code(info) == ("NoSuchKey", 404)
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=s3d.bucket, Key=".cachedaemon/bucket-id", Body=b"evil")
        assert code(info) == ("AccessDenied", 403)
        with pytest.raises(ClientError) as info:
            s3.delete_object(Bucket=s3d.bucket, Key=".cachedaemon/bucket-id")
        assert code(info) == ("AccessDenied", 403)
    else:
        assert ".cachedaemon" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        with pytest.raises(ClientError) as info:
            s3.list_objects_v2(Bucket=".cachedaemon")
        assert code(info)[1] in (400, 404)


def test_keys_the_daemon_cannot_store(s3d: S3Daemon, s3: Any) -> None:
    for key in ("a//b", "dir/", "x/../y"):
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"x")
        assert code(info) == ("InvalidArgument", 400), key
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=s3d.bucket, Key="a//b")
    assert code(info) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key="k" * 1025, Body=b"x")
    assert code(info) == ("KeyTooLongError", 400)


def test_delete_and_delete_objects(s3d: S3Daemon, s3: Any) -> None:
    base = unique("del") + "/"
    for i in range(5):
        s3.put_object(Bucket=s3d.bucket, Key=f"{base}{i}", Body=b"x")
    s3.delete_object(Bucket=s3d.bucket, Key=base + "0")
    s3.delete_object(Bucket=s3d.bucket, Key=base + "never-existed")  # 204 as well
    out = s3.delete_objects(Bucket=s3d.bucket, Delete={"Objects": [
        {"Key": f"{base}{i}"} for i in (1, 2, 9)]})
    assert sorted(o["Key"] for o in out["Deleted"]) == [base + "1", base + "2", base + "9"]
    quiet = s3.delete_objects(Bucket=s3d.bucket, Delete={"Objects": [{"Key": base + "3"}],
                                                         "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    left = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=base)
    assert [o["Key"] for o in left["Contents"]] == [base + "4"]
    assert v1(s3d, "GET", s3d.daemon_key(base + "1"))[0] == 404


def test_copy_object(s3d: S3Daemon, s3: Any) -> None:
    src, dst = unique("src"), unique("dst")
    etag = s3.put_object(Bucket=s3d.bucket, Key=src, Body=b"copy me", ContentType="text/x",
                         Metadata={"m": "1"})["ETag"]
    out = s3.copy_object(Bucket=s3d.bucket, Key=dst, CopySource={"Bucket": s3d.bucket,
                                                                 "Key": src})
    assert out["CopyObjectResult"]["ETag"] == etag
    got = s3.get_object(Bucket=s3d.bucket, Key=dst)
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == \
        (b"copy me", "text/x", {"m": "1"})
    s3.copy_object(Bucket=s3d.bucket, Key=dst, CopySource={"Bucket": s3d.bucket, "Key": src},
                   MetadataDirective="REPLACE", Metadata={"m": "2"}, ContentType="text/y")
    got = s3.head_object(Bucket=s3d.bucket, Key=dst)
    assert (got["ContentType"], got["Metadata"]) == ("text/y", {"m": "2"})
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=s3d.bucket, Key=dst, CopySource={"Bucket": s3d.bucket,
                                                               "Key": src},
                       CopySourceIfMatch='"different"')
    assert code(info) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=s3d.bucket, Key=src, CopySource={"Bucket": s3d.bucket,
                                                               "Key": src})
    assert code(info) == ("InvalidRequest", 400)
    with pytest.raises(ClientError) as info:
        s3.copy_object(Bucket=s3d.bucket, Key=dst, CopySource={"Bucket": s3d.bucket,
                                                               "Key": "missing"})
    assert code(info) == ("NoSuchKey", 404)


def test_conditional_writes(s3d: S3Daemon, s3: Any) -> None:
    key = unique("cw")
    first = s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"2", IfNoneMatch="*")
    assert code(info) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"2", IfMatch='"nope"')
    assert code(info) == ("PreconditionFailed", 412)
    s3.put_object(Bucket=s3d.bucket, Key=key, Body=b"2", IfMatch=first)
    assert s3.get_object(Bucket=s3d.bucket, Key=key)["Body"].read() == b"2"
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key=unique("absent"), Body=b"2", IfMatch=first)
    assert code(info) == ("NoSuchKey", 404)


def test_checksums_are_verified(s3d: S3Daemon, s3: Any) -> None:
    key = unique("sum")
    body = b"integrity" * 100
    for algorithm in ("CRC32", "SHA1", "SHA256"):  # CRC32C needs botocore[crt]
        out = s3.put_object(Bucket=s3d.bucket, Key=key, Body=body, ChecksumAlgorithm=algorithm)
        assert out[f"Checksum{algorithm}"]
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=s3d.bucket, Key=key, Body=body, ContentMD5=md5)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key=key + "-bad", Body=body, ContentMD5=wrong)
    assert code(info) == ("BadDigest", 400)
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=s3d.bucket, Key=key + "-bad", Body=body,
                      ChecksumCRC32="AAAAAA==")
    assert code(info) == ("BadDigest", 400)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=s3d.bucket, Key=key + "-bad")  # nothing was stored
    assert v1(s3d, "GET", s3d.daemon_key(key + "-bad"))[0] == 404


def test_multipart_upload(s3d: S3Daemon, s3: Any) -> None:
    key = unique("mp")
    data = bytes(range(256)) * (11 * MiB // 256) + b"tail"
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_fileobj(io.BytesIO(data), s3d.bucket, key, Config=config,
                      ExtraArgs={"ContentType": "application/x-big", "Metadata": {"n": "3"}})
    head = s3.head_object(Bucket=s3d.bucket, Key=key)
    assert head["ETag"] == multipart_etag(data, 5 * MiB)
    assert (head["ContentLength"], head["ContentType"], head["Metadata"]) == \
        (len(data), "application/x-big", {"n": "3"})
    out = io.BytesIO()
    s3.download_fileobj(s3d.bucket, key, out, Config=config)
    assert out.getvalue() == data
    # The bucket behind holds the same object, with the same ETag.
    listed = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=key)["Contents"]
    assert listed[0]["ETag"] == head["ETag"]
    assert s3.list_multipart_uploads(Bucket=s3d.bucket).get("Uploads", []) == [] or all(
        u["Key"] != key for u in s3.list_multipart_uploads(Bucket=s3d.bucket)["Uploads"])


def test_multipart_parts_listing_abort_and_errors(s3d: S3Daemon, s3: Any) -> None:
    key = unique("mpx")
    upload = s3.create_multipart_upload(Bucket=s3d.bucket, Key=key)["UploadId"]
    p1 = s3.upload_part(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=1,
                        Body=b"a" * (5 * MiB))["ETag"]
    p2 = s3.upload_part(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=2,
                        Body=b"small")["ETag"]
    # A part uploaded again replaces the first one.
    p2 = s3.upload_part(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=2,
                        Body=b"small, again")["ETag"]
    parts = s3.list_parts(Bucket=s3d.bucket, Key=key, UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == \
        [(1, p1, 5 * MiB), (2, p2, 12)]
    uploads = s3.list_multipart_uploads(Bucket=s3d.bucket, Prefix=key)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, upload)]

    def complete(parts: list[dict[str, Any]]) -> Any:
        return s3.complete_multipart_upload(Bucket=s3d.bucket, Key=key, UploadId=upload,
                                            MultipartUpload={"Parts": parts})

    for parts_, want in (([{"PartNumber": 1, "ETag": '"0000"'}], "InvalidPart"),
                         ([{"PartNumber": 2, "ETag": p2}, {"PartNumber": 1, "ETag": p1}],
                          "InvalidPartOrder"),
                         ([{"PartNumber": 2, "ETag": p2}, {"PartNumber": 3, "ETag": p2}],
                          "InvalidPart")):
        with pytest.raises(ClientError) as info:
            complete(parts_)
        assert code(info)[0] == want
    # Complete still works after failed attempts.
    out = complete([{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}])
    assert out["ETag"] == multipart_etag(b"a" * (5 * MiB) + b"small, again", 5 * MiB)
    assert s3.get_object(Bucket=s3d.bucket, Key=key)["Body"].read()[-12:] == b"small, again"
    with pytest.raises(ClientError) as info:
        s3.list_parts(Bucket=s3d.bucket, Key=key, UploadId=upload)
    assert code(info) == ("NoSuchUpload", 404)

    upload = s3.create_multipart_upload(Bucket=s3d.bucket, Key=key)["UploadId"]
    small = s3.upload_part(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=1,
                           Body=b"tiny")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.complete_multipart_upload(Bucket=s3d.bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": small},
                                         {"PartNumber": 2, "ETag": small}]})
    assert code(info)[0] in ("InvalidPart", "EntityTooSmall")
    s3.abort_multipart_upload(Bucket=s3d.bucket, Key=key, UploadId=upload)
    with pytest.raises(ClientError) as info:
        s3.upload_part(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x")
    assert code(info) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as info:
        s3.abort_multipart_upload(Bucket=s3d.bucket, Key=key, UploadId="f" * 32)
    assert code(info) == ("NoSuchUpload", 404)
    # Nothing of the aborted upload holds cache space any more.
    stats = json.loads(urllib.request.urlopen(f"{s3d.v1}/v1/cache", timeout=10).read())
    assert stats["bytes_reserved"] == 0


def test_upload_part_copy(s3d: S3Daemon, s3: Any) -> None:
    src, key = unique("pcsrc"), unique("pc")
    data = bytes(range(256)) * (6 * MiB // 256)
    s3.put_object(Bucket=s3d.bucket, Key=src, Body=data)
    upload = s3.create_multipart_upload(Bucket=s3d.bucket, Key=key)["UploadId"]
    copy_source = {"Bucket": s3d.bucket, "Key": src}
    e1 = s3.upload_part_copy(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=1,
                             CopySource=copy_source,
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")["CopyPartResult"]["ETag"]
    e2 = s3.upload_part_copy(Bucket=s3d.bucket, Key=key, UploadId=upload, PartNumber=2,
                             CopySource=copy_source)["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=s3d.bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1},
                                                            {"PartNumber": 2, "ETag": e2}]})
    assert s3.get_object(Bucket=s3d.bucket, Key=key)["Body"].read() == data[:5 * MiB] + data


@pytest.mark.parametrize("version", ["s3v4", "default"])
def test_presigned_urls(s3d: S3Daemon, version: str) -> None:
    # boto3's default presigned URLs are SigV2 (AWSAccessKeyId/Signature/Expires).
    s3 = client(s3d) if version == "default" else client(s3d, signature_version="s3v4")
    key = unique("pre")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": s3d.bucket, "Key": key},
                                        ExpiresIn=60)
    assert ("X-Amz-Signature=" in put_url) == (version == "s3v4")
    # http.client, not urllib: urllib adds a Content-Type, which SigV2 signs.
    url = urllib.parse.urlsplit(put_url)
    conn = http.client.HTTPConnection(url.netloc, timeout=10)
    conn.request("PUT", f"{url.path}?{url.query}", body=b"presigned body")
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    conn.close()
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": s3d.bucket, "Key": key},
                                        ExpiresIn=60)
    with urllib.request.urlopen(get_url, timeout=10) as resp:
        assert resp.read() == b"presigned body"
    tampered = get_url.replace(key, key + "x")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(tampered, timeout=10)
    assert info.value.code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in info.value.read()
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": s3d.bucket, "Key": key},
                                        ExpiresIn=-1 if version == "default" else 1)
    if version == "s3v4":
        import time

        time.sleep(1.1)  # SigV4 cannot be signed already expired
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(expired, timeout=10)
    assert info.value.code == 403
    assert b"Request has expired" in info.value.read()


def test_unimplemented_operations_say_so(s3d: S3Daemon, s3: Any) -> None:
    for call in (lambda: s3.get_bucket_acl(Bucket=s3d.bucket),
                 lambda: s3.get_object_tagging(Bucket=s3d.bucket, Key="k"),
                 lambda: s3.list_object_versions(Bucket=s3d.bucket)):
        with pytest.raises(ClientError) as info:
            call()
        assert code(info) == ("NotImplemented", 501)


def test_bucket_operations(s3d: S3Daemon, s3: Any) -> None:
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3d.bucket in names
    s3.head_bucket(Bucket=s3d.bucket)
    location = s3.get_bucket_location(Bucket=s3d.bucket)["LocationConstraint"]
    assert location is None  # us-east-1
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="no-such-bucket-here")
    assert code(info)[1] == 404
    with pytest.raises(ClientError) as info:
        s3.list_objects_v2(Bucket="no-such-bucket-here")
    assert code(info) == ("NoSuchBucket", 404)
    if s3d.mode == "single":
        s3.create_bucket(Bucket=s3d.bucket)  # one's own bucket, us-east-1: 200
        with pytest.raises(ClientError) as info:
            s3.create_bucket(Bucket="another-bucket")
        assert code(info) == ("NotImplemented", 501)
        return
    name = unique("bkt")
    s3.create_bucket(Bucket=name)
    s3.head_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.list_objects_v2(Bucket=name)["KeyCount"] == 0
    s3.put_object(Bucket=name, Key="k", Body=b"v")
    assert v1(s3d, "GET", f"{name}/k")[1] == b"v"  # s3://b/k is the object b/k
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket=name)
    assert code(info) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket=name)
    assert code(info)[1] == 404
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=name, Key="k", Body=b"v")
    assert code(info) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as info:
        s3.create_bucket(Bucket="Not_Valid")
    assert code(info)[1] == 400
    # A top-level prefix written through /v1 is a bucket too.
    implied = unique("implied")
    v1(s3d, "PUT", f"{implied}/x", b"1")
    assert implied in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=implied)["Contents"]] == ["x"]


def test_virtual_hosted_style(s3d: S3Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = s3d.url.rsplit(":", 1)[1]
    vs3 = client(s3d, addressing="virtual", endpoint=f"http://localhost:{port}")
    key = unique("vh") + "/a b"
    vs3.put_object(Bucket=s3d.bucket, Key=key, Body=b"virtual")
    assert vs3.get_object(Bucket=s3d.bucket, Key=key)["Body"].read() == b"virtual"
    assert [o["Key"] for o in vs3.list_objects_v2(Bucket=s3d.bucket, Prefix=key)["Contents"]] \
        == [key]


def test_a_large_single_put_keeps_the_md5_etag(s3d: S3Daemon, s3: Any) -> None:
    # Above the daemon's in-memory upload size and the S3 backend's multipart threshold: still
    # one part in the bucket, so the ETag is the body's MD5, as S3 gives for a PutObject.
    key = unique("large")
    body = bytes(range(256)) * (17 * MiB // 256)
    put = s3.put_object(Bucket=s3d.bucket, Key=key, Body=body)
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    listed = s3.list_objects_v2(Bucket=s3d.bucket, Prefix=key)["Contents"]
    assert listed[0]["ETag"] == put["ETag"]
    assert s3.get_object(Bucket=s3d.bucket, Key=key, Range="bytes=-3")["Body"].read() == \
        body[-3:]
