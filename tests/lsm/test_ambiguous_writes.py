"""Manifest writes that fail although they landed: the outcome is *unknown*, never "did not
happen" (``docs/concurrency.md``).

Bug 2 of issue 11: a manifest write raised after the new manifest was already durable (disk:
the directory fsync after the rename failed; cloud: the PUT landed but every answer was lost
until the retry chain gave up). The flush or compaction was reported failed and the in-memory
version kept the old files, while the file GC went on and deleted the new files that the
durable manifest references; on reopen the database was corrupt. Like LevelDB
(``DBImpl::RemoveObsoleteFiles`` returns early once ``bg_error_`` is set), the GC now deletes
nothing after a background error; reopening re-reads the durable manifest and collects the
files *it* no longer names.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm import Database
from cachedaemon.lsm.io.cloud import open_cloud_persistence
from cachedaemon.lsm.io.cloud_cache import cloud_cache_persistence
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.persistence import FileHandle, Persistence
from cachedaemon.lsm.manifest import decode_manifest
from cachedaemon.lsm.options import Options
from cachedaemon.remote.faulty import FaultInjectingObjectStore
from cachedaemon.remote.local import LocalObjectStore
from tests.lsm.lsm_helpers import History, manifest_files, stored_files, tiny_options
from tests.support.lsm_persistence import open_test_cache

PREFIX = "lsm/ambiguous"


@dataclass
class Backend:
    """Opens (and reopens) one persistence; ``land_then_fail`` arms a manifest write that
    lands and then reports failure; ``heal`` disarms it."""

    open: Callable[[], Awaitable[Persistence]]
    land_then_fail: Callable[[], None]
    heal: Callable[[], None]


@pytest.fixture(params=["disk", "cloud", "cloud_cache"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = request.param
    if kind == "disk":
        yield Backend(
            lambda: open_disk_persistence(tmp_path / "db"),
            lambda: failpoints.arm("lsm.disk.manifest.after_rename", "raise"),
            failpoints.disarm,
        )
        return
    store = FaultInjectingObjectStore(LocalObjectStore(tmp_path / "bucket"))

    def arm() -> None:  # every PUT of a manifest lands, every answer is lost
        store.land_then_fail("put", key=f"{PREFIX}/MANIFEST.")

    if kind == "cloud":
        yield Backend(
            lambda: open_cloud_persistence(store, PREFIX, tmp_path / "staging",
                                           retry_chain_s=0.3),
            arm, store.clear,
        )
        return
    cache = await open_test_cache(tmp_path / "cache")

    async def opener() -> Persistence:
        return cloud_cache_persistence(store, cache, PREFIX, retry_chain_s=0.3)

    yield Backend(opener, arm, store.clear)
    await cache.stop()


def options() -> Options:
    # No automatic compaction: the test picks the one whose manifest write is ambiguous.
    return tiny_options(l0_compaction_trigger=100, l0_slowdown_writes_trigger=100,
                        l0_stop_writes_trigger=200, file_deletion_delay_s=0)


async def workload(db: Database, hist: History, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    for i in range(n):
        k = b"key-%04d" % rnd.randrange(300)
        v = b"v%d-%d" % (seed, i) * 4
        hist.record(await db.put(k, v), [(k, v)])


async def durable_files(p: Persistence) -> tuple[int, set[FileHandle]]:
    found = await p.metadata.read_manifest(1 << 62)
    assert found is not None
    state = decode_manifest(found[1], "manifest")
    return state.last_seqno, {f.handle for files in state.levels for f in files}


async def close(db: Database, p: Persistence) -> None:
    await db.close()
    await p.data.close()
    await p.metadata.close()


async def reopen_and_check(backend: Backend, hist: History) -> None:
    p = await backend.open()
    db = await Database.open(options(), p)
    persisted = db.max_persisted_seqno
    assert manifest_files(db) <= await stored_files(p)
    assert await db.scan() == sorted(hist.at(persisted).items())
    # The reopened database collects what its (durable) manifest no longer names, and only that.
    await db.wait_for_background_work()
    await db.collect_garbage()
    assert await stored_files(p) == manifest_files(db)
    assert await db.scan() == sorted(hist.at(persisted).items())
    await close(db, p)


async def test_compaction_whose_manifest_landed_keeps_its_outputs(backend: Backend) -> None:
    p = await backend.open()
    db = await Database.open(options(), p)
    hist = History()
    await workload(db, hist, 600, seed=1)
    await db.flush()
    assert db.level_stats()[0].files >= 2
    backend.land_then_fail()
    with pytest.raises(CacheDaemonError):
        await db.compact_range()
    backend.heal()
    _, durable = await durable_files(p)
    assert durable != manifest_files(db)  # the compaction is durable; memory kept its inputs
    await db.collect_garbage()
    assert db.stats()["files_deleted"] == 0
    assert durable | manifest_files(db) <= await stored_files(p)
    await close(db, p)
    await reopen_and_check(backend, hist)


async def test_flush_whose_manifest_landed_keeps_its_sst(backend: Backend) -> None:
    p = await backend.open()
    db = await Database.open(options(), p)
    hist = History()
    await workload(db, hist, 300, seed=2)
    await db.flush()
    await workload(db, hist, 50, seed=3)
    backend.land_then_fail()
    with pytest.raises(CacheDaemonError):
        await db.flush()
    backend.heal()
    last_seqno, durable = await durable_files(p)
    assert db.max_persisted_seqno < last_seqno <= db.max_applied_seqno  # the flush is durable
    await db.collect_garbage()
    assert durable <= await stored_files(p)
    # Later writes and flushes keep failing (sticky), and still nothing is deleted.
    with pytest.raises(CacheDaemonError):
        await db.flush()
    await db.collect_garbage()
    assert durable <= await stored_files(p)
    await close(db, p)
    await reopen_and_check(backend, hist)
