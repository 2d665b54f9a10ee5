"""The persistence contract (``cachedaemon.lsm.io.persistence``), run over every backend.

Modelled on Redpanda's ``lsm/io/tests/persistence_test.cc``: one suite, parametrised over
memory, disk, cloud (staging dir) and cloud-cache, the cloud ones against both the moto S3
server and the local ``file://`` bucket (see ``tests/support/lsm_persistence.py``).
Per-backend behaviour (temp-file naming, staging cleanup, cache hits) is tested at the bottom.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache.service import CacheService
from cachedaemon.clock import NO_DEADLINE
from cachedaemon.core import failpoints
from cachedaemon.errors import IOFailure, ShuttingDown, UpstreamError
from cachedaemon.lsm.io.cloud import open_cloud_persistence
from cachedaemon.lsm.io.cloud_cache import CloudCacheDataPersistence, cloud_cache_persistence
from cachedaemon.lsm.io.disk import (
    STAGING_SUFFIX,
    manifest_name,
    open_disk_persistence,
    staging_name,
)
from cachedaemon.lsm.io.persistence import FileExists, FileHandle, Persistence
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.faulty import FaultInjectingObjectStore
from cachedaemon.remote.local import LocalObjectStore
from tests.support.lsm_persistence import (
    FAULT_APPEND_BYTES,
    PersistenceBackend,
    cache_settings_for_tests,
    open_test_cache,
    part_files,
)


async def write_file(p: Persistence, handle: FileHandle, *chunks: bytes) -> None:
    w = await p.data.open_sequential_writer(handle)
    for chunk in chunks:
        await w.append(chunk)
    await w.close()


async def read_all(p: Persistence, handle: FileHandle) -> bytes | None:
    r = await p.data.open_random_access_reader(handle)
    if r is None:
        return None
    try:
        return await r.read(0, r.size())
    finally:
        await r.close()


async def listed(p: Persistence) -> list[FileHandle]:
    return [h async for h in p.data.list_files()]


async def assert_nothing_left_then_rewritable(
    backend: PersistenceBackend, p: Persistence, h: FileHandle, data: bytes
) -> None:
    """After a writer of ``h`` failed or was aborted: no file, no listing, no leftovers, and
    the handle can be written afresh."""
    assert await p.data.open_random_access_reader(h) is None
    assert await listed(p) == []
    assert await backend.leftovers() == []
    await write_file(p, h, data)
    assert await read_all(p, h) == data


# -- data files ---------------------------------------------------------------------------


async def test_write_then_read_at_random_offsets(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    rng = random.Random(30045)
    chunks = [rng.randbytes(rng.randint(0, 70_000)) for _ in range(12)]
    data = b"".join(chunks)
    handle = FileHandle(7, 3)
    await write_file(p, handle, *chunks)

    r = await p.data.open_random_access_reader(handle)
    assert r is not None
    assert r.size() == len(data)
    for _ in range(60):
        offset = rng.randint(0, len(data))
        n = rng.randint(0, len(data) - offset)
        assert await r.read(offset, n) == data[offset : offset + n]
    assert await r.read(0, len(data)) == data
    assert await r.read(len(data), 0) == b""
    await r.close()


async def test_read_past_end_raises(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    handle = FileHandle(1)
    await write_file(p, handle, b"0123456789")
    r = await p.data.open_random_access_reader(handle)
    assert r is not None
    assert await r.read(8, 2) == b"89"
    with pytest.raises(IOFailure):
        await r.read(8, 3)
    with pytest.raises(IOFailure):
        await r.read(11, 0)
    with pytest.raises(IOFailure):
        await r.read(-1, 2)
    # The reader still works after a refused read.
    assert await r.read(0, 4) == b"0123"
    await r.close()


async def test_empty_file(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    await write_file(p, FileHandle(5))
    r = await p.data.open_random_access_reader(FileHandle(5))
    assert r is not None
    assert r.size() == 0
    with pytest.raises(IOFailure):
        await r.read(0, 1)
    await r.close()
    assert await listed(p) == [FileHandle(5)]


async def test_missing_file_reader_is_none(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    assert await p.data.open_random_access_reader(FileHandle(42, 1)) is None
    await write_file(p, FileHandle(42, 2), b"other epoch")
    assert await p.data.open_random_access_reader(FileHandle(42, 1)) is None


async def test_list_files(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    assert await listed(p) == []
    handles = [FileHandle(i, e) for i in (2, 3, 10) for e in (0, 5)]
    for h in reversed(handles):
        await write_file(p, h, f"file {h.name}".encode())
    assert sorted(await listed(p)) == sorted(handles)
    # A file being written is not listed until its writer closes.
    w = await p.data.open_sequential_writer(FileHandle(99))
    await w.append(b"in flight")
    assert FileHandle(99) not in await listed(p)
    await w.close()
    assert FileHandle(99) in await listed(p)


async def test_remove_file(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    keep, drop = FileHandle(2), FileHandle(3)
    await write_file(p, keep, b"keep")
    await write_file(p, drop, b"drop")
    await p.data.remove_file(drop)
    assert await p.data.open_random_access_reader(drop) is None
    assert await listed(p) == [keep]
    assert await read_all(p, keep) == b"keep"
    # Removing a missing file (again, or never written) is a no-op.
    await p.data.remove_file(drop)
    await p.data.remove_file(FileHandle(12345, 9))
    assert await listed(p) == [keep]


async def test_reader_survives_removal(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(4)
    await write_file(p, h, b"still readable")
    r = await p.data.open_random_access_reader(h)
    assert r is not None
    await p.data.remove_file(h)
    assert await r.read(0, 5) == b"still"
    await r.close()
    assert await p.data.open_random_access_reader(h) is None


async def test_duplicate_handle_fails_and_keeps_original(
    persistence_backend: PersistenceBackend,
) -> None:
    p = await persistence_backend.open()
    h = FileHandle(8, 1)
    await write_file(p, h, b"original data")
    with pytest.raises(FileExists):
        w = await p.data.open_sequential_writer(h)
        # Not reached by a correct backend; if it were, the write must still fail.
        await w.append(b"replacement")
        await w.close()
    assert await read_all(p, h) == b"original data"
    assert await listed(p) == [h]


async def test_duplicate_of_open_writer_fails(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(9)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"first writer")
    with pytest.raises(FileExists):
        await p.data.open_sequential_writer(h)
    await w.close()
    assert await read_all(p, h) == b"first writer"


async def test_no_reader_while_writer_open(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(10)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"partial")
    with pytest.raises(IOFailure):
        await p.data.open_random_access_reader(h)
    await w.close()
    assert await read_all(p, h) == b"partial"


async def test_failed_append_leaves_nothing(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(11, 2)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"head")
    persistence_backend.fail_append(p)
    with pytest.raises(IOFailure):
        await w.append(b"x" * FAULT_APPEND_BYTES)
    with pytest.raises(IOFailure):
        await w.close()
    await w.abort()  # idempotent after a failure
    await assert_nothing_left_then_rewritable(persistence_backend, p, h, b"second try")


async def test_failed_close_leaves_nothing(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(12)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"doomed")
    persistence_backend.fail_close(p)
    with pytest.raises(IOFailure):
        await w.close()
    await assert_nothing_left_then_rewritable(persistence_backend, p, h, b"retried")


async def test_abort_discards(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(13)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"never mind")
    await w.abort()
    await w.abort()
    with pytest.raises(IOFailure):
        await w.close()
    await assert_nothing_left_then_rewritable(persistence_backend, p, h, b"again")


async def test_double_close_is_an_error(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    h = FileHandle(14)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"once")
    await w.close()
    with pytest.raises(IOFailure):
        await w.close()
    await w.abort()  # after a successful close, abort is a no-op...
    assert await read_all(p, h) == b"once"  # ...and does not discard the file
    r = await p.data.open_random_access_reader(h)
    assert r is not None
    await r.close()
    with pytest.raises(IOFailure):
        await r.close()
    with pytest.raises(IOFailure):
        await r.read(0, 1)


async def test_concurrent_writers_of_distinct_handles(
    persistence_backend: PersistenceBackend,
) -> None:
    p = await persistence_backend.open()
    handles = [FileHandle(i, 4) for i in range(20, 28)]

    async def one(h: FileHandle) -> None:
        await write_file(p, h, h.name.encode(), b"|", bytes(h.id) * 3)

    await asyncio.gather(*(one(h) for h in handles))
    assert sorted(await listed(p)) == handles
    for h in handles:
        assert await read_all(p, h) == h.name.encode() + b"|" + bytes(h.id) * 3


async def test_use_after_close_is_refused(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    await p.data.close()
    await p.metadata.close()
    with pytest.raises(ShuttingDown):
        await p.data.open_sequential_writer(FileHandle(1))
    with pytest.raises(ShuttingDown):
        await p.metadata.read_manifest(10)


# -- manifests ----------------------------------------------------------------------------


async def test_manifest_newest_le_epoch(persistence_backend: PersistenceBackend) -> None:
    m = (await persistence_backend.open()).metadata
    assert await m.read_manifest(2**63) is None
    await m.write_manifest(5, b"five")
    assert await m.read_manifest(4) is None
    assert await m.read_manifest(5) == (5, b"five")
    assert await m.read_manifest(100) == (5, b"five")
    await m.write_manifest(7, b"seven")
    assert await m.read_manifest(7) == (7, b"seven")
    assert await m.read_manifest(2**63) == (7, b"seven")
    # Writing a newer epoch drops the older manifests.
    assert await m.read_manifest(6) is None
    # A stale (lower-epoch) writer never hides the newer manifest.
    await m.write_manifest(3, b"three")
    assert await m.read_manifest(100) == (7, b"seven")
    assert await m.read_manifest(6) == (3, b"three")
    assert await m.read_manifest(2) is None


async def test_manifest_replace_same_epoch(persistence_backend: PersistenceBackend) -> None:
    m = (await persistence_backend.open()).metadata
    for i in range(5):
        await m.write_manifest(9, f"edit {i}".encode() * (i + 1))
        assert await m.read_manifest(9) == (9, f"edit {i}".encode() * (i + 1))
    await m.write_manifest(9, b"")
    assert await m.read_manifest(9) == (9, b"")


async def test_manifest_failed_write_keeps_old(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    await p.metadata.write_manifest(4, b"old")
    persistence_backend.fail_manifest_write(p)
    with pytest.raises(IOFailure):
        await p.metadata.write_manifest(6, b"new")
    assert await p.metadata.read_manifest(100) == (4, b"old")
    assert await persistence_backend.leftovers() == []
    await p.metadata.write_manifest(6, b"new")
    assert await p.metadata.read_manifest(100) == (6, b"new")


async def test_manifest_readers_see_whole_versions(
    persistence_backend: PersistenceBackend,
) -> None:
    """Readers racing a stream of replacements only ever see a whole manifest."""
    m = (await persistence_backend.open()).metadata
    versions = [bytes([i]) * (1000 + 997 * i) for i in range(12)]
    await m.write_manifest(1, versions[0])
    seen: list[bytes] = []
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            got = await m.read_manifest(100)
            assert got is not None
            seen.append(got[1])
            await asyncio.sleep(0)

    async def writer() -> None:
        for i, v in enumerate(versions[1:], start=1):
            await m.write_manifest(1 + i // 3, v)
            await asyncio.sleep(0.001)  # let the readers in, even on the memory backend
        done.set()

    await asyncio.gather(writer(), reader(), reader())
    assert seen
    assert all(s in versions for s in seen)
    assert await m.read_manifest(100) == (1 + 11 // 3, versions[-1])


async def test_reopen_sees_same_state(persistence_backend: PersistenceBackend) -> None:
    p = await persistence_backend.open()
    files = {FileHandle(i, 2): os.urandom(1000 + i) for i in range(2, 6)}
    for h, data in files.items():
        await write_file(p, h, data)
    await p.data.remove_file(FileHandle(3, 2))
    del files[FileHandle(3, 2)]
    await p.metadata.write_manifest(2, b"manifest at epoch 2")
    await p.data.close()
    await p.metadata.close()

    q = await persistence_backend.open()
    assert sorted(await listed(q)) == sorted(files)
    for h, data in files.items():
        assert await read_all(q, h) == data
    assert await q.metadata.read_manifest(2) == (2, b"manifest at epoch 2")
    with pytest.raises(FileExists):
        await q.data.open_sequential_writer(FileHandle(2, 2))


# -- disk only ----------------------------------------------------------------------------


async def test_disk_removes_stale_staging_files_by_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "db"
    directory.mkdir()
    stale = [
        directory / f".{manifest_name(3)}.deadbeef{STAGING_SUFFIX}",
        directory / f".{manifest_name(4)}.cafe{STAGING_SUFFIX}",
    ]
    for path in stale:
        path.write_bytes(b"half a manifest")
    (directory / manifest_name(2)).write_bytes(b"good")
    sst = directory / FileHandle(2).name
    sst.write_bytes(b"sst")
    # A file with the same bare name in the working directory must survive: Redpanda's
    # cleanup unlinked the bare name, relative to the process's working directory.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    decoy = elsewhere / stale[0].name
    decoy.write_bytes(b"not ours")
    monkeypatch.chdir(elsewhere)

    p = await open_disk_persistence(directory)
    assert not any(path.exists() for path in stale)
    assert decoy.exists()
    assert sst.exists()
    assert await p.metadata.read_manifest(10) == (2, b"good")
    assert [h async for h in p.data.list_files()] == [FileHandle(2)]


async def test_disk_manifest_staging_names_are_unique(tmp_path: Path) -> None:
    names = {staging_name(manifest_name(5)) for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f".{manifest_name(5)}.") and n.endswith(STAGING_SUFFIX) for n in names)

    # Two writes of the same epoch in flight at once each stage to their own file.
    directory = tmp_path / "db"
    p = await open_disk_persistence(directory)
    failpoints.arm("lsm.disk.manifest.before_rename", "delay:0.3")
    writes = asyncio.gather(
        p.metadata.write_manifest(5, b"a" * 100), p.metadata.write_manifest(5, b"b" * 100)
    )
    await asyncio.sleep(0.15)
    staging = [n for n in os.listdir(directory) if n.endswith(STAGING_SUFFIX)]
    assert len(staging) == 2
    await writes
    assert sorted(os.listdir(directory)) == [manifest_name(5)]
    got = await p.metadata.read_manifest(5)
    assert got in ((5, b"a" * 100), (5, b"b" * 100))


async def test_disk_manifest_write_deletes_older_files(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    p = await open_disk_persistence(directory)
    for epoch in (1, 2, 8):
        await p.metadata.write_manifest(epoch, f"e{epoch}".encode())
    await p.metadata.write_manifest(4, b"stale writer")
    assert sorted(os.listdir(directory)) == [manifest_name(4), manifest_name(8)]
    assert await p.metadata.read_manifest(100) == (8, b"e8")


async def test_disk_sst_is_created_exclusively(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    p = await open_disk_persistence(directory)
    # A file that exists on disk but that this process never wrote (a crash leftover, another
    # process) is not clobbered either.
    (directory / FileHandle(6, 1).name).write_bytes(b"someone else's")
    with pytest.raises(FileExists):
        await p.data.open_sequential_writer(FileHandle(6, 1))
    assert (directory / FileHandle(6, 1).name).read_bytes() == b"someone else's"


# -- cloud (staging directory) only -------------------------------------------------------


async def _cloud(
    tmp_path: Path, store: ObjectStore | None = None, **kwargs: Any
) -> tuple[Persistence, ObjectStore, Path]:
    store = store if store is not None else LocalObjectStore(tmp_path / "bucket")
    staging = tmp_path / "staging"
    p = await open_cloud_persistence(store, "db/7", staging, **kwargs)
    return p, store, staging


async def test_cloud_cleans_staging_dir_at_open(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    leftovers = [
        staging / f"{FileHandle(3).name}.0123.staging",
        staging / f"{FileHandle(4).name}.tmp.abcd",
        staging / FileHandle(5).name,
    ]
    for path in leftovers:
        path.write_bytes(b"crash leftover")
    (staging / "subdir").mkdir()  # directories are not ours to remove
    p, _, _ = await _cloud(tmp_path)
    assert sorted(os.listdir(staging)) == ["subdir"]
    assert [h async for h in p.data.list_files()] == []


async def test_cloud_writer_stages_then_uploads(tmp_path: Path) -> None:
    p, store, staging = await _cloud(tmp_path)
    h = FileHandle(2, 1)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"x" * (3 << 20))  # past the write-behind threshold: bytes reach the file
    staged = os.listdir(staging)
    assert len(staged) == 1 and staged[0].startswith(h.name) and staged[0].endswith(".staging")
    assert await store.head(f"db/7/{h.name}") is None  # nothing in the bucket before close
    await w.close()
    assert os.listdir(staging) == []
    info = await store.head(f"db/7/{h.name}")
    assert info is not None and info.size == 3 << 20


async def test_cloud_duplicate_found_at_upload_never_overwrites(tmp_path: Path) -> None:
    p, store, staging = await _cloud(tmp_path)
    h = FileHandle(3, 1)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"late writer")
    # Another writer (another process, a bug) creates the object after our open-time check.
    await store.put(f"db/7/{h.name}", b"winner")
    with pytest.raises(FileExists):
        await w.close()
    assert await store.get_bytes(f"db/7/{h.name}") == b"winner"
    assert os.listdir(staging) == []
    assert await read_all(p, h) == b"winner"


async def test_cloud_reader_downloads_once_then_reads_locally(tmp_path: Path) -> None:
    p, store, staging = await _cloud(tmp_path)
    h = FileHandle(4, 1)
    await store.put(f"db/7/{h.name}", b"written by another node")
    assert await read_all(p, h) == b"written by another node"
    assert os.listdir(staging) == [h.name]  # the downloaded local copy, no temp left
    # Served from the local copy now: the bucket is no longer consulted.
    await store.delete(f"db/7/{h.name}")
    assert await read_all(p, h) == b"written by another node"
    await p.data.remove_file(h)
    assert os.listdir(staging) == []
    assert await p.data.open_random_access_reader(h) is None


async def test_cloud_list_skips_nested_and_foreign_keys(tmp_path: Path) -> None:
    p, store, _ = await _cloud(tmp_path)
    await write_file(p, FileHandle(2), b"a")
    await p.metadata.write_manifest(1, b"m")
    for key in (
        f"db/7/nested/{FileHandle(9).name}",  # another database's prefix
        "db/7/notes.txt",
        f"db/7/{FileHandle(3).name}.bak",
        f"db/70/{FileHandle(4).name}",  # a sibling prefix that shares our prefix's text
        FileHandle(5).name,  # the bucket root
    ):
        await store.put(key, b"not ours")
    assert [h async for h in p.data.list_files()] == [FileHandle(2)]
    assert await store.head("db/7/MANIFEST.00000000000000000001") is not None


async def test_cloud_manifest_objects_and_older_deleted(tmp_path: Path) -> None:
    p, store, _ = await _cloud(tmp_path)
    for epoch in (1, 2, 9):
        await p.metadata.write_manifest(epoch, f"e{epoch}".encode())
    keys = [o.key async for o in store.list_all("db/7/")]
    assert keys == ["db/7/MANIFEST.00000000000000000009"]
    # A leftover older manifest (its delete failed) never wins over the newest.
    await store.put("db/7/MANIFEST.00000000000000000003", b"leftover")
    assert await p.metadata.read_manifest(100) == (9, b"e9")
    assert await p.metadata.read_manifest(8) == (3, b"leftover")


async def test_cloud_retries_transient_faults(tmp_path: Path) -> None:
    faulty = FaultInjectingObjectStore(LocalObjectStore(tmp_path / "bucket"))
    p, _, _ = await _cloud(tmp_path, faulty)
    # The first upload lands but its answer is lost: the retry sees its own object and must
    # recognise it (same md5) instead of reporting a duplicate.
    faulty.fail("put", nth=1, when="after")
    faulty.fail("get", times=2)
    faulty.fail("list", nth=1)
    h = FileHandle(6, 2)
    await write_file(p, h, b"survives flaky buckets" * 1000)
    assert faulty.injected["put"] == 1
    await p.data.remove_file(h)  # drop nothing local; forces a download below
    await write_file(p, FileHandle(7, 2), b"seven")
    assert await read_all(p, FileHandle(7, 2)) == b"seven"
    assert faulty.injected["get"] == 2
    assert [x async for x in p.data.list_files()] == [FileHandle(7, 2)]


async def test_cloud_permanent_failure_is_io_failure_and_leaves_nothing(tmp_path: Path) -> None:
    faulty = FaultInjectingObjectStore(LocalObjectStore(tmp_path / "bucket"))
    p, _, staging = await _cloud(tmp_path, faulty, retry_chain_s=0.3)
    faulty.fail("put")  # transient, forever: the retry chain runs out
    w = await p.data.open_sequential_writer(FileHandle(8))
    await w.append(b"never uploaded")
    with pytest.raises(IOFailure):
        await w.close()
    assert faulty.calls["put"] >= 2  # it did retry
    assert os.listdir(staging) == []
    faulty.clear()
    faulty.fail("put", exception=UpstreamError("403 access denied"))
    w = await p.data.open_sequential_writer(FileHandle(8))
    with pytest.raises(IOFailure):
        await w.close()
    faulty.clear()
    assert await p.data.open_random_access_reader(FileHandle(8)) is None


async def test_cloud_shutdown_interrupts_retries(tmp_path: Path) -> None:
    faulty = FaultInjectingObjectStore(LocalObjectStore(tmp_path / "bucket"))
    abort = asyncio.Event()
    p, _, _ = await _cloud(tmp_path, faulty, abort=abort)
    faulty.fail("head")
    task = asyncio.ensure_future(p.data.open_sequential_writer(FileHandle(9)))
    await asyncio.sleep(0.05)
    abort.set()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(task, 2.0)


# -- cloud through the cache only ---------------------------------------------------------


@pytest.fixture
async def cc_cache(tmp_path: Path) -> AsyncIterator[CacheService]:
    cache = await open_test_cache(tmp_path / "cache")
    yield cache
    await asyncio.wait_for(cache.stop(), 10.0)


@pytest.fixture
def cc_store(tmp_path: Path) -> ObjectStore:
    return LocalObjectStore(tmp_path / "bucket")


def _cc(store: ObjectStore, cache: CacheService, **kwargs: Any) -> Persistence:
    return cloud_cache_persistence(store, cache, "meta/domain/u1", **kwargs)


def _cc_data(p: Persistence) -> CloudCacheDataPersistence:
    assert isinstance(p.data, CloudCacheDataPersistence)
    return p.data


async def _assert_cache_idle(cache: CacheService) -> None:
    stats = await cache.stats()
    assert (stats.bytes_reserved, stats.objects_reserved) == (0, 0)
    assert (stats.bytes_pending, stats.objects_pending) == (0, 0)


async def test_cloud_cache_written_sst_is_a_cache_hit(
    cc_store: ObjectStore, cc_cache: CacheService, tmp_path: Path
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(2, 7)
    data = os.urandom(300_000)
    await write_file(p, h, data[:1000], data[1000:])
    assert _cc_data(p).cache_key(h) == f".cachedaemon/lsm/meta/domain/u1/{h.name}"
    assert await cc_store.get_bytes(f"meta/domain/u1/{h.name}") == data
    entry = await cc_cache.get(f".cachedaemon/lsm/meta/domain/u1/{h.name}")
    assert entry is not None and entry.size == len(data)
    assert await read_all(p, h) == data
    assert _cc_data(p).downloads == 0  # served by the cache, not the bucket
    stats = await cc_cache.stats()
    assert (stats.bytes_used, stats.objects) == (len(data), 1)
    await _assert_cache_idle(cc_cache)
    assert part_files(tmp_path / "cache") == []


async def test_cloud_cache_read_after_invalidate_downloads_into_cache(
    cc_store: ObjectStore, cc_cache: CacheService
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(3, 7)
    await write_file(p, h, b"round trip" * 5000)
    key = _cc_data(p).cache_key(h)
    await cc_cache.invalidate(key)
    assert await cc_cache.get(key) is None
    assert await read_all(p, h) == b"round trip" * 5000
    assert _cc_data(p).downloads == 1
    assert await cc_cache.get(key) is not None  # back in the cache...
    assert await read_all(p, h) == b"round trip" * 5000
    assert _cc_data(p).downloads == 1  # ...and the next read is a hit
    stats = await cc_cache.stats()
    assert (stats.bytes_used, stats.objects) == (50_000, 1)
    await _assert_cache_idle(cc_cache)


async def test_cloud_cache_reservation_deadline_on_append_leaves_nothing(
    cc_store: ObjectStore, tmp_path: Path
) -> None:
    cache = await open_test_cache(tmp_path / "cache", max_bytes=1 << 20)
    try:
        p = _cc(cc_store, cache, write_deadline_s=0.2)
        h = FileHandle(4, 7)
        w = await p.data.open_sequential_writer(h)
        await w.append(b"a" * 1000)
        # Someone else holds the rest of the cache: our top-up cannot be granted in time.
        blocker = await cache.reserve_space((1 << 20) - (64 << 10), 0, NO_DEADLINE)
        with pytest.raises(IOFailure, match="no cache space in time"):
            await w.append(b"b" * (200 << 10))
        with pytest.raises(IOFailure):
            await w.close()
        blocker.close()
        assert part_files(tmp_path / "cache") == []
        assert await cc_store.head(f"meta/domain/u1/{h.name}") is None
        assert await p.data.open_random_access_reader(h) is None
        stats = await cache.stats()
        assert (stats.bytes_used, stats.objects) == (0, 0)
        await _assert_cache_idle(cache)
    finally:
        await asyncio.wait_for(cache.stop(), 10.0)


async def test_cloud_cache_failed_upload_leaves_nothing(
    cc_store: ObjectStore, cc_cache: CacheService, tmp_path: Path
) -> None:
    faulty = FaultInjectingObjectStore(cc_store)
    p = _cc(faulty, cc_cache)
    faulty.fail("put", exception=UpstreamError("403 access denied"))
    h = FileHandle(5, 7)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"x" * 100_000)
    with pytest.raises(IOFailure):
        await w.close()
    assert part_files(tmp_path / "cache") == []
    assert await cc_store.head(f"meta/domain/u1/{h.name}") is None
    assert await cc_cache.get(_cc_data(p).cache_key(h)) is None
    stats = await cc_cache.stats()
    assert (stats.bytes_used, stats.objects) == (0, 0)
    await _assert_cache_idle(cc_cache)


async def test_cloud_cache_failed_commit_still_persists_the_sst(
    cc_store: ObjectStore, cc_cache: CacheService, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(6, 7)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"uploaded, not cached")
    failpoints.arm("lsm.cloud_cache.commit", "raise@1")
    await w.close()  # durable in the bucket: the write succeeded, the cache is only a copy
    assert "committing it into the cache failed" in caplog.text
    assert part_files(tmp_path / "cache") == []
    await _assert_cache_idle(cc_cache)
    assert await cc_cache.get(_cc_data(p).cache_key(h)) is None
    # The object is in the bucket and readable (downloaded on demand).
    assert await cc_store.get_bytes(f"meta/domain/u1/{h.name}") == b"uploaded, not cached"
    assert await read_all(p, h) == b"uploaded, not cached"


async def test_cloud_cache_duplicate_at_upload_never_overwrites(
    cc_store: ObjectStore, cc_cache: CacheService, tmp_path: Path
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(7, 7)
    w = await p.data.open_sequential_writer(h)
    await w.append(b"loser")
    await cc_store.put(f"meta/domain/u1/{h.name}", b"winner")
    with pytest.raises(FileExists):
        await w.close()
    assert await cc_store.get_bytes(f"meta/domain/u1/{h.name}") == b"winner"
    assert part_files(tmp_path / "cache") == []
    assert await cc_cache.get(_cc_data(p).cache_key(h)) is None  # the loser was not cached
    assert await read_all(p, h) == b"winner"
    await _assert_cache_idle(cc_cache)


class EvictingCache(CacheService):
    """A real cache whose every download is trimmed away at once (a cache under pressure)."""

    async def put(self, key: str, data: Any, guard: Any, deadline: Any = None,
                  **kwargs: Any) -> int:
        size = await super().put(key, data, guard, deadline, **kwargs)
        await self.invalidate(key)
        return size


async def test_cloud_cache_reader_retries_are_bounded(
    cc_store: ObjectStore, tmp_path: Path
) -> None:
    cache = EvictingCache(0, cache_settings_for_tests(), tmp_path / "cache", fsync_commits=False)
    await cache.start()
    try:
        p = _cc(cc_store, cache, read_attempts=3)
        h = FileHandle(8, 7)
        data = os.urandom(100_000)
        await cc_store.put(f"meta/domain/u1/{h.name}", data)
        r = await asyncio.wait_for(p.data.open_random_access_reader(h), 10.0)
        assert r is not None
        # Three downloads, each evicted: then it reads the bucket instead of looping forever.
        assert _cc_data(p).downloads == 3
        assert _cc_data(p).uncached_reads == 1
        assert r.size() == len(data)
        assert await r.read(500, 1000) == data[500:1500]
        with pytest.raises(IOFailure):
            await r.read(len(data) - 1, 2)
        await r.close()
        await _assert_cache_idle(cache)
    finally:
        await asyncio.wait_for(cache.stop(), 10.0)


@pytest.mark.parametrize("limit", ["max_bytes", "max_object_bytes"])
async def test_cloud_cache_uncacheable_object_is_read_from_bucket(
    cc_store: ObjectStore, tmp_path: Path, limit: str
) -> None:
    cache = await open_test_cache(tmp_path / "cache", **{limit: 64 << 10})
    try:
        p = _cc(cc_store, cache)
        h = FileHandle(9, 7)
        data = os.urandom(200_000)  # bigger than the whole cache: never cacheable
        await cc_store.put(f"meta/domain/u1/{h.name}", data)
        r = await p.data.open_random_access_reader(h)
        assert r is not None
        assert await r.read(150_000, 50_000) == data[150_000:]
        await r.close()
        assert _cc_data(p).downloads == 0
        assert _cc_data(p).uncached_reads == 1
        assert part_files(tmp_path / "cache") == []
        await _assert_cache_idle(cache)
    finally:
        await asyncio.wait_for(cache.stop(), 10.0)


async def test_cloud_cache_remove_drops_cache_copy_and_object(
    cc_store: ObjectStore, cc_cache: CacheService
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(10, 7)
    await write_file(p, h, b"short-lived")
    key = _cc_data(p).cache_key(h)
    assert await cc_cache.get(key) is not None
    await p.data.remove_file(h)
    assert await cc_cache.get(key) is None
    assert await cc_store.head(f"meta/domain/u1/{h.name}") is None
    assert (await cc_cache.stats()).objects == 0


async def test_cloud_cache_reader_survives_trim(
    cc_store: ObjectStore, cc_cache: CacheService
) -> None:
    p = _cc(cc_store, cc_cache)
    h = FileHandle(11, 7)
    await write_file(p, h, b"held open" * 1000)
    r = await p.data.open_random_access_reader(h)
    assert r is not None
    await cc_cache.invalidate(_cc_data(p).cache_key(h))  # as a trim would
    assert await r.read(0, 9) == b"held open"
    await r.close()


async def test_cloud_cache_sst_survives_cache_restart_and_cold_cache(
    cc_store: ObjectStore, tmp_path: Path
) -> None:
    cache = await open_test_cache(tmp_path / "cache")
    p = _cc(cc_store, cache)
    h = FileHandle(12, 7)
    await write_file(p, h, b"persisted" * 3000)
    await p.data.close()
    await cache.stop()

    # The same cache directory after a restart: the committed SST is still a hit.
    cache = await open_test_cache(tmp_path / "cache")
    try:
        q = _cc(cc_store, cache)
        assert await read_all(q, h) == b"persisted" * 3000
        assert _cc_data(q).downloads == 0
        assert (await cache.stats()).objects == 1
    finally:
        await cache.stop()

    # Another node with an empty cache reads it from the bucket, into its own cache.
    cold = await open_test_cache(tmp_path / "other-node-cache")
    try:
        r = _cc(cc_store, cold)
        assert [x async for x in r.data.list_files()] == [h]
        assert await read_all(r, h) == b"persisted" * 3000
        assert _cc_data(r).downloads == 1
        assert (await cold.stats()).objects == 1
    finally:
        await cold.stop()
