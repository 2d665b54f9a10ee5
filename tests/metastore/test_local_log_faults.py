"""The local log when a group's write or sync fails: the failure may have landed (the bytes
are in the file), so the log stops (nothing of the group was acknowledged) and the next opening
replays whatever the file holds; and the segment the failed group had just created is closed,
not leaked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.local_log import LocalLog
from cachedaemon.metastore.log_format import LogRecord


def rec(seqno: int, key: bytes) -> LogRecord:
    return LogRecord.of(WriteBatch().put(key, b"v"), seqno)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
@pytest.mark.parametrize("point", ["metastore.wal.before_write", "metastore.wal.before_sync"])
async def test_failed_group_in_a_new_segment_closes_it_and_replays_what_landed(
        tmp_path: Path, point: str) -> None:
    wal = tmp_path / "wal"
    log_, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    await log_.append(rec(1, b"a"))
    await log_.release(0)  # the next group starts a new segment
    before = open_fds()
    failpoints.arm(point, "raise@1")
    try:
        with pytest.raises(CacheDaemonError):
            await log_.append(rec(2, b"b"))
    finally:
        failpoints.disarm()
    assert log_.failed is not None
    with pytest.raises(CacheDaemonError):  # the log stays failed
        await log_.append(rec(3, b"c"))
    assert open_fds() <= before  # the new segment's descriptor was closed
    await log_.close()
    log2, replay = await LocalLog.open(wal, epoch=2, persisted_seqno=0)
    landed = [r.base_seqno for r in replay]
    assert landed == ([1] if point.endswith("before_write") else [1, 2])
    await log2.close()
