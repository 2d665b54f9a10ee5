"""The Python client against the real daemon (``python -m cachedaemon serve`` in a subprocess,
``file://`` bucket): every object and cache method, both clients, and how failures surface."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cachedaemon.client import AsyncClient, Client, KvDelete, KvPut
from cachedaemon.errors import (
    DaemonUnreachable,
    InvalidArgument,
    InvalidKey,
    InvalidRange,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unavailable,
)
from tests.support.daemon import DaemonProcess, start_daemon

MAX_OBJECT = 256 * 1024


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    data = tmp_path_factory.mktemp("client-daemon")
    with start_daemon(data / "data", "--cache-max-bytes", "8MiB",
                      "--max-object-bytes", str(MAX_OBJECT)) as d:
        yield d


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(daemon.url) as c:
        yield c


def _name(request: pytest.FixtureRequest) -> str:
    return str(request.node.name).replace("[", "-").replace("]", "")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_forms_and_get(client: AsyncClient, tmp_path: Path,
                                 request: pytest.FixtureRequest) -> None:
    base = _name(request)
    info = await client.put(f"{base}/bytes", b"hello")
    assert (info.key, info.size) == (f"{base}/bytes", 5)
    assert info.etag.startswith('"') and info.etag.endswith('"')
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    assert (await client.put(f"{base}/path", src)).size == 100_000
    assert (await client.put_file(f"{base}/path2", str(src))).size == 100_000
    with src.open("rb") as f:
        assert (await client.put(f"{base}/fileobj", f)).size == 100_000
    assert (await client.put(f"{base}/bytesio", io.BytesIO(b"abc"))).size == 3
    partly_read = io.BytesIO(b"0123456789")
    partly_read.seek(4)  # sent from the current position on, with its Content-Length
    assert (await client.put(f"{base}/partly", partly_read)).size == 6
    assert await client.get(f"{base}/partly") == b"456789"
    # An async stream of unknown size goes chunked.
    assert (await client.put(f"{base}/stream", _chunks(b"ab", b"", b"cd"))).size == 4
    sent: list[int] = []
    await client.put(f"{base}/progress", src, progress=sent.append)
    assert sum(sent) == 100_000

    assert await client.get(f"{base}/bytes") == b"hello"
    assert await client.get(f"{base}/path") == src.read_bytes()
    assert await client.get(f"{base}/fileobj") == src.read_bytes()
    assert await client.get(f"{base}/stream") == b"abcd"
    await client.put(f"{base}/empty", b"")
    assert await client.get(f"{base}/empty") == b""


async def test_streaming_reads_ranges_and_files(client: AsyncClient, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    key = f"{_name(request)}/obj"
    data = os.urandom(200_000)
    put = await client.put(key, data)
    async with client.open(key) as reader:
        assert reader.meta.size == 200_000 and reader.meta.etag == put.etag
        assert reader.meta.cache in ("hit", "miss")
        chunks = [c async for c in reader.iter_chunks(10_000)]
    assert b"".join(chunks) == data and len(chunks) >= 2
    # Leaving early closes the response without breaking the client.
    async with client.open(key) as reader:
        async for _ in reader:
            break
    assert await client.get(key, byte_range=(10, 19)) == data[10:20]
    assert await client.get(key, byte_range=(199_990, None)) == data[199_990:]
    assert await client.get(key, byte_range="-5") == data[-5:]
    async with client.open(key, byte_range=(0, 99)) as reader:
        assert reader.meta.size == 200_000 and reader.meta.content_length == 100
        assert await reader.read() == data[:100]
    with pytest.raises(InvalidRange) as bad_range:
        await client.get(key, byte_range=(300_000, None))
    assert bad_range.value.size == 200_000

    out = tmp_path / "out.bin"
    got: list[int] = []
    meta = await client.get_to_file(key, out, progress=got.append)
    assert out.read_bytes() == data and sum(got) == 200_000 and meta.etag == put.etag
    out.write_bytes(b"old contents")
    with pytest.raises(NotFound):
        await client.get_to_file(f"{key}-missing", out)
    assert out.read_bytes() == b"old contents"  # a failed download leaves the file alone
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # and no temporary behind
    buf = io.BytesIO()
    await client.get_into(key, buf)
    assert buf.getvalue() == data


async def test_head_delete_and_conditions(client: AsyncClient,
                                          request: pytest.FixtureRequest) -> None:
    key = f"{_name(request)}/k"
    first = await client.put(key, b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await client.put(key, b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await client.put(key, b"two", if_match='"0123"')
    second = await client.put(key, b"two!", if_match=first.etag)
    meta = await client.head(key)
    assert (meta.size, meta.etag) == (4, second.etag)
    await client.delete(key)
    await client.delete(key)  # absent: still fine
    with pytest.raises(NotFound):
        await client.head(key)
    with pytest.raises(NotFound):
        await client.get(key)
    with pytest.raises(PreconditionFailed):
        await client.put(key, b"x", if_match=second.etag)


@pytest.mark.parametrize("key", ["sp ace/and+plus", "pct%41/q?x#y", "ünïcødé/ключ", "a&b=c;d"])
async def test_keys_are_escaped_exactly(client: AsyncClient, key: str) -> None:
    await client.put(key, key.encode())
    assert await client.get(key) == key.encode()
    assert key in [i.key async for i in client.list(key.split("/")[0])]
    await client.delete(key)


async def test_invalid_keys_are_refused_not_normalised(client: AsyncClient) -> None:
    for key in ["a/../b", "a/./b", "/lead", "trail/", "x.part"]:
        with pytest.raises(InvalidKey):
            await client.put(key, b"x")
    with pytest.raises(InvalidArgument):  # InvalidKey is an InvalidArgument
        await client.get("a//b")


async def test_list_follows_next(client: AsyncClient, daemon: DaemonProcess,
                                 request: pytest.FixtureRequest) -> None:
    prefix = f"{_name(request)}/"
    keys = [f"{prefix}{i:02d}" for i in range(7)]
    for k in keys:
        await client.put(k, k.encode())
    await client.put(f"{prefix[:-1]}-other", b"x")
    assert [i.key async for i in client.list(prefix, page_size=2)] == keys
    assert [i.size async for i in client.list(prefix)] == [len(k) for k in keys]
    assert [i.key async for i in client.list(prefix, start_after=keys[4])] == keys[5:]
    page, nxt = await client.list_page(prefix, limit=3)
    assert [i.key for i in page] == keys[:3] and nxt == keys[2]
    with pytest.raises(InvalidArgument):
        await client.list_page(prefix, limit=10_001)


async def test_too_large_by_length_and_by_stream(client: AsyncClient,
                                                 request: pytest.FixtureRequest) -> None:
    key = f"{_name(request)}/big"
    with pytest.raises(TooLarge):
        await client.put(key, b"x" * (MAX_OBJECT + 1))
    big = [b"y" * 65536] * 5  # 320 KiB, sent chunked: refused once past the limit
    with pytest.raises(TooLarge):
        await client.put(key, _chunks(*big))
    with pytest.raises(NotFound):
        await client.head(key)
    assert (await client.put(key, b"z" * MAX_OBJECT)).size == MAX_OBJECT


async def test_cache_stats_trim_and_drop_cached(client: AsyncClient,
                                                request: pytest.FixtureRequest) -> None:
    key = f"{_name(request)}/c"
    await client.put(key, b"cached")
    stats = await client.cache_stats()
    assert stats.max_bytes == 8 * 1024 * 1024 and stats.shards == 1
    assert stats.objects >= 1 and stats.bytes_used >= 6
    assert set(stats.raw) >= {"bytes_used", "objects", "hits", "misses", "trims"}
    await client.drop_cached(key)
    async with client.open(key) as reader:
        assert reader.meta.cache == "miss"
        assert await reader.read() == b"cached"
    async with client.open(key) as reader:
        assert reader.meta.cache == "hit"
    after = await client.cache_stats()
    assert after.misses >= stats.misses + 1 and after.hits >= stats.hits + 1
    trimmed = await client.trim()
    assert trimmed.bytes_freed >= 0 and trimmed.objects_freed >= 0
    assert await client.healthz() is True and await client.readyz() is True


async def test_unreachable_daemon_is_a_clear_error() -> None:
    async with AsyncClient("http://127.0.0.1:1", timeout_s=2) as c:
        with pytest.raises(DaemonUnreachable) as exc:
            await c.get("k")
    assert isinstance(exc.value, Unavailable)
    assert "http://127.0.0.1:1" in str(exc.value)


def test_blocking_client(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    with Client(daemon.url, timeout=30) as c:
        assert c.put("sync/a", data).size == 50_000
        assert c.put("sync/b", iter([b"12", b"34"])).size == 4  # a plain iterable of chunks
        assert c.get("sync/a") == data
        assert c.head("sync/b").size == 4
        with c.open("sync/a") as reader:
            assert reader.meta.size == 50_000
            assert b"".join(reader.iter_chunks(4096)) == data
        assert [i.key for i in c.list("sync/", page_size=1)] == ["sync/a", "sync/b"]
        c.get_to_file("sync/a", tmp_path / "a")
        assert (tmp_path / "a").read_bytes() == data
        assert c.cache_stats().objects >= 2
        c.drop_cached("sync/a")
        c.delete("sync/a")
        with pytest.raises(NotFound):
            c.get("sync/a")
    with pytest.raises(RuntimeError):
        c.get("sync/b")  # closed


# --- key-value domains (the real metastore routes) ------------------------------------------


async def test_kv_round_trip_scan_batch_and_admin(client: AsyncClient) -> None:
    odd = [b"plain", b"a/b/c", b"\x00\xff", b"sp ace+plus=%?#", "ключ".encode()]
    for i, key in enumerate(odd):
        await client.kv_put("clientdom", key, b"v%d" % i)
    for i, key in enumerate(odd):
        assert await client.kv_get("clientdom", key) == b"v%d" % i
    await client.kv_batch("clientdom", [KvPut(b"n%02d" % i, b"%d" % i) for i in range(12)]
                          + [KvDelete(b"plain")])
    with pytest.raises(NotFound):
        await client.kv_get("clientdom", b"plain")
    numbered = [(b"n%02d" % i, b"%d" % i) for i in range(12)]
    assert [kv async for kv in client.kv_scan("clientdom", prefix=b"n", page_size=5)] == numbered
    assert [k async for k, _ in client.kv_scan("clientdom", prefix=b"n", reverse=True,
                                                page_size=5)] == [k for k, _ in numbered[::-1]]
    bounded = [k async for k, _ in client.kv_scan("clientdom", start=b"n03", end=b"n07",
                                                   page_size=2)]
    assert bounded == [b"n03", b"n04", b"n05", b"n06"]
    everything = sorted([*(k for k in odd if k != b"plain"), *(k for k, _ in numbered)])
    assert [k async for k, _ in client.kv_scan("clientdom", page_size=3)] == everything
    await client.kv_delete("clientdom", b"a/b/c")
    await client.kv_delete("clientdom", b"a/b/c")
    with pytest.raises(NotFound):
        await client.kv_get("clientdom", b"a/b/c")

    assert "clientdom" in await client.domains()
    await client.flush("clientdom")
    info = await client.domain_info("clientdom")
    assert info.name == "clientdom" and info.persisted_seqno == info.last_seqno > 0
    assert info.read_only is False and sum(lv.files for lv in info.levels) >= 1
    await client.compact("clientdom")
    assert await client.kv_get("clientdom", b"n05") == b"5"
    with pytest.raises(NotFound):
        await client.domain_info("never-written")
    with pytest.raises(InvalidArgument):
        await client.kv_put("Bad Name", b"k", b"v")
