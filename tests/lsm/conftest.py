"""Fixtures for the LSM tests: persistence backends, one factory per backend.

For any LSM test (engine, database) that should run over every persistence backend::

    async def test_something(lsm_persistence: Persistence) -> None: ...
    async def test_reopen(lsm_backend: PersistenceBackend) -> None:
        p = await lsm_backend.open()      # opens a Persistence; call again to *reopen* the
        ...                               # same storage (close the old one first)

``lsm_persistence`` is an opened :class:`Persistence` (closed at teardown);
``lsm_backend`` gives the :class:`PersistenceBackend`, whose ``open()`` can be called
repeatedly to reopen the same underlying storage. Both are parametrised over
``LSM_BACKENDS`` (memory, disk, and the cloud ones once they exist). The persistence
contract suite uses ``persistence_backend``, parametrised more widely (every cloud backend
against both the moto S3 server and the local ``file://`` bucket).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cachedaemon.core import failpoints
from cachedaemon.lsm.io.persistence import Persistence
from tests.support.lsm_persistence import (
    CONTRACT_BACKENDS,
    LSM_BACKENDS,
    MAKERS,
    PersistenceBackend,
)


@pytest.fixture(autouse=True)
def _disarm_failpoints() -> Iterator[None]:
    yield
    failpoints.disarm()


async def _make(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> PersistenceBackend:
    return MAKERS[name](tmp_path)


@pytest.fixture(params=CONTRACT_BACKENDS)
async def persistence_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[PersistenceBackend]:
    backend = await _make(request.param, request, tmp_path)
    yield backend
    await backend.close_all()


@pytest.fixture(params=LSM_BACKENDS)
async def lsm_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[PersistenceBackend]:
    backend = await _make(request.param, request, tmp_path)
    yield backend
    await backend.close_all()


@pytest.fixture
async def lsm_persistence(lsm_backend: PersistenceBackend) -> Persistence:
    return await lsm_backend.open()
