"""Fixtures for the L1 metastore tests: the real L1 code over a real ``lsm.Database`` on
memory persistence, with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cachedaemon.clock import ManualClock
from cachedaemon.lsm import Database, Options
from cachedaemon.lsm.io.memory import memory_persistence
from cachedaemon.metastore.l1 import DatabaseRowStore, L1Metastore


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = await Database.open(Options(memtable_bytes=64 * 1024), memory_persistence())
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def l1(db: Database, clock: ManualClock) -> L1Metastore:
    return L1Metastore(DatabaseRowStore(db), clock=clock)
