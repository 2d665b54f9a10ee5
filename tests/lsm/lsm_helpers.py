"""Shared helpers for the LSM engine tests: tiny options and a seqno-indexed model."""

from __future__ import annotations

import dataclasses
from typing import Any

from cachedaemon.lsm.db import Database
from cachedaemon.lsm.dbformat import parse_internal_key
from cachedaemon.lsm.io.persistence import FileHandle, Persistence
from cachedaemon.lsm.options import Options


def tiny_options(**kw: Any) -> Options:
    base = Options(
        memtable_bytes=2048,
        max_file_bytes=4096,
        l1_max_bytes=8192,
        block_size=256,
        l0_compaction_trigger=2,
        l0_slowdown_writes_trigger=6,
        l0_stop_writes_trigger=10,
        l0_slowdown_sleep_s=0.001,
        block_cache_bytes=64 * 1024,
        max_open_files=8,
        compression=("none", "lz4", "zstd"),
    )
    return dataclasses.replace(base, **kw)


class History:
    """Every applied operation with its seqno, to rebuild the expected state at any seqno."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, bytes, bytes | None]] = []

    def record(self, last_seqno: int, ops: list[tuple[bytes, bytes | None]]) -> None:
        first = last_seqno - len(ops) + 1
        for i, (k, v) in enumerate(ops):
            self.ops.append((first + i, k, v))

    def at(self, seqno: int) -> dict[bytes, bytes]:
        state: dict[bytes, bytes | None] = {}
        for s, k, v in self.ops:
            if s <= seqno:
                state[k] = v
        return {k: v for k, v in state.items() if v is not None}


async def internal_entries(db: Database) -> list[tuple[bytes, int, int]]:
    """Every (user key, seqno, kind) the database holds, memtables and SSTs."""
    it, _ = db._internal_iterator()
    out = []
    await it.seek_to_first()
    while it.valid():
        out.append(parse_internal_key(it.key()))
        await it.next()
    await it.close()
    return out


async def stored_files(p: Persistence) -> set[FileHandle]:
    return {h async for h in p.data.list_files()}


def manifest_files(db: Database) -> set[FileHandle]:
    return {f.handle for f in db.current_version.files()}
