"""Concurrent readers over tiny caches: the table cache (``max_open_files``), the block cache
and the cloud cache itself, where a download may be trimmed away before its reader opens it.

The in-flight rule of ``docs/concurrency.md``: whoever waits for work in flight either gets its
reference taken for it or looks again after waking. Here that means: a table-cache waiter
reads a live reader; a block is held by reference, so evicting it from a one-block cache
never disturbs a reader; and a cloud-cache reader whose download was trimmed before it opened
the file looks again (a bounded number of times) and then reads the bucket by ranges.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from cachedaemon.lsm import Database
from cachedaemon.lsm.io.cloud_cache import CloudCacheDataPersistence, cloud_cache_persistence
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.remote.local import LocalObjectStore
from tests.lsm.lsm_helpers import tiny_options
from tests.support.lsm_persistence import open_test_cache, part_files

NO_AUTO_COMPACTION = {"l0_compaction_trigger": 100, "l0_slowdown_writes_trigger": 100,
                      "l0_stop_writes_trigger": 200}


async def load(db: Database, files: int, per_file: int) -> dict[bytes, bytes]:
    """``files`` overlapping SSTs: key i lives in file i % files, so a get consults several."""
    expected: dict[bytes, bytes] = {}
    for f in range(files):
        for i in range(f, files * per_file, files):
            k, v = b"key-%04d" % i, b"value-%d-%d-" % (f, i) + b"x" * 40
            await db.put(k, v)
            expected[k] = v
        await db.flush()
    return expected


async def hammer(dbs: list[Database], expected: dict[bytes, bytes], seed: int,
                 n: int = 300) -> None:
    """Concurrent gets and short scans over ``dbs``; every answer must be right."""
    rnd = random.Random(seed)
    keys = sorted(expected)

    async def one() -> None:
        db = rnd.choice(dbs)
        if rnd.random() < 0.8:
            k = rnd.choice(keys)
            assert await db.get(k) == expected[k]
        else:
            start = rnd.choice(keys)
            got = await db.scan(start, limit=5)
            want = [(k, expected[k]) for k in keys if k >= start][:5]
            assert got == want

    await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("seed", range(2))
async def test_one_open_file_and_a_one_block_cache_on_disk(tmp_path: Path, seed: int) -> None:
    p = await open_disk_persistence(tmp_path / "db")
    db = await Database.open(tiny_options(max_open_files=1, block_cache_bytes=1,
                                          **NO_AUTO_COMPACTION), p)
    expected = await load(db, files=6, per_file=20)
    await hammer([db], expected, seed)
    # ... and with compactions rewriting the files underneath the readers.
    compacting = asyncio.create_task(db.compact_range())
    await hammer([db], expected, seed + 100)
    await compacting
    await hammer([db], expected, seed + 200)
    assert db.stats()["table_cache"]["open"] <= 1
    assert db.stats()["block_cache"]["usage_bytes"] <= 1
    await db.close()


async def test_cloud_cache_trimmed_under_concurrent_readers(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    # Room for about two of the SSTs: downloads evict each other before readers open them.
    cache = await open_test_cache(tmp_path / "cache", max_bytes=8 * 1024, max_objects=2,
                                  reserve_deadline=0.5)
    try:
        opts = tiny_options(max_open_files=2, block_cache_bytes=512, max_file_bytes=64 * 1024,
                            memtable_bytes=16 * 1024, **NO_AUTO_COMPACTION)
        writer_p = cloud_cache_persistence(store, cache, "lsm/tiny", retry_chain_s=2.0,
                                           write_deadline_s=2.0, read_reserve_deadline_s=0.2)
        writer = await Database.open(opts, writer_p)
        expected = await load(writer, files=10, per_file=40)
        replica_opts = tiny_options(max_open_files=2, block_cache_bytes=512, readonly=True,
                                    **NO_AUTO_COMPACTION)
        replica_p = cloud_cache_persistence(store, cache, "lsm/tiny", retry_chain_s=2.0,
                                            read_reserve_deadline_s=0.2)
        replica = await Database.open(replica_opts, replica_p)
        await hammer([writer, replica], expected, seed=3, n=400)
        fetched = 0
        for p in (writer_p, replica_p):
            assert isinstance(p.data, CloudCacheDataPersistence)
            fetched += p.data.downloads + p.data.uncached_reads
        assert fetched > 10  # the cache really was too small: files were fetched again
        await replica.close()
        await writer.close()
        stats = await cache.stats()
        assert stats.bytes_reserved == 0 and stats.objects_reserved == 0
        assert stats.bytes_used <= 8 * 1024
        assert not part_files(tmp_path / "cache")
    finally:
        await cache.stop()
