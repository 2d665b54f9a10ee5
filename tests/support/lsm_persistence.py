"""Persistence backends for the LSM tests: how to open, reopen and break each one.

Used by ``tests/lsm/conftest.py`` (fixtures ``persistence_backend``, ``lsm_backend``,
``lsm_persistence``) and by the per-backend persistence tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachedaemon.core import failpoints
from cachedaemon.lsm.io.cloud import open_cloud_persistence
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
    raise ValueError(f"unknown persistence backend {name!r}")


#: Every backend: memory, disk, cloud (staging dir) and cloud-cache, the bucket-backed ones
#: on a local ``file://`` bucket and on the moto S3 server.
ALL_BACKENDS = ["memory", "disk", "cloud-file", "cloud-s3"]
#: Backends the engine/database tests run over (``lsm_persistence`` / ``lsm_backend``).
LSM_BACKENDS = ["memory", "disk", "cloud-file"]
#: Backends the persistence contract suite runs over.
CONTRACT_BACKENDS = ALL_BACKENDS
