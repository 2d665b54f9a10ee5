"""Crashes at the dangerous steps of flush, compaction and manifest writes.

After each one the database is reopened on the same storage; it must equal the model at its
last persisted seqno, every SST the manifest references must exist, new file ids must not
collide with leftovers, and the file GC must clean the leftovers up."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError, FailPointTriggered
from cachedaemon.lsm import Database, WriteBatch
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.persistence import Persistence
from tests.lsm.lsm_helpers import History, manifest_files, stored_files, tiny_options
from tests.support.lsm_persistence import PersistenceBackend


async def workload(db: Database, hist: History, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    for i in range(n):
        k = b"key-%04d" % rnd.randrange(400)
        if rnd.random() < 0.2:
            hist.record(await db.delete(k), [(k, None)])
        else:
            v = b"v%d-%d" % (seed, i) * 4
            hist.record(await db.put(k, v), [(k, v)])


async def reopen(
    backend: PersistenceBackend, db: Database, p: Persistence
) -> tuple[Database, Persistence]:
    await db.close()
    await p.data.close()
    await p.metadata.close()
    p = await backend.open()
    return await Database.open(tiny_options(), p), p


async def check_recovered(db: Database, p: Persistence, hist: History) -> None:
    persisted = db.max_persisted_seqno
    assert db.max_applied_seqno == persisted
    assert await db.scan() == sorted(hist.at(persisted).items())
    assert manifest_files(db) <= await stored_files(p)
    hist.ops = [op for op in hist.ops if op[0] <= persisted]


async def finish_and_check(db: Database, p: Persistence, hist: History) -> None:
    """More writes (new file ids must not collide with leftovers), GC, and a final check."""
    await workload(db, hist, 300, seed=99)
    await db.flush()
    await db.compact_range()
    await db.wait_for_background_work()
    await db.collect_garbage()
    assert await stored_files(p) == manifest_files(db)
    assert await db.scan() == sorted(hist.at(db.max_applied_seqno).items())
    await db.close()


async def test_crash_before_flush_manifest(lsm_backend: PersistenceBackend) -> None:
    p = await lsm_backend.open()
    db = await Database.open(tiny_options(memtable_bytes=1 << 20), p)
    hist = History()
    await workload(db, hist, 300, seed=1)
    await db.flush()
    safe = db.max_persisted_seqno
    await workload(db, hist, 200, seed=2)
    failpoints.arm("lsm.flush.before_manifest", "raise")
    with pytest.raises(CacheDaemonError):
        await db.flush()
    assert db.max_persisted_seqno == safe
    failpoints.disarm()
    orphans = await stored_files(p) - manifest_files(db)
    assert orphans  # the SST was written, the manifest never named it
    db, p = await reopen(lsm_backend, db, p)
    assert db.max_persisted_seqno == safe
    await check_recovered(db, p, hist)
    await finish_and_check(db, p, hist)


async def test_crash_before_compaction_manifest(lsm_backend: PersistenceBackend) -> None:
    p = await lsm_backend.open()
    db = await Database.open(
        tiny_options(
            l0_compaction_trigger=100, l0_slowdown_writes_trigger=100, l0_stop_writes_trigger=200
        ),
        p,
    )
    hist = History()
    await workload(db, hist, 600, seed=3)
    await db.flush()
    failpoints.arm("lsm.compaction.before_manifest", "raise")
    with pytest.raises(FailPointTriggered):
        await db.compact_range()
    failpoints.disarm()
    db, p = await reopen(lsm_backend, db, p)
    await check_recovered(db, p, hist)
    await finish_and_check(db, p, hist)


@pytest.mark.parametrize("nth", [1, 3, 7])
async def test_manifest_write_failure(lsm_backend: PersistenceBackend, nth: int) -> None:
    p = await lsm_backend.open()
    db = await Database.open(tiny_options(), p)
    hist = History()
    failpoints.arm("lsm.manifest.write", f"raise@{nth}")
    with pytest.raises(CacheDaemonError):
        for seed in range(20):
            await workload(db, hist, 100, seed=seed)
            await db.flush()
    failpoints.disarm()
    db, p = await reopen(lsm_backend, db, p)
    await check_recovered(db, p, hist)
    await finish_and_check(db, p, hist)


_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from cachedaemon.lsm import Database
    from cachedaemon.lsm.io.disk import open_disk_persistence
    from tests.lsm.lsm_helpers import tiny_options

    async def main():
        p = await open_disk_persistence(sys.argv[1])
        db = await Database.open(tiny_options(), p)
        rnd = random.Random(7)
        for i in range(3000):
            k = b"key-%04d" % rnd.randrange(500)
            await db.put(k, b"v%d" % i)
            if i % 250 == 249:
                await db.flush()
                print(db.max_persisted_seqno, flush=True)
        await db.flush()
        print("done", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    "point", ["lsm.manifest.write=crash@6", "lsm.flush.before_manifest=crash@4"]
)
async def test_process_killed_mid_write_recovers(tmp_path: Path, point: str) -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, CACHEDAEMON_FAILPOINTS=point, PYTHONPATH=str(root))
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CHILD, str(tmp_path / "db")],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=root,
    )
    assert proc.returncode == failpoints.CRASH_EXIT_CODE, proc.stderr.decode()[-2000:]
    reported = [int(x) for x in proc.stdout.split()]
    p = await open_disk_persistence(tmp_path / "db")
    db = await Database.open(tiny_options(), p)
    persisted = db.max_persisted_seqno
    assert persisted >= (reported[-1] if reported else 0)
    rnd = random.Random(7)
    model: dict[bytes, bytes] = {}
    for i in range(persisted):
        model[b"key-%04d" % rnd.randrange(500)] = b"v%d" % i
    assert await db.scan() == sorted(model.items())
    assert manifest_files(db) <= await stored_files(p)
    # The next writer of the same epoch never collides with the crashed one's files.
    await db.apply(WriteBatch().put(b"after", b"crash"))
    await db.flush()
    await db.wait_for_background_work()
    # GC is asynchronous (a background pass may hold a file's table-cache entry while this
    # one runs): the crashed writer's orphans must be gone within a few passes.
    for _ in range(50):
        await db.collect_garbage()
        if await stored_files(p) == manifest_files(db):
            break
        await asyncio.sleep(0.05)
    assert await stored_files(p) == manifest_files(db)
    await db.close()
