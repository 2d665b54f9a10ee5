"""Fixtures for the cache tests: settings with small limits, and a started single-shard cache.

``cache_settings(**overrides)`` builds a :class:`CacheSettings` from the defaults with small
staging sizes; ``open_cache(path=None, **overrides)`` opens a started single-shard
:class:`CacheService` (stopped at teardown unless the test stopped it); ``cache`` is one such
service with a 1 MiB / 100 object limit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.config import CacheSettings, load_settings
from cachedaemon.core import failpoints

KiB = 1024
MiB = 1024 * 1024


def make_settings(**overrides: Any) -> CacheSettings:
    base = load_settings(env={}).cache
    defaults: dict[str, Any] = {
        "max_bytes": 1 * MiB,
        "max_objects": 100,
        "staging_initial_bytes": 4 * KiB,
        "staging_chunk_bytes": 4 * KiB,
        "reserve_deadline": 2.0,
        # Tests set their own: the default depends on the disk the tests run on.
        "min_free_bytes": 0,
    }
    defaults.update(overrides)
    return dataclasses.replace(base, **defaults)


@pytest.fixture
def cache_settings() -> Callable[..., CacheSettings]:
    return make_settings


OpenCache = Callable[..., Awaitable[CacheService]]


@pytest.fixture
async def open_cache(tmp_path: Path) -> AsyncIterator[OpenCache]:
    opened: list[CacheService] = []

    async def open_(
        path: Path | None = None, clock: Clock = SYSTEM_CLOCK, fsync_commits: bool = False,
        **overrides: Any,
    ) -> CacheService:
        svc = await CacheService.open_single(
            path or tmp_path / "cache", make_settings(**overrides), clock=clock,
            fsync_commits=fsync_commits,
        )
        opened.append(svc)
        return svc

    yield open_
    for svc in opened:
        await svc.stop()


@pytest.fixture
async def cache(open_cache: OpenCache) -> CacheService:
    return await open_cache()


@pytest.fixture(autouse=True)
def _disarm_failpoints() -> Any:
    yield
    failpoints.disarm()


def disk_entries(root: Path) -> dict[str, int]:
    """Committed entries on disk: relpath -> size (no .part, no tracker files, no links)."""
    out: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if name.endswith(".part") or rel.startswith("%tracker") or p.is_symlink():
                continue
            out[rel] = p.stat().st_size
    return out


def part_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.part")]
