"""Crash points in a real subprocess (fail points armed with ``crash``), then restart and
recount: no zero-byte or partial entry is ever visible, no ``.part`` survives, and the
counters equal what is on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.cache.keys import relpath_key
from cachedaemon.core.failpoints import CRASH_EXIT_CODE, ENV_VAR
from tests.cache.conftest import OpenCache, disk_entries, part_files
from tests.cache.crash_worker import content

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


@pytest.mark.parametrize(
    ("scenario", "failpoint", "expect"),
    [
        ("commit", "cache.commit.after_link=crash", {"fresh/key": 12_345}),
        ("commit_replace", "cache.commit.after_link=crash", {"victim": 20_000}),
        ("append", "cache.staging.append=crash@3", {"victim": 3000}),
        ("tracker", "cache.tracker.save=crash", {"tracked": 7000}),
    ],
)
async def test_crash_then_restart(
    tmp_path: Path, open_cache: OpenCache, scenario: str, failpoint: str, expect: dict[str, int]
) -> None:
    root = tmp_path / "cache"
    assert run_worker(root, "setup") == 0
    assert run_worker(root, scenario, failpoint) == CRASH_EXIT_CODE
    if scenario in ("commit", "append"):
        assert part_files(root) != []  # the crash really left an in-flight file behind
    svc = await open_cache(root, max_bytes=10 * 1024 * 1024)
    seen = await check_recovered(svc)
    for key in ("base/one", "base/two", "three"):
        assert key in seen
    for key, size in expect.items():
        assert len(seen[key]) == size
    assert "partial" not in seen
    # And the cache works on after the recovery.
    await svc.trim()
    await check_recovered(svc)
