"""open_object_store: URL parsing and the ConfigError it raises for bad URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachedaemon.errors import ConfigError, Unavailable
from cachedaemon.remote import (
    LocalObjectStore,
    MemoryObjectStore,
    S3ObjectStore,
    check_bucket,
    open_object_store,
)


async def test_file_url(tmp_path: Path) -> None:
    store = open_object_store(f"file://{tmp_path}/bucket")
    assert isinstance(store, LocalObjectStore)
    assert (tmp_path / "bucket").is_dir()  # created if missing
    await store.put("k", b"v")
    assert (tmp_path / "bucket" / "k").read_bytes() == b"v"
    await check_bucket(store)


async def test_s3_url(moto_endpoint: str, s3_bucket: str) -> None:
    store = open_object_store(f"s3://{s3_bucket}/some/prefix/", s3_endpoint=moto_endpoint)
    assert isinstance(store, S3ObjectStore)
    assert store.url == f"s3://{s3_bucket}/some/prefix"
    try:
        await check_bucket(store)
        await store.put("k", b"v")
        assert await store.get_bytes("k") == b"v"
    finally:
        await store.close()


def test_memory_url() -> None:
    assert isinstance(open_object_store("memory://x"), MemoryObjectStore)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file://relative/path", "absolute path"),
        ("file:relative", "must be absolute"),
        ("s3://", "missing bucket"),
        ("s3://Bad_Bucket", "invalid bucket"),
        ("s3://ab", "invalid bucket"),
        ("s3://bucket/a/../b", "invalid prefix"),
        ("s3://bucket/a//b", "invalid prefix"),
        ("http://example.com/b", "unsupported URL"),
        ("bucket", "unsupported URL"),
        ("", "unsupported URL"),
    ],
)
def test_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_object_store(url, source="--remote")
    assert info.value.setting == "remote.url"
    assert info.value.source == "--remote"
    assert problem in info.value.problem


def test_bad_endpoint() -> None:
    with pytest.raises(ConfigError) as info:
        open_object_store("s3://bucket", s3_endpoint="localhost:9000")
    assert info.value.setting == "remote.s3_endpoint"
    assert info.value.source == "config"


def test_unwritable_file_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(Unavailable, match="unreachable bucket"):
        open_object_store(f"file://{blocker}/bucket")


def test_bad_multipart_settings() -> None:
    with pytest.raises(ConfigError) as info:
        open_object_store("s3://bucket", part_size=1024, source="env")
    assert (info.value.setting, info.value.source) == ("remote.multipart_part_size", "env")
    with pytest.raises(ConfigError) as info:
        open_object_store("s3://bucket", multipart_threshold=6 << 20, part_size=8 << 20)
    assert info.value.setting == "remote.multipart_threshold"
