"""Fixtures for the server's end-to-end tests: long-lived daemons (one per module) and a tiny
HTTP helper over aiohttp. Every test here talks to a real ``cachedaemon serve`` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, start_daemon


@pytest.fixture(scope="module", params=[1, 2], ids=["shards1", "shards2"])
def daemon(tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A daemon on a local bucket with room for 40 MiB objects, shared by a test module; every
    test runs against one shard and against two (processes)."""
    data = tmp_path_factory.mktemp("daemon") / "data"
    with start_daemon(data, "--cache-max-bytes", "256MiB", "--max-object-bytes", "48MiB",
                      shards=request.param) as d:
        yield d


@pytest.fixture(scope="module")
def small_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with a 2 MiB cache and 1 MiB objects (space pressure, 413 on streams)."""
    data = tmp_path_factory.mktemp("small") / "data"
    with start_daemon(data, "--cache-max-bytes", "2MiB", "--max-object-bytes", "1MiB",
                      "--cache-staging-initial-bytes", "64KiB",
                      "--cache-staging-chunk-bytes", "64KiB") as d:
        yield d


def cache_files(data_dir: Path) -> list[Path]:
    """Committed cache entries plus leftovers (everything but the tracker)."""
    root = data_dir / "cache"
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith("%tracker")]


def part_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*.part")]
