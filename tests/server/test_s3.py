"""The daemon in front of a real S3 API (a moto server): the object routes end to end, sizes up
to 40 MiB (multipart above the threshold), misses filling the cache, ranges, conditionals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import bare_s3_client
from tests.server.conftest import part_files
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.http import fetch

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def s3_daemon(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[DaemonProcess, str]]:
    bucket = f"srv-{uuid.uuid4().hex[:20]}"
    client = bare_s3_client(moto_endpoint)
    client.create_bucket(Bucket=bucket)
    client.close()
    data = tmp_path_factory.mktemp("s3daemon") / "data"
    with start_daemon(data, "--cache-max-bytes", "256MiB", remote=f"s3://{bucket}/pre",
                      s3_endpoint=moto_endpoint, shards=2) as d:
        yield d, bucket


def s3_get(endpoint: str, bucket: str, key: str) -> bytes | None:
    client = bare_s3_client(endpoint)
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
    except client.exceptions.NoSuchKey:
        return None
    finally:
        client.close()


@pytest.mark.parametrize("size", [0, 5000, 17 * 1024 * 1024 + 3, 40 * 1024 * 1024])
async def test_roundtrip(s3_daemon: tuple[DaemonProcess, str], moto_endpoint: str,
                         size: int) -> None:
    d, bucket = s3_daemon
    data = os.urandom(size)
    key = f"rt/{size}"
    r = await fetch("PUT", f"{d.url}/v1/objects/{key}", data=data)
    assert r.status == 201, r.body
    assert r.json()["size"] == size
    assert s3_get(moto_endpoint, bucket, f"pre/{key}") == data
    g = await fetch("GET", f"{d.url}/v1/objects/{key}")
    assert g.status == 200 and g.body == data and g.headers["X-Cache"] == "hit"
    assert g.headers["ETag"] == r.json()["etag"]
    await fetch("DELETE", f"{d.url}/v1/cache/objects/{key}")
    g = await fetch("GET", f"{d.url}/v1/objects/{key}", headers={"Range": "bytes=1-"})
    if size > 1:
        assert g.status == 206 and g.body == data[1:] and g.headers["X-Cache"] == "miss"
    else:
        assert g.status == 416 and g.headers["Content-Range"] == f"bytes */{size}"
    g = await fetch("GET", f"{d.url}/v1/objects/{key}")
    assert g.status == 200 and g.body == data and g.headers["X-Cache"] == "miss"
    assert g.headers["ETag"] == r.json()["etag"]
    assert hashlib.md5(g.body).digest() == hashlib.md5(data).digest()
    assert (await fetch("DELETE", f"{d.url}/v1/objects/{key}")).status == 204
    assert s3_get(moto_endpoint, bucket, f"pre/{key}") is None
    assert (await fetch("GET", f"{d.url}/v1/objects/{key}")).status == 404


async def test_object_put_behind_the_daemons_back_is_a_miss(
        s3_daemon: tuple[DaemonProcess, str], moto_endpoint: str) -> None:
    d, bucket = s3_daemon
    client = bare_s3_client(moto_endpoint)
    client.put_object(Bucket=bucket, Key="pre/outside/x", Body=b"from outside")
    client.close()
    g = await fetch("GET", f"{d.url}/v1/objects/outside/x")
    assert g.status == 200 and g.body == b"from outside" and g.headers["X-Cache"] == "miss"
    h = await fetch("HEAD", f"{d.url}/v1/objects/outside/x")
    assert h.status == 200 and h.headers["X-Cache"] == "hit"


async def test_conditionals_and_listing(s3_daemon: tuple[DaemonProcess, str]) -> None:
    d, _ = s3_daemon
    base = f"{d.url}/v1/objects"
    r = await fetch("PUT", f"{base}/c/k", data=b"1", headers={"If-None-Match": "*"})
    assert r.status == 201
    r2 = await fetch("PUT", f"{base}/c/k", data=b"2", headers={"If-None-Match": "*"})
    assert r2.status == 412 and r2.error_code == "precondition_failed"
    r3 = await fetch("PUT", f"{base}/c/k", data=b"3", headers={"If-Match": '"nope"'})
    assert r3.status == 412
    r4 = await fetch("PUT", f"{base}/c/k", data=b"4", headers={"If-Match": r.json()["etag"]})
    assert r4.status == 201
    assert (await fetch("GET", f"{base}/c/k")).body == b"4"
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(fetch("PUT", f"{base}/c/l{i}", data=b"x", session=s)
                               for i in range(12)))
    page = (await fetch("GET", f"{base}?prefix=c/&limit=5")).json()
    assert [o["key"] for o in page["objects"]] == ["c/k", "c/l0", "c/l1", "c/l10", "c/l11"]
    assert page["next"] == "c/l11"
    assert not part_files(d.data_dir)


async def test_upload_failure_leaves_nothing(tmp_path: object, moto_endpoint: str,
                                             s3_bucket: str) -> None:
    from pathlib import Path

    data_dir = Path(str(tmp_path)) / "d"
    with start_daemon(data_dir, "--remote-retry-timeout", "1s", remote=f"s3://{s3_bucket}",
                      s3_endpoint=moto_endpoint,
                      env={"CACHEDAEMON_FAILPOINTS": "server.put.after_upload=raise"}) as d:
        r = await fetch("PUT", f"{d.url}/v1/objects/f", data=b"z" * 1000)
        # The fail point fires after the bucket has the object: an internal error, and the
        # cache must not keep a copy.
        assert r.status >= 500
        st = (await fetch("GET", f"{d.url}/v1/cache")).json()
        assert st["bytes_reserved"] == 0 and st["objects"] == 0
        assert not part_files(data_dir)


async def test_bucket_failure_is_502_and_leaves_nothing(tmp_path: object, moto_endpoint: str,
                                                        s3_bucket: str) -> None:
    from pathlib import Path

    data_dir = Path(str(tmp_path)) / "d"
    with start_daemon(data_dir, "--remote-retry-timeout", "1s", remote=f"s3://{s3_bucket}",
                      s3_endpoint=moto_endpoint) as d:
        assert (await fetch("PUT", f"{d.url}/v1/objects/ok", data=b"fine")).status == 201
        assert (await fetch("DELETE", f"{d.url}/v1/objects/ok")).status == 204
        client = bare_s3_client(moto_endpoint)
        # The bucket vanishes under the daemon (with the daemon's own objects in it).
        for obj in client.list_objects_v2(Bucket=s3_bucket).get("Contents", []):
            client.delete_object(Bucket=s3_bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=s3_bucket)
        client.close()
        for size in (10, 3 * 1024 * 1024):
            r = await fetch("PUT", f"{d.url}/v1/objects/lost", data=b"q" * size)
            assert r.status == 502 and r.error_code == "upstream_error", r.body
        r = await fetch("GET", f"{d.url}/v1/objects/lost")
        assert r.status in (404, 502)
        st = (await fetch("GET", f"{d.url}/v1/cache")).json()
        assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
        assert st["objects"] == 0
        assert not part_files(data_dir)


async def test_listing_hides_the_daemons_objects_on_s3(tmp_path: object, moto_endpoint: str,
                                                       s3_bucket: str) -> None:
    """On S3 (with and without a bucket prefix) the reserved run of keys is skipped, whatever
    the page size, and never shown; the metastore works under it."""
    from pathlib import Path

    user = ["-x", ".a", ".cache/x", ".cachedaemo/x", ".cachedaemoo", "m", "meta/registry/kv"]
    for remote in (f"s3://{s3_bucket}", f"s3://{s3_bucket}/pre/fix"):
        data_dir = Path(str(tmp_path)) / remote.rsplit("/", 1)[-1] / "d"
        with start_daemon(data_dir, remote=remote, s3_endpoint=moto_endpoint, shards=2) as d:
            for i in range(30):  # plenty of the daemon's own objects (one epoch claim each)
                assert (await fetch("PUT", f"{d.url}/v1/kv/kv{i % 3}/k{i}", data=b"v")).status \
                    == 204
            for i in range(3):
                assert (await fetch("POST", f"{d.url}/v1/domains/kv{i}/flush")).status == 204
            for key in user:
                assert (await fetch("PUT", f"{d.url}/v1/objects/{key}", data=b"u")).status == 201
            for limit in (1, 2, 5, 1000):
                seen: list[str] = []
                after = ""
                while True:
                    page = (await fetch("GET", f"{d.url}/v1/objects?limit={limit}"
                                        + (f"&start_after={after}" if after else ""))).json()
                    seen += [o["key"] for o in page["objects"]]
                    if page["next"] is None:
                        break
                    after = page["next"]
                assert seen == sorted(user), (remote, limit, seen)
            assert (await fetch("GET", f"{d.url}/v1/kv/kv1/k1")).body == b"v"
        client = bare_s3_client(moto_endpoint)
        listed = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
        client.close()
        prefix = remote.split(s3_bucket, 1)[1].strip("/")
        prefix = prefix + "/" if prefix else ""
        assert any(k.startswith(prefix + ".cachedaemon/meta/registry/kv") for k in listed)
