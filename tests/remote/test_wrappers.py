"""Retrying, instrumented and fault-injecting wrappers, over every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from cachedaemon.core.retry import Backoff
from cachedaemon.errors import (
    PreconditionFailed,
    ShuttingDown,
    TransientUpstreamError,
    UpstreamError,
)
from cachedaemon.remote import (
    FaultInjectingObjectStore,
    InstrumentedObjectStore,
    MemoryObjectStore,
    RetryingObjectStore,
)
from cachedaemon.remote.base import ObjectMeta, ObjectStore

FAST = Backoff(initial_s=0.001, max_s=0.01)


async def test_retries_transient_faults(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store, seed=42)
    faulty.fail(fraction=0.5)
    store = RetryingObjectStore(faulty, deadline_s=10, backoff=FAST)
    for i in range(10):
        await store.put(f"k{i}", f"v{i}".encode())
    for i in range(10):
        assert await store.get_bytes(f"k{i}") == f"v{i}".encode()
        head = await store.head(f"k{i}")
        assert head is not None
    page = await store.list()
    assert [o.key for o in page.objects] == sorted(f"k{i}" for i in range(10))
    await store.delete_many([f"k{i}" for i in range(5)])
    await store.delete("k9")
    assert len((await store.list()).objects) == 4
    assert sum(faulty.injected.values()) > 5
    assert store.retries == sum(faulty.injected.values())


async def test_gives_up_at_the_deadline(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("head")
    store = RetryingObjectStore(faulty, deadline_s=0.3, backoff=Backoff(initial_s=0.02, max_s=0.05))
    start = time.monotonic()
    with pytest.raises(TransientUpstreamError):
        await store.head("k")
    elapsed = time.monotonic() - start
    assert 0.15 < elapsed < 2.0
    assert faulty.calls["head"] >= 3


async def test_does_not_retry_non_retryable(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("get", exception=UpstreamError)
    store = RetryingObjectStore(faulty, deadline_s=10, backoff=FAST)
    with pytest.raises(UpstreamError) as info:
        await store.get("k")
    assert not isinstance(info.value, TransientUpstreamError)
    assert faulty.calls["get"] == 1
    # Nor a lost condition.
    await store.put("c", b"1")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("c", b"2")
    assert faulty.calls["put"] == 2


async def test_nth_call_fails_once(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("put", nth=2)
    await faulty.put("a", b"1")
    with pytest.raises(TransientUpstreamError):
        await faulty.put("b", b"2")
    await faulty.put("c", b"3")
    assert await object_store.head("b") is None
    assert faulty.injected["put"] == 1


async def test_stream_put_is_not_replayed(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("put", times=1)
    store = RetryingObjectStore(faulty, deadline_s=10, backoff=FAST)

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    with pytest.raises(TransientUpstreamError):
        await store.put("s", body())
    assert faulty.calls["put"] == 1
    # bytes bodies are retried
    await store.put("s", b"chunk")
    assert faulty.calls["put"] == 2


async def test_lost_response_of_put_if_absent_is_resolved(object_store: ObjectStore) -> None:
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("put", times=1, when="after")  # the bucket stored it; the answer was lost
    store = RetryingObjectStore(faulty, deadline_s=10, backoff=FAST)
    info = await store.put_if_absent("once", b"payload")
    assert info.size == 7
    assert await object_store.get_bytes("once") == b"payload"
    # Someone else's object is still a loss.
    faulty.fail("put", times=1, when="after")
    await object_store.put("theirs", b"other")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("theirs", b"mine")


async def test_delay_and_abort() -> None:
    inner = MemoryObjectStore()
    faulty = FaultInjectingObjectStore(inner)
    faulty.delay("get", seconds=0.05, nth=1)
    start = time.monotonic()
    assert await faulty.get("k") is None
    assert time.monotonic() - start >= 0.04
    faulty.fail("head")
    abort = asyncio.Event()
    store = RetryingObjectStore(
        faulty, deadline_s=None, backoff=Backoff(initial_s=0.05), abort=abort
    )
    task = asyncio.create_task(store.head("k"))
    await asyncio.sleep(0.02)
    abort.set()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(task, 5)


async def test_instrumented_counts(object_store: ObjectStore) -> None:
    store = InstrumentedObjectStore(object_store)
    await store.put("a", b"12345")
    await store.put("b", b"678")
    assert await store.get_bytes("a") == b"12345"
    assert await store.get("missing") is None
    assert await store.head("a") is not None
    await store.delete("b")
    await store.list()
    stats = store.stats
    assert (stats["put"].calls, stats["put"].bytes, stats["put"].errors) == (2, 8, 0)
    assert (stats["get"].calls, stats["get"].bytes, stats["get"].misses) == (2, 5, 1)
    assert stats["head"].calls == 1 and stats["head"].misses == 0
    assert stats["delete"].calls == 1 and stats["delete"].misses == 0
    assert stats["list"].calls == 1
    assert sum(stats["put"].buckets) == 2
    assert stats["put"].seconds > 0
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail("put")
    failing = InstrumentedObjectStore(faulty)
    with pytest.raises(TransientUpstreamError):
        await failing.put("x", b"x")
    assert failing.stats["put"].errors == 1
    assert failing.stats.snapshot()["put"]["calls"] == 1


async def test_body_fault_breaks_download(object_store: ObjectStore) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    await object_store.put("b", data)
    faulty = FaultInjectingObjectStore(object_store)
    faulty.fail_body(after_bytes=100_000, nth=1)
    result = await faulty.get("b")
    assert result is not None
    got = bytearray()
    with pytest.raises(TransientUpstreamError):
        async with result:
            async for chunk in result.iter_chunks():
                got += chunk
    assert bytes(got) == data[:100_000]
    assert faulty.injected["get"] == 1
    assert await faulty.get_bytes("b") == data  # the second get is whole


async def test_wrappers_pass_metadata_and_part_layouts_on(object_store: ObjectStore) -> None:
    meta = ObjectMeta.make({"k": "v"}, content_type="text/csv")
    stack = RetryingObjectStore(
        InstrumentedObjectStore(FaultInjectingObjectStore(object_store)), deadline_s=5)
    data = b"x" * (5 * 1024 * 1024 + 3)  # S3's smallest part but the last is 5 MiB
    info = await stack.put("layout", data, meta=meta, part_sizes=[5 * 1024 * 1024, 3])
    assert info.etag.endswith("-2")
    head = await object_store.head("layout")
    assert head is not None and (head.etag, head.meta) == (info.etag, meta)
    await stack.put("single", b"abcdef", single_part=True)
    head = await object_store.head("single")
    assert head is not None and not head.etag.endswith("-1")


async def test_land_then_fail_aimed_at_keys() -> None:
    inner = MemoryObjectStore()
    faulty = FaultInjectingObjectStore(inner)
    rule = faulty.land_then_fail("put", key="wal/")
    with pytest.raises(TransientUpstreamError):
        await faulty.put_if_absent("wal/0001.log", b"segment")
    assert await inner.get_bytes("wal/0001.log") == b"segment"  # it landed
    await faulty.put("manifest", b"m")  # other keys are not touched
    with pytest.raises(PreconditionFailed):  # a retry meets its own landed write
        await faulty.put_if_absent("wal/0001.log", b"segment")
    assert rule.fired == 2 and faulty.injected["put"] == 1
    faulty.clear()
    # nth counts the calls the key filter matched; a predicate works as a filter too.
    faulty.fail("delete", nth=2, key=lambda k: k.endswith(".log"))
    await faulty.delete("manifest")
    await faulty.delete("wal/0001.log")
    await faulty.put("wal/0002.log", b"x")
    with pytest.raises(TransientUpstreamError):  # the second .log delete: refused first
        await faulty.delete("wal/0002.log")
    assert await inner.get_bytes("wal/0002.log") == b"x"
    faulty.clear()
    faulty.land_then_fail("delete_many", key="wal/", times=1)
    with pytest.raises(TransientUpstreamError):
        await faulty.delete_many(["a", "wal/0002.log"])
    assert await inner.head("wal/0002.log") is None


async def test_first_fail_rule_decides_a_call() -> None:
    inner = MemoryObjectStore()
    faulty = FaultInjectingObjectStore(inner)
    faulty.land_then_fail("put", key="m", nth=1)
    faulty.fail("put", key="m")
    for _ in range(3):
        with pytest.raises(TransientUpstreamError):
            await faulty.put("m", b"x")
    assert await inner.get_bytes("m") == b"x"  # the first landed; the others never reached it
    assert faulty.injected["put"] == 3
    await inner.delete("m")
    with pytest.raises(TransientUpstreamError):
        await faulty.put("m", b"y")
    assert await inner.head("m") is None
