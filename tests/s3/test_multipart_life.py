"""Multipart uploads over their life: parts spread over shards, cache reservations held and
released, a full cache answered with SlowDown, expiry, and a restart of the daemon."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3.conftest import ACCESS_KEY, SECRET_KEY, S3Daemon, client, s3_daemon, s3_url
from tests.support.daemon import start_daemon

MiB = 1024 * 1024


def cache_stats(d: S3Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"{d.v1}/v1/cache", timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def test_parts_from_many_connections_on_two_shards(tmp_path: Path) -> None:
    with s3_daemon(tmp_path, "file", "single", shards=2) as d:
        key = "sharded"
        upload = client(d).create_multipart_upload(Bucket=d.bucket, Key=key)["UploadId"]
        parts = {n: bytes([n]) * (5 * MiB if n < 8 else 1000) for n in range(1, 9)}

        def send(n: int) -> tuple[int, str]:
            s3 = client(d)  # a client (and connection) per part: they land on both shards
            etag = s3.upload_part(Bucket=d.bucket, Key=key, UploadId=upload, PartNumber=n,
                                  Body=parts[n])["ETag"]
            return n, etag

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            etags = dict(pool.map(send, parts))
        # The parts hold cache space until the upload completes.
        assert cache_stats(d)["bytes_reserved"] >= 7 * 5 * MiB
        listed = client(d).list_parts(Bucket=d.bucket, Key=key, UploadId=upload)["Parts"]
        assert [p["PartNumber"] for p in listed] == list(range(1, 9))
        client(d).complete_multipart_upload(
            Bucket=d.bucket, Key=key, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in parts]})
        data = b"".join(parts[n] for n in sorted(parts))
        assert client(d).get_object(Bucket=d.bucket, Key=key)["Body"].read() == data
        stats = cache_stats(d)
        assert stats["bytes_reserved"] == 0
        assert stats["bytes_used"] >= len(data)  # the object is in the cache, the parts gone


def test_a_full_cache_is_slow_down_and_abort_gives_the_space_back(tmp_path: Path) -> None:
    args = ("--cache-max-bytes", "12MiB", "--cache-reserve-deadline", "300ms")
    with s3_daemon(tmp_path, "file", "single", args=args) as d:
        s3 = client(d)
        upload = s3.create_multipart_upload(Bucket=d.bucket, Key="big")["UploadId"]
        for n in (1, 2):
            s3.upload_part(Bucket=d.bucket, Key="big", UploadId=upload, PartNumber=n,
                           Body=b"x" * (5 * MiB))
        with pytest.raises(ClientError) as info:
            s3.upload_part(Bucket=d.bucket, Key="big", UploadId=upload, PartNumber=3,
                           Body=b"x" * (5 * MiB))
        assert error(info) == ("SlowDown", 503)
        assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=d.bucket, Key="other", Body=b"y" * (4 * MiB))
        assert error(info) == ("SlowDown", 503)
        s3.abort_multipart_upload(Bucket=d.bucket, Key="big", UploadId=upload)
        assert cache_stats(d)["bytes_reserved"] == 0
        s3.put_object(Bucket=d.bucket, Key="other", Body=b"y" * (4 * MiB))
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=d.bucket, Key="huge", Body=b"z" * (13 * MiB))
        assert error(info) == ("EntityTooLarge", 400)


def test_an_untouched_upload_expires(tmp_path: Path) -> None:
    with s3_daemon(tmp_path, "file", "single", args=("--s3-upload-expiry", "1s")) as d:
        s3 = client(d)
        upload = s3.create_multipart_upload(Bucket=d.bucket, Key="k")["UploadId"]
        s3.upload_part(Bucket=d.bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"p" * 1000)
        assert cache_stats(d)["bytes_reserved"] > 0
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                s3.list_parts(Bucket=d.bucket, Key="k", UploadId=upload)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "NoSuchUpload"
                break
            time.sleep(0.1)
        else:
            pytest.fail("the upload never expired")
        end = time.monotonic() + 10
        while cache_stats(d)["bytes_reserved"] and time.monotonic() < end:
            time.sleep(0.05)
        assert cache_stats(d)["bytes_reserved"] == 0


def test_uploads_do_not_survive_a_restart(tmp_path: Path) -> None:
    data_dir: Path | None = None
    with s3_daemon(tmp_path, "file", "single") as d:
        s3 = client(d)
        upload = s3.create_multipart_upload(Bucket=d.bucket, Key="k")["UploadId"]
        s3.upload_part(Bucket=d.bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"p")
        s3.put_object(Bucket=d.bucket, Key="kept", Body=b"committed")
        data_dir = d.data_dir
        assert d.proc.terminate() == 0
    assert data_dir is not None
    env = {"CACHEDAEMON_S3_ACCESS_KEY_ID": ACCESS_KEY,
           "CACHEDAEMON_S3_SECRET_ACCESS_KEY": SECRET_KEY}
    with start_daemon(data_dir, "--s3-listen", "127.0.0.1:0", env=env) as proc:
        again = S3Daemon(proc, s3_url(proc), proc.url, "file", "single", "cachedaemon", "")
        s3 = client(again)
        with pytest.raises(ClientError) as info:
            s3.upload_part(Bucket=again.bucket, Key="k", UploadId=upload, PartNumber=2,
                           Body=b"q")
        assert error(info) == ("NoSuchUpload", 404)
        assert s3.list_multipart_uploads(Bucket=again.bucket).get("Uploads", []) == []
        assert s3.get_object(Bucket=again.bucket, Key="kept")["Body"].read() == b"committed"
        assert cache_stats(again)["bytes_reserved"] == 0


def test_s3_requests_are_in_the_metrics(tmp_path: Path) -> None:
    with s3_daemon(tmp_path, "file", "single") as d:
        s3 = client(d)
        s3.put_object(Bucket=d.bucket, Key="m", Body=b"1")
        s3.get_object(Bucket=d.bucket, Key="m")["Body"].read()
        with urllib.request.urlopen(f"{d.v1}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'route="s3:PutObject",status="200"' in text
        assert 'route="s3:GetObject",status="200"' in text


def test_a_long_complete_answers_200_then_the_result_or_an_error(tmp_path: Path) -> None:
    # The bucket upload of the assembled object takes 2.5 s (a fail point): Complete sends its
    # 200 at 2 s and spaces until the result; the first attempt then fails after the 200.
    env = {"CACHEDAEMON_FAILPOINTS": "server.put.before_upload=delay:2.5;"
                                     "server.put.after_upload=raise@1"}
    with s3_daemon(tmp_path, "file", "single", env=env) as d:
        s3 = client(d)
        upload = s3.create_multipart_upload(Bucket=d.bucket, Key="slow")["UploadId"]
        etag = s3.upload_part(Bucket=d.bucket, Key="slow", UploadId=upload, PartNumber=1,
                              Body=b"part")["ETag"]
        parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
        with pytest.raises(ClientError) as info:
            s3.complete_multipart_upload(Bucket=d.bucket, Key="slow", UploadId=upload,
                                         MultipartUpload=parts)
        assert info.value.response["Error"]["Code"] == "InternalError"
        # The upload is still there: completing again works (the fail point fired once).
        out = s3.complete_multipart_upload(Bucket=d.bucket, Key="slow", UploadId=upload,
                                           MultipartUpload=parts)
        assert out["ETag"].endswith('-1"')
        assert s3.get_object(Bucket=d.bucket, Key="slow")["Body"].read() == b"part"
