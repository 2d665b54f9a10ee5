"""Persistence backends for the LSM tests: how to open, reopen and break each one.

Used by ``tests/lsm/conftest.py`` (fixtures ``persistence_backend``, ``lsm_backend``,
``lsm_persistence``) and by the per-backend persistence tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachedaemon.cache.service import CacheService
from cachedaemon.config import CacheSettings, load_settings
from cachedaemon.core import failpoints
from cachedaemon.lsm.io.cloud import open_cloud_persistence
from cachedaemon.lsm.io.cloud_cache import cloud_cache_persistence
from cachedaemon.lsm.io.disk import open_disk_persistence
from cachedaemon.lsm.io.memory import MemoryDataPersistence, memory_persistence
from cachedaemon.lsm.io.persistence import FileHandle, Persistence
from cachedaemon.remote.base import ObjectStore


@dataclass
class PersistenceBackend:
    """One way to open a :class:`Persistence`, reopenable over the same storage."""

    name: str
    opener: Callable[[], Awaitable[Persistence]]
    #: Arm a fault so the next writer ``append`` (of at least ``FAULT_APPEND_BYTES``) fails.
    fail_append: Callable[[Persistence], None]
    #: Arm a fault so the next writer ``close`` fails while persisting.
    fail_close: Callable[[Persistence], None]
    #: Arm a fault so the next ``write_manifest`` fails (before it replaces anything).
    fail_manifest_write: Callable[[Persistence], None]
    #: Leftovers on local disk / in the bucket (tests assert a failed write leaves none).
    leftovers: Callable[[], Awaitable[list[str]]]
    opened: list[Persistence] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Run (in order) after every opened persistence is closed, at teardown.
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def open(self) -> Persistence:
        p = await self.opener()
        self.opened.append(p)
        return p

    async def close_all(self) -> None:
        for p in self.opened:
            with contextlib.suppress(Exception):
                await p.data.close()
            with contextlib.suppress(Exception):
                await p.metadata.close()
        for cleanup in self.cleanups:
            await cleanup()


#: An append at least this big reaches the backend's I/O (the disk writer buffers smaller ones).
FAULT_APPEND_BYTES = 2 << 20


# -- memory -------------------------------------------------------------------------------


def _memory_backend(tmp_path: Path) -> PersistenceBackend:
    files: dict[FileHandle, bytes] = {}
    manifests: dict[int, bytes] = {}

    async def opener() -> Persistence:
        return memory_persistence(files, manifests)

    def fail_data(p: Persistence) -> None:
        assert isinstance(p.data, MemoryDataPersistence)
        p.data.fail_next(1)

    def fail_manifest(p: Persistence) -> None:
        p.metadata.fail_next(1)  # type: ignore[attr-defined]

    async def leftovers() -> list[str]:
        return []  # nothing outside the dicts; the contract checks them through the API

    return PersistenceBackend("memory", opener, fail_data, fail_data, fail_manifest, leftovers)


# -- disk ---------------------------------------------------------------------------------


def _disk_backend(tmp_path: Path) -> PersistenceBackend:
    directory = tmp_path / "lsm-disk"

    async def opener() -> Persistence:
        return await open_disk_persistence(directory)

    async def leftovers() -> list[str]:
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name.endswith(".lsm-staging"))

    return PersistenceBackend(
        "disk",
        opener,
        fail_append=lambda p: failpoints.arm("lsm.disk.writer.write", "raise@1"),
        fail_close=lambda p: failpoints.arm("lsm.disk.writer.before_fsync", "raise@1"),
        fail_manifest_write=lambda p: failpoints.arm("lsm.disk.manifest.before_rename", "raise@1"),
        leftovers=leftovers,
        extra={"directory": directory},
    )


# -- cloud (staging directory) -------------------------------------------------------------


def _cloud_backend(name: str, store: ObjectStore, tmp_path: Path) -> PersistenceBackend:
    staging = tmp_path / "lsm-cloud-staging"
    prefix = "lsm/db-under-test"

    async def opener() -> Persistence:
        return await open_cloud_persistence(store, prefix, staging, retry_chain_s=2.0)

    async def leftovers() -> list[str]:
        local = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
        # Every SST left in the bucket must be a listed, finished file: an object with no
        # live handle there means a failed write leaked into the bucket.
        return local

    return PersistenceBackend(
        name,
        opener,
        fail_append=lambda p: failpoints.arm("lsm.cloud.writer.write", "raise@1"),
        fail_close=lambda p: failpoints.arm("lsm.cloud.upload", "raise@1"),
        fail_manifest_write=lambda p: failpoints.arm("lsm.cloud.manifest.put", "raise@1"),
        leftovers=leftovers,
        extra={"store": store, "staging_dir": staging, "prefix": prefix},
    )


# -- cloud through the cache ---------------------------------------------------------------

#: The cache the cloud-cache backend runs on in tests: small staging chunks so appends top up
#: their reservation often; no fsync per commit (speed); everything else the defaults.
TEST_CACHE_BYTES = 256 << 20


def cache_settings_for_tests(**overrides: Any) -> CacheSettings:
    base = load_settings(env={}).cache
    values: dict[str, Any] = {
        "max_bytes": TEST_CACHE_BYTES,
        "max_objects": 10_000,
        "staging_initial_bytes": 4096,
        "staging_chunk_bytes": 64 << 10,
        "reserve_deadline": 5.0,
    }
    values.update(overrides)
    return dataclasses.replace(base, **values)


async def open_test_cache(directory: Path, **overrides: Any) -> CacheService:
    return await CacheService.open_single(
        directory, cache_settings_for_tests(**overrides), fsync_commits=False
    )


def part_files(root: Path) -> list[str]:
    """Every ``.part`` file under ``root`` (relative paths)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.part"))


def _cloud_cache_backend(
    name: str, store: ObjectStore, cache: CacheService, cache_dir: Path
) -> PersistenceBackend:
    prefix = "meta/domain/db-under-test"

    async def opener() -> Persistence:
        return cloud_cache_persistence(store, cache, prefix, retry_chain_s=2.0)

    async def leftovers() -> list[str]:
        return part_files(cache_dir)

    async def stop_cache() -> None:
        await asyncio.wait_for(cache.stop(), 10.0)

    return PersistenceBackend(
        name,
        opener,
        # A real cache failure: the staging file's append (the reservation step) raises.
        fail_append=lambda p: failpoints.arm("cache.staging.append", "raise@1"),
        fail_close=lambda p: failpoints.arm("lsm.cloud.upload", "raise@1"),
        fail_manifest_write=lambda p: failpoints.arm("lsm.cloud.manifest.put", "raise@1"),
        leftovers=leftovers,
        extra={"store": store, "cache": cache, "cache_dir": cache_dir, "prefix": prefix},
        cleanups=[stop_cache],
    )


StoreMaker = Callable[..., Awaitable[ObjectStore]]


async def make_backend(name: str, tmp_path: Path, make_store: StoreMaker) -> PersistenceBackend:
    """The backend called ``name`` (see ``ALL_BACKENDS``), its storage under ``tmp_path``.

    ``make_store(kind)`` is the ``make_object_store`` fixture of ``tests/conftest.py``
    (kinds ``local``: a ``file://`` directory bucket; ``s3``: a fresh bucket on moto).
    """
    if name == "memory":
        return _memory_backend(tmp_path)
    if name == "disk":
        return _disk_backend(tmp_path)
    kind, _, where = name.partition("-")
    store = await make_store({"file": "local", "s3": "s3"}[where])
    if kind == "cloud":
        return _cloud_backend(name, store, tmp_path)
    if kind == "cloud_cache":
        cache_dir = tmp_path / "cache"
        cache = await open_test_cache(cache_dir)
        return _cloud_cache_backend(name, store, cache, cache_dir)
    raise ValueError(f"unknown persistence backend {name!r}")


#: Every backend: memory, disk, cloud (staging dir) and cloud-cache, the bucket-backed ones
#: on a local ``file://`` bucket and on the moto S3 server.
ALL_BACKENDS = ["memory", "disk", "cloud-file", "cloud-s3", "cloud_cache-file", "cloud_cache-s3"]
#: Backends the engine/database tests run over (``lsm_persistence`` / ``lsm_backend``).
LSM_BACKENDS = ["memory", "disk", "cloud_cache-file"]
#: Backends the persistence contract suite runs over.
CONTRACT_BACKENDS = ALL_BACKENDS
