"""The bucket identity (``cachedaemon.server.bucket_identity``): a cache never outlives its bucket.

In-process against real ``file://`` buckets: the id is made once (concurrent first starts agree),
a cache of another or a recreated bucket is dropped with a warning, a cache of this bucket is
kept, an interrupted drop finishes at the next start, a read-only daemon writes nothing. Then
end to end, the daemon subprocess over a ``file://`` bucket and over moto: put, stop, delete the
bucket and create it again (or point the data directory at another bucket), start again, and the
stale cached copy is not served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.core import failpoints
from cachedaemon.errors import FailPointTriggered
from cachedaemon.namespace import BUCKET_ID_KEY
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.server.bucket_identity import (
    RECORD_NAME,
    BucketIdentityError,
    check_bucket_identity,
    read_or_create_bucket_id,
    read_record,
)
from tests.conftest import bare_s3_client
from tests.support.daemon import start_daemon
from tests.support.http import fetch

# --- in-process --------------------------------------------------------------------------------


def _seed_cache(data_dir: Path, name: str = "k", body: bytes = b"old") -> Path:
    cache = data_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / name).write_bytes(body)
    return cache / name


async def _check(store: LocalObjectStore, data_dir: Path, *, create: bool = True) -> Any:
    return await check_bucket_identity(store, data_dir, store.url, create=create)


async def test_first_start_records_the_id_and_a_restart_keeps_the_cache(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    data = tmp_path / "data"
    data.mkdir()
    first = await _check(store, data)
    assert first.recorded and not first.dropped and first.recorded_id is None
    body = await store.get_bytes(BUCKET_ID_KEY)
    assert body is not None and json.loads(body)["bucket_id"] == first.bucket_id
    assert read_record(data) == {"bucket_id": first.bucket_id, "remote_url": store.url}
    entry = _seed_cache(data)  # what the daemon cached since
    again = await _check(store, data)
    assert again.bucket_id == first.bucket_id and not again.dropped and not again.recorded
    assert entry.read_bytes() == b"old"
    assert (await store.get_bytes(BUCKET_ID_KEY)) == body  # made once, never rewritten


async def test_a_cache_of_another_bucket_is_dropped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    one = LocalObjectStore(tmp_path / "one")
    two = LocalObjectStore(tmp_path / "two")
    first = await _check(one, data)
    entry = _seed_cache(data)
    wal = data / "wal" / "some-domain-uuid" / "000001.log"
    wal.parent.mkdir(parents=True)
    wal.write_bytes(b"acknowledged writes")
    with caplog.at_level(logging.WARNING, "cachedaemon.server"):
        other = await _check(two, data)
    assert other.dropped and other.recorded_id == first.bucket_id
    assert other.bucket_id != first.bucket_id
    assert not entry.exists() and not (data / "cache").exists()
    assert [p.name for p in data.iterdir() if p.name.startswith("cache")] == []
    assert read_record(data)["bucket_id"] == other.bucket_id  # type: ignore[index]
    assert wal.read_bytes() == b"acknowledged writes"  # the write-ahead logs are kept
    (warning,) = [r for r in caplog.records if "dropping the cache" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert first.bucket_id in warning.getMessage() and two.url in warning.getMessage()


async def test_a_recreated_bucket_gets_a_new_id_and_the_cache_is_dropped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = LocalObjectStore(tmp_path / "bucket")
    first = await _check(store, data)
    entry = _seed_cache(data)
    shutil.rmtree(tmp_path / "bucket")  # the bucket deleted and created again, same name
    store = LocalObjectStore(tmp_path / "bucket")
    after = await _check(store, data)
    assert after.dropped and after.bucket_id != first.bucket_id and not entry.exists()


async def test_a_cache_without_a_record_is_dropped_and_an_empty_one_is_not(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    data = tmp_path / "data"
    entry = _seed_cache(data)  # a data directory from before the record existed
    result = await _check(store, data)
    assert result.dropped and not entry.exists() and read_record(data) is not None
    fresh = tmp_path / "fresh"
    (fresh / "cache").mkdir(parents=True)
    result = await _check(store, fresh)
    assert not result.dropped and result.recorded and (fresh / "cache").is_dir()


async def test_concurrent_first_starts_agree_on_one_id(tmp_path: Path) -> None:
    """Both read "absent" before either creates it (forced by holding the reads), then both
    put-if-absent: the loser takes the winner's id."""
    both_read = asyncio.Event()
    readers = 0

    class HoldReads(LocalObjectStore):
        async def get_bytes(self, key: str, **kw: Any) -> bytes | None:
            nonlocal readers
            body = await super().get_bytes(key, **kw)
            if body is None and not both_read.is_set():
                readers += 1
                if readers == 2:
                    both_read.set()
                await both_read.wait()
            return body

    for _ in range(20):  # bounded repetition of the race
        root = tmp_path / "bucket"
        shutil.rmtree(root, ignore_errors=True)
        both_read.clear()
        readers = 0
        a, b = HoldReads(root), HoldReads(root)
        ids = await asyncio.gather(read_or_create_bucket_id(a, create=True),
                                   read_or_create_bucket_id(b, create=True))
        assert ids[0] == ids[1] is not None
        assert json.loads(await a.get_bytes(BUCKET_ID_KEY) or b"")["bucket_id"] == ids[0]


async def test_an_interrupted_drop_finishes_at_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    one = LocalObjectStore(tmp_path / "one")
    await _check(one, data)
    entry = _seed_cache(data)
    two = LocalObjectStore(tmp_path / "two")
    failpoints.arm("bucket_identity.after_rename", "raise")
    try:
        with pytest.raises(FailPointTriggered):
            await _check(two, data)
    finally:
        failpoints.disarm()
    # Renamed aside, not yet deleted, the record still the old bucket's.
    assert [p.name.startswith("cache.stale-") for p in data.iterdir() if "cache" in p.name] == [
        True]
    after = await _check(two, data)
    assert after.recorded and not entry.exists()
    assert [p.name for p in data.iterdir() if p.name.startswith("cache")] == []
    assert read_record(data)["bucket_id"] == after.bucket_id  # type: ignore[index]


async def test_a_read_only_daemon_writes_nothing_to_the_bucket(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    data = tmp_path / "data"
    entry = _seed_cache(data)
    result = await _check(store, data, create=False)
    assert result.bucket_id is None and not result.dropped and entry.exists()
    assert await store.get_bytes(BUCKET_ID_KEY) is None
    assert read_record(data) is None
    # A writer makes the id later; the replica then records it.
    (tmp_path / "writer-data").mkdir()
    writer = await _check(store, tmp_path / "writer-data")
    again = await _check(store, data, create=False)
    assert again.bucket_id == writer.bucket_id and again.recorded
    # The bucket recreated: the replica's recorded bucket has no id any more: drop.
    shutil.rmtree(tmp_path / "bucket")
    store = LocalObjectStore(tmp_path / "bucket")
    entry = _seed_cache(data)
    gone = await _check(store, data, create=False)
    assert gone.dropped and not entry.exists() and not (data / RECORD_NAME).exists()


async def test_a_malformed_id_object_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    await store.put(BUCKET_ID_KEY, b"not json")
    with pytest.raises(BucketIdentityError, match=r"\.cachedaemon/bucket-id .*delete"):
        await _check(store, tmp_path / "data")


# --- end to end: the daemon subprocess ---------------------------------------------------------


async def _get(url: str, key: str) -> tuple[int, bytes, str | None]:
    r = await fetch("GET", f"{url}/v1/objects/{key}")
    return r.status, r.body, r.headers.get("X-Cache")


async def test_daemon_over_a_recreated_file_bucket_does_not_serve_the_stale_entry(
        tmp_path: Path) -> None:
    data, bucket = tmp_path / "data", tmp_path / "bucket"
    remote = f"file://{bucket}"
    with start_daemon(data, remote=remote) as d:
        assert (await fetch("PUT", f"{d.url}/v1/objects/k", data=b"old")).status == 201
        assert await _get(d.url, "k") == (200, b"old", "hit")
        assert d.terminate() == 0
    # Restarted on the same bucket: the cache is kept (a hit, no warning).
    with start_daemon(data, remote=remote) as d:
        assert await _get(d.url, "k") == (200, b"old", "hit")
        assert d.terminate() == 0
        assert "dropping the cache" not in d.logs()
    # The bucket deleted and created again, holding a different object under the same key.
    shutil.rmtree(bucket)
    bucket.mkdir()
    (bucket / "k").write_bytes(b"new")
    with start_daemon(data, remote=remote) as d:
        assert await _get(d.url, "k") == (200, b"new", "miss")
        assert (await fetch("GET", f"{d.url}/v1/objects/gone")).status == 404
        logs = d.logs()
    assert "dropping the cache" in logs and "deleted and created again" in logs


async def test_daemon_pointed_at_another_bucket_does_not_serve_the_first_ones_entries(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    with start_daemon(data, remote=f"file://{tmp_path / 'one'}") as d:
        assert (await fetch("PUT", f"{d.url}/v1/objects/k", data=b"one's")).status == 201
    with start_daemon(data, remote=f"file://{tmp_path / 'two'}") as d:
        assert (await _get(d.url, "k"))[0] == 404


@pytest.mark.s3
async def test_daemon_over_a_recreated_moto_bucket_does_not_serve_the_stale_entry(
        tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> None:
    data = tmp_path / "data"
    opts: dict[str, Any] = {"remote": f"s3://{s3_bucket}", "s3_endpoint": moto_endpoint}
    with start_daemon(data, **opts) as d:
        assert (await fetch("PUT", f"{d.url}/v1/objects/k", data=b"old")).status == 201
        assert await _get(d.url, "k") == (200, b"old", "hit")
        assert d.terminate() == 0
    s3 = bare_s3_client(moto_endpoint)
    try:
        first_id = json.loads(s3.get_object(Bucket=s3_bucket, Key=BUCKET_ID_KEY)["Body"].read())
        # down, then up: the bucket is gone with everything in it, and made again.
        for obj in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", []):
            s3.delete_object(Bucket=s3_bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=s3_bucket)
        s3.create_bucket(Bucket=s3_bucket)
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"new")
        with start_daemon(data, **opts) as d:
            assert await _get(d.url, "k") == (200, b"new", "miss")
            listing = (await fetch("GET", f"{d.url}/v1/objects?prefix=k")).json()
            assert [o["key"] for o in listing["objects"]] == ["k"]
            logs = d.logs()
        new_id = json.loads(s3.get_object(Bucket=s3_bucket, Key=BUCKET_ID_KEY)["Body"].read())
    finally:
        s3.close()
    assert new_id["bucket_id"] != first_id["bucket_id"]
    assert "dropping the cache" in logs
