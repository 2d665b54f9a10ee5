"""kill -9 at every fail point of commit, removal, journal append, snapshot and journal
compaction, in a real subprocess (fail points armed with ``crash``); then restart and check:

* the restart reads the index and is ready without walking: no walk has run, yet every
  ``.part`` the crash left is gone (found in the journal);
* after the background walk, the counters equal the disk exactly, every entry is whole (no
  zero-byte or partial entry is ever visible), and no committed entry was lost;
* the cache works on (a trim, another check).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.cache.keys import relpath_key
from cachedaemon.core import failpoints
from cachedaemon.core.failpoints import CRASH_EXIT_CODE, ENV_VAR
from tests.cache.conftest import OpenCache, disk_entries, part_files
from tests.cache.crash_worker import BASE, content

WORKER = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run_worker(root: Path, scenario: str, failpoints: str = "") -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_VAR, None)
    if failpoints:
        env[ENV_VAR] = failpoints
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(root), scenario], env=env, capture_output=True,
        timeout=60, text=True,
    )
    if proc.returncode not in (0, CRASH_EXIT_CODE):
        raise AssertionError(f"worker failed ({proc.returncode}): {proc.stderr}")
    return proc.returncode


async def check_recovered(svc: CacheService) -> dict[str, bytes]:
    """Every visible entry is whole; counters equal the disk; no .part left."""
    assert part_files(svc.root) == []
    on_disk = disk_entries(svc.root)
    s = await svc.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (
        sum(on_disk.values()), len(on_disk), 0, 0)
    assert sorted(p for p, _ in svc.coordinator.index.lru()) == sorted(on_disk)
    seen: dict[str, bytes] = {}
    for rel, size in on_disk.items():
        key = relpath_key(rel)
        assert key is not None, rel
        assert size > 0, f"zero-byte entry {rel}"
        data = (svc.root / rel).read_bytes()
        assert data == content(key, size), f"entry {key} is not whole"
        entry = await svc.get(key)
        assert entry is not None and entry.size == size
        seen[key] = data
    return seen


#: (scenario, fail point, what must be there after the restart and walk (key -> size), and
#: what must not)
CASES = [
    ("commit", "cache.commit.after_link=crash", {"fresh/key": 12_345}, []),
    ("commit_replace", "cache.commit.after_link=crash", {"victim": 20_000}, []),
    ("append", "cache.staging.append=crash@3", {"victim": 3000}, ["partial"]),
    ("begin", "cache.staging.begin=crash", BASE, ["begun"]),
    ("many", "cache.journal.append=crash@12", BASE, []),
    ("many", "cache.journal.torn=crash@12", BASE, []),
    ("many", "cache.journal.after_write=crash@12", BASE, []),
    ("trim", "cache.trim.delete=crash", BASE, []),
    ("trim", "cache.remove.after_unlink=crash@2", {}, []),
    ("invalidate", "cache.remove.after_unlink=crash", {"base/two": 2000}, ["base/one"]),
    ("compact", "cache.snapshot.write=crash", {f"c/{i}": 500 + i for i in range(5)}, []),
    ("compact", "cache.snapshot.renamed=crash", {f"c/{i}": 500 + i for i in range(5)}, []),
    ("compact", "cache.journal.switched=crash", {f"c/{i}": 500 + i for i in range(5)}, []),
]


@pytest.mark.parametrize(("scenario", "failpoint", "expect", "absent"), CASES,
                         ids=[f"{c[0]}-{c[1].split('=')[0]}" for c in CASES])
async def test_crash_then_restart(
    tmp_path: Path, open_cache: OpenCache, scenario: str, failpoint: str,
    expect: dict[str, int], absent: list[str],
) -> None:
    root = tmp_path / "cache"
    assert run_worker(root, "setup") == 0
    assert run_worker(root, scenario, failpoint) == CRASH_EXIT_CODE
    if scenario in ("commit", "append"):
        assert part_files(root) != []  # the crash really left an in-flight file behind
    # Ready from the index, with no walk at all: hold the background walk back.
    failpoints.arm("cache.reconcile.walk", "raise")
    svc = await open_cache(root, max_bytes=10 * 1024 * 1024, trim_interval=0.1)
    coord = svc.coordinator
    assert coord.metrics.recovered_from_index == 1
    assert (coord.metrics.walks, coord.metrics.sync_walks) == (0, 0)
    assert part_files(root) == []
    for key in absent:
        assert await svc.get(key) is None
    # Then the background walk: exact counts.
    failpoints.disarm()
    await coord.wait_reconciled()
    assert coord.metrics.sync_walks == 1
    seen = await check_recovered(svc)
    for key, size in expect.items():
        assert len(seen.get(key, b"")) == size, key
    for key in absent:
        assert key not in seen
    # And the cache works on after the recovery.
    await svc.trim()
    await check_recovered(svc)
    await svc.stop()
    # The index written at this stop is exact: a second restart needs no corrections.
    svc2 = await open_cache(root, max_bytes=10 * 1024 * 1024)
    before = (await svc2.stats()).objects
    await svc2.coordinator.wait_reconciled()
    assert (await svc2.stats()).objects == before
    await check_recovered(svc2)


@pytest.mark.slow
@pytest.mark.parametrize("nth", range(1, 22))
async def test_crash_at_every_journal_write_of_a_workload(
    tmp_path: Path, open_cache: OpenCache, nth: int,
) -> None:
    """The "many" workload, killed at each of its first journal writes in turn."""
    root = tmp_path / "cache"
    assert run_worker(root, "setup") == 0
    # 20 commits make 21 journal writes: each BEGIN waits for its own; COMMIT and FINISH
    # go with the next BEGIN.
    assert run_worker(root, "many", f"cache.journal.torn=crash@{nth}") == CRASH_EXIT_CODE
    svc = await open_cache(root, max_bytes=10 * 1024 * 1024)
    assert svc.coordinator.metrics.recovered_from_index == 1
    assert part_files(root) == []
    await svc.coordinator.wait_reconciled()
    seen = await check_recovered(svc)
    assert all(k in seen for k in BASE)
