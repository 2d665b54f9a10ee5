"""The ObjectStore contract, run over every backend (memory, local directory, S3 on moto)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cachedaemon.errors import InvalidArgument, InvalidKey, InvalidRange, PreconditionFailed
from cachedaemon.remote.base import Body, ObjectMeta, ObjectStore

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes (fast even for tens of MiB)."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


async def chunked(data: bytes, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), chunk):
        yield data[i : i + chunk]


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB + 1, 40 * MiB], ids=["0B", "1B", "5MiB+1", "40MiB"])
async def test_round_trip(object_store: ObjectStore, size: int) -> None:
    data = payload(size, seed=size)
    info = await object_store.put("obj/data", data)
    assert info.key == "obj/data"
    assert info.size == size
    if size <= 16 * MiB:  # single-part: the etag is the md5 (S3 multipart etags differ)
        assert info.etag == hashlib.md5(data).hexdigest()
    head = await object_store.head("obj/data")
    assert head is not None
    assert (head.size, head.etag) == (size, info.etag)

    result = await object_store.get("obj/data")
    assert result is not None
    async with result:
        assert result.content_length == size
        assert result.range is None
        assert result.info.etag == info.etag
        got = bytearray()
        async for chunk in result.iter_chunks():
            assert chunk
            got += chunk
    assert bytes(got) == data
    assert await object_store.get_bytes("obj/data") == data


@pytest.mark.parametrize("kind", ["bytes", "path", "stream"])
async def test_put_body_kinds(object_store: ObjectStore, tmp_path: Path, kind: str) -> None:
    data = payload(3 * MiB + 17, seed=3)
    body: Body
    if kind == "bytes":
        body = data
    elif kind == "path":
        source = tmp_path / "source"
        source.write_bytes(data)
        body = source
    else:
        body = chunked(data)
    info = await object_store.put("k", body)
    assert info.size == len(data)
    assert await object_store.get_bytes("k") == data


async def test_overwrite_replaces(object_store: ObjectStore) -> None:
    first = await object_store.put("k", b"first")
    second = await object_store.put("k", b"second!")
    assert first.etag != second.etag
    assert await object_store.get_bytes("k") == b"second!"
    head = await object_store.head("k")
    assert head is not None and head.size == 7


async def test_missing_is_none(object_store: ObjectStore) -> None:
    assert await object_store.get("nope") is None
    assert await object_store.get_bytes("nope") is None
    assert await object_store.head("nope") is None
    assert await object_store.get("nope", byte_range=(0, 10)) is None


async def test_delete(object_store: ObjectStore) -> None:
    await object_store.put("d/x", b"x")
    await object_store.delete("d/x")
    assert await object_store.head("d/x") is None
    await object_store.delete("d/x")  # missing: no error
    await object_store.delete("never/existed")
    await object_store.put("m/1", b"1")
    await object_store.put("m/2", b"2")
    await object_store.put("m/3", b"3")
    await object_store.delete_many(["m/1", "m/3", "m/missing"])
    assert [o.key for o in (await object_store.list("m/")).objects] == ["m/2"]


# --- ranges --------------------------------------------------------------------------------


async def test_ranges(object_store: ObjectStore) -> None:
    data = payload(1000, seed=7)
    await object_store.put("r", data)
    for first, last in [(0, 0), (5, 9), (0, 999), (999, 999), (10, 5000), (500, 10**9)]:
        result = await object_store.get("r", byte_range=(first, last))
        assert result is not None
        expected = data[first : last + 1]
        assert result.range == (first, min(last, 999))
        assert result.content_length == len(expected)
        assert result.info.size == 1000
        assert await result.read() == expected
    assert await object_store.get_bytes("r", byte_range=(990, 2000)) == data[990:]


@pytest.mark.parametrize("bad", [(1000, 1000), (1000, 2000), (5000, 6000), (9, 3), (-1, 5)])
async def test_invalid_range(object_store: ObjectStore, bad: tuple[int, int]) -> None:
    await object_store.put("r", payload(1000))
    with pytest.raises(InvalidRange) as info:
        await object_store.get("r", byte_range=bad)
    assert info.value.size == 1000


async def test_range_on_empty_object(object_store: ObjectStore) -> None:
    await object_store.put("empty", b"")
    with pytest.raises(InvalidRange) as info:
        await object_store.get("empty", byte_range=(0, 0))
    assert info.value.size == 0


async def test_partial_read_then_close(object_store: ObjectStore) -> None:
    data = payload(6 * MiB, seed=9)
    await object_store.put("big", data)
    result = await object_store.get("big")
    assert result is not None
    async with result:
        async for chunk in result.iter_chunks():
            assert data.startswith(chunk)
            break
    # The store is still usable after an early close.
    assert await object_store.get_bytes("big", byte_range=(0, 9)) == data[:10]


# --- conditional puts ----------------------------------------------------------------------


async def test_put_if_absent(object_store: ObjectStore) -> None:
    info = await object_store.put_if_absent("c", b"one")
    assert info.size == 3
    with pytest.raises(PreconditionFailed):
        await object_store.put_if_absent("c", b"two")
    with pytest.raises(PreconditionFailed):
        await object_store.put("c", b"two", if_none_match=True)
    assert await object_store.get_bytes("c") == b"one"


async def test_put_if_match(object_store: ObjectStore) -> None:
    v1 = await object_store.put("c", b"v1")
    v2 = await object_store.put_if_match("c", b"v2", v1.etag)
    assert await object_store.get_bytes("c") == b"v2"
    with pytest.raises(PreconditionFailed):
        await object_store.put_if_match("c", b"v3", v1.etag)  # stale etag loses
    assert await object_store.get_bytes("c") == b"v2"
    v3 = await object_store.put_if_match("c", b"v3", f'"{v2.etag}"')  # quoted is fine too
    assert v3.etag == hashlib.md5(b"v3").hexdigest()
    with pytest.raises(PreconditionFailed):
        await object_store.put_if_match("missing", b"x", v1.etag)  # missing object loses
    assert await object_store.head("missing") is None


async def test_concurrent_put_if_absent_one_winner(object_store: ObjectStore) -> None:
    n = 16

    async def attempt(i: int) -> int | None:
        try:
            await object_store.put_if_absent("race", f"writer-{i}".encode())
            return i
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(n)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert await object_store.get_bytes("race") == f"writer-{winners[0]}".encode()


async def test_concurrent_put_if_match_one_winner(object_store: ObjectStore) -> None:
    base = await object_store.put("cas", b"base")

    async def attempt(i: int) -> int | None:
        try:
            await object_store.put_if_match("cas", f"writer-{i}".encode(), base.etag)
            return i
        except PreconditionFailed:
            return None

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, results
    assert await object_store.get_bytes("cas") == f"writer-{winners[0]}".encode()


# --- listing -------------------------------------------------------------------------------

KEYS = ["a", "a-c", "a/b", "a/b/c", "a/d", "b", "b/x/y/z", "c.txt", "ä"]


async def _populate(store: ObjectStore) -> None:
    # Order matters for the local layout: "a" before and after its children.
    for key in ["a/b", "a", "a/b/c", "b/x/y/z", "a-c", "a/d", "b", "c.txt", "ä"]:
        await store.put(key, key.encode())


async def test_list_all_in_key_order(object_store: ObjectStore) -> None:
    await _populate(object_store)
    page = await object_store.list()
    assert [o.key for o in page.objects] == sorted(KEYS)
    assert page.next is None
    for info in page.objects:
        assert info.size == len(info.key.encode())
        assert info.etag == hashlib.md5(info.key.encode()).hexdigest()
    # a and a/b coexist and read back independently
    assert await object_store.get_bytes("a") == b"a"
    assert await object_store.get_bytes("a/b") == b"a/b"
    assert await object_store.get_bytes("a/b/c") == b"a/b/c"
    assert [o.key async for o in object_store.list_all()] == sorted(KEYS)


async def test_list_prefix_start_after(object_store: ObjectStore) -> None:
    await _populate(object_store)

    async def keys(prefix: str = "", start_after: str | None = None) -> list[str]:
        return [o.key for o in (await object_store.list(prefix, start_after=start_after)).objects]

    assert await keys("a/") == ["a/b", "a/b/c", "a/d"]
    assert await keys("a") == ["a", "a-c", "a/b", "a/b/c", "a/d"]
    assert await keys("a/b") == ["a/b", "a/b/c"]
    assert await keys("b/x/") == ["b/x/y/z"]
    assert await keys("zzz") == []
    assert await keys("", "a") == ["a-c", "a/b", "a/b/c", "a/d", "b", "b/x/y/z", "c.txt", "ä"]
    assert await keys("", "a/b") == ["a/b/c", "a/d", "b", "b/x/y/z", "c.txt", "ä"]
    assert await keys("a/", "a/b/c") == ["a/d"]
    assert await keys("", "a0") == ["b", "b/x/y/z", "c.txt", "ä"]
    assert await keys("", "ä") == []


async def test_list_pagination(object_store: ObjectStore) -> None:
    await _populate(object_store)
    seen: list[str] = []
    start_after: str | None = None
    pages = 0
    while True:
        page = await object_store.list(start_after=start_after, limit=2)
        pages += 1
        assert len(page.objects) <= 2
        seen += [o.key for o in page.objects]
        if page.next is None:
            break
        assert page.next == page.objects[-1].key
        start_after = page.next
    assert seen == sorted(KEYS)
    assert pages == 5
    exact = await object_store.list("a/", limit=3)
    assert [o.key for o in exact.objects] == ["a/b", "a/b/c", "a/d"]
    assert exact.next is None


async def test_list_after_deletes(object_store: ObjectStore) -> None:
    await _populate(object_store)
    await object_store.delete_many(["a/b/c", "a/b", "a/d"])
    assert [o.key for o in (await object_store.list("a")).objects] == ["a", "a-c"]
    await object_store.put("a/new", b"n")
    assert [o.key for o in (await object_store.list("a")).objects] == ["a", "a-c", "a/new"]
    assert await object_store.get_bytes("a") == b"a"


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", ".", "nul\x00", "x" * 1025]
)
async def test_invalid_keys(object_store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        await object_store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await object_store.get(key)
    with pytest.raises(InvalidKey):
        await object_store.head(key)
    with pytest.raises(InvalidKey):
        await object_store.delete(key)


async def test_odd_but_valid_keys(object_store: ObjectStore) -> None:
    keys = [".hidden", "dir/.cachedaemon-tmp", ".cachedaemon-meta", "sp ace/%41", "é/ü", "x..y"]
    for key in keys:
        await object_store.put(key, key.encode())
    for key in keys:
        assert await object_store.get_bytes(key) == key.encode()
    assert [o.key for o in (await object_store.list()).objects] == sorted(keys)


# --- failed puts leave nothing --------------------------------------------------------------


class BodyFailed(Exception):
    pass


async def failing_body(total: int, fail_after: int) -> AsyncIterator[bytes]:
    sent = 0
    chunk = payload(256 * 1024)
    while sent < total:
        if sent >= fail_after:
            raise BodyFailed("source broke")
        yield chunk
        sent += len(chunk)


async def test_failed_stream_put_leaves_nothing(object_store: ObjectStore) -> None:
    with pytest.raises(BodyFailed):
        await object_store.put("f", failing_body(8 * MiB, 3 * MiB))
    assert await object_store.head("f") is None
    assert (await object_store.list()).objects == []


async def test_cancelled_put_leaves_nothing(object_store: ObjectStore) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield payload(1 * MiB)
        started.set()
        await never.wait()
        yield b"x"

    task = asyncio.create_task(object_store.put("cancelled", stalled()))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await object_store.head("cancelled") is None
    assert (await object_store.list()).objects == []


async def test_losing_stream_put_keeps_the_winner(object_store: ObjectStore) -> None:
    await object_store.put("k", b"v")
    with pytest.raises(PreconditionFailed):
        await object_store.put_if_absent("k", failing_body(1 * MiB, 10 * MiB))
    assert await object_store.get_bytes("k") == b"v"
    assert [o.key for o in (await object_store.list()).objects] == ["k"]


# --- metadata and part layouts (the S3 endpoint's needs) -------------------------------------


def multipart_etag(data: bytes, sizes: list[int]) -> str:
    """S3's ETag of a multipart upload: md5 of the parts' md5 digests, then -N."""
    digests, offset = b"", 0
    for size in sizes:
        digests += hashlib.md5(data[offset : offset + size]).digest()
        offset += size
    return f"{hashlib.md5(digests).hexdigest()}-{len(sizes)}"


META = ObjectMeta(
    content_type="text/plain; charset=utf-8",
    content_encoding="identity",
    content_disposition='attachment; filename="a.txt"',
    content_language="en",
    cache_control="max-age=60",
    expires="Wed, 21 Oct 2037 07:28:00 GMT",
    user=(("colour", "blue"), ("owner", "team-a")),
)


@pytest.mark.parametrize("kind", ["bytes", "stream"])
async def test_metadata_round_trips(object_store: ObjectStore, kind: str) -> None:
    data = payload(1000)
    body: Body = data if kind == "bytes" else chunked(data, 300)
    info = await object_store.put("m/obj", body, meta=META)
    assert info.meta == META
    head = await object_store.head("m/obj")
    assert head is not None and head.meta == META
    result = await object_store.get("m/obj", byte_range=(0, 9))
    assert result is not None
    async with result:
        assert result.info.meta == META
    # A later put without metadata drops it (S3 replaces the whole object).
    await object_store.put("m/obj", data)
    head = await object_store.head("m/obj")
    assert head is not None and head.meta == ObjectMeta()
    # Listings do not carry metadata (as S3's ListObjectsV2).
    (listed,) = (await object_store.list("m/")).objects
    assert listed.meta is None


@pytest.mark.parametrize("kind", ["bytes", "path"])
async def test_single_part_layout_has_the_md5_etag(
    object_store: ObjectStore, tmp_path: Path, kind: str
) -> None:
    data = payload(17 * MiB, seed=3)  # above the S3 backend's multipart threshold
    body: Body = data
    if kind == "path":
        body = tmp_path / "src"
        body.write_bytes(data)
    info = await object_store.put("single", body, single_part=True)
    assert info.etag == hashlib.md5(data).hexdigest()
    head = await object_store.head("single")
    assert head is not None and head.etag == info.etag


@pytest.mark.parametrize("kind", ["bytes", "path", "stream"])
async def test_part_sizes_give_the_multipart_etag(
    object_store: ObjectStore, tmp_path: Path, kind: str
) -> None:
    sizes = [5 * MiB, 5 * MiB + 7, 1234]
    data = payload(sum(sizes), seed=4)
    body: Body
    if kind == "bytes":
        body = data
    elif kind == "path":
        body = tmp_path / "src"
        body.write_bytes(data)
    else:
        body = chunked(data, 1 << 20)
    info = await object_store.put("multi", body, part_sizes=sizes, meta=META)
    assert info.etag == multipart_etag(data, sizes)
    assert info.size == len(data)
    head = await object_store.head("multi")
    assert head is not None and (head.etag, head.meta) == (info.etag, META)
    assert await object_store.get_bytes("multi") == data
    (listed,) = (await object_store.list("multi")).objects
    assert listed.etag == info.etag


async def test_one_part_layout_is_still_multipart(object_store: ObjectStore) -> None:
    data = b"just one part"
    info = await object_store.put("one", data, part_sizes=[len(data)])
    assert info.etag == multipart_etag(data, [len(data)])


async def test_part_sizes_must_add_up(object_store: ObjectStore) -> None:
    with pytest.raises(InvalidArgument):
        await object_store.put("bad", b"12345", part_sizes=[2, 2])
    assert await object_store.head("bad") is None
