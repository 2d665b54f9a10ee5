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
from typing import Any

import pytest

from cachedaemon.core import failpoints
from cachedaemon.lsm.io.persistence import Persistence
from tests.support.lsm_persistence import (
    CONTRACT_BACKENDS,
    LSM_BACKENDS,
    PersistenceBackend,
    StoreMaker,
    make_backend,
)


@pytest.fixture(autouse=True)
def _disarm_failpoints() -> Iterator[None]:
    yield
    failpoints.disarm()


def _params(names: list[str]) -> list[Any]:
    return [
        pytest.param(n, marks=pytest.mark.s3) if n.endswith("-s3") else pytest.param(n)
        for n in names
    ]


@pytest.fixture(params=_params(CONTRACT_BACKENDS))
async def persistence_backend(
    request: pytest.FixtureRequest, tmp_path: Path, make_object_store: StoreMaker
) -> AsyncIterator[PersistenceBackend]:
    backend = await make_backend(request.param, tmp_path, make_object_store)
    yield backend
    await backend.close_all()


@pytest.fixture(params=_params(LSM_BACKENDS))
async def lsm_backend(
    request: pytest.FixtureRequest, tmp_path: Path, make_object_store: StoreMaker
) -> AsyncIterator[PersistenceBackend]:
    backend = await make_backend(request.param, tmp_path, make_object_store)
    yield backend
    await backend.close_all()


@pytest.fixture
async def lsm_persistence(lsm_backend: PersistenceBackend) -> Persistence:
    return await lsm_backend.open()
