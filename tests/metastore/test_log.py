"""The write-ahead logs: format round trips, group commit, torn tails, corruption, release,
and the remote log's fencing (put-if-absent segments)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.errors import Corruption, Fenced
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.local_log import LocalLog
from cachedaemon.metastore.log_format import (
    HEADER_BYTES,
    LogRecord,
    SegmentHeader,
    encode_segment,
    parse_segment,
)
from cachedaemon.metastore.remote_log import FENCE_SPAN, RemoteLog, segment_key
from cachedaemon.remote.memory import MemoryObjectStore


def rec(seqno: int, *pairs: tuple[bytes, bytes]) -> LogRecord:
    b = WriteBatch()
    for k, v in pairs:
        b.put(k, v)
    return LogRecord.of(b, seqno)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=50)),
                         min_size=1, max_size=5), max_size=10))
def test_segment_round_trip(batches: list[list[tuple[bytes, bytes]]]) -> None:
    records, seq = [], 1
    for ops in batches:
        records.append(rec(seq, *ops))
        seq += len(ops)
    data = encode_segment(SegmentHeader(7, 3), records)
    seg = parse_segment(data, tail_ok=False)
    assert seg.header == SegmentHeader(7, 3)
    assert seg.records == records
    assert [[(k, v) for _, k, v in r.batch().ops] for r in seg.records] == batches


def test_every_truncation_is_a_torn_tail_or_refused() -> None:
    records = [rec(1, (b"a", b"1")), rec(2, (b"b", b"2"), (b"c", b"3")), rec(4, (b"d", b"4"))]
    data = encode_segment(SegmentHeader(1, 1), records)
    ends = [HEADER_BYTES]
    for r in records:
        ends.append(ends[-1] + len(r.encode()))
    for cut in range(HEADER_BYTES, len(data)):
        seg = parse_segment(data[:cut], tail_ok=True)
        whole = sum(1 for e in ends[1:] if e <= cut)
        assert seg.records == records[:whole]
        assert seg.torn == (cut not in ends)
        if cut not in ends:
            with pytest.raises(Corruption):
                parse_segment(data[:cut], tail_ok=False)


def test_a_flipped_bit_is_never_served() -> None:
    records = [rec(1, (b"a", b"1")), rec(2, (b"b", b"2"))]
    data = bytearray(encode_segment(SegmentHeader(1, 1), records))
    for pos in range(HEADER_BYTES, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        seg = parse_segment(bytes(bad), tail_ok=True)
        first_len = len(records[0].encode())
        assert seg.records == (records[:1] if pos >= HEADER_BYTES + first_len else [])
        assert seg.torn


async def test_local_log_group_commit_and_replay(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    log_, replay = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    assert replay == []
    applied: list[int] = []
    log_.set_on_durable(lambda rs: applied.extend(r.base_seqno for r in rs))
    n = 64
    await asyncio.gather(*(log_.append(rec(i + 1, (b"k%d" % i, b"v"))) for i in range(n)))
    assert applied == list(range(1, n + 1))  # applied in seqno order
    assert log_.stats.appends == n
    assert 1 <= log_.stats.syncs < n  # concurrent writers shared fsyncs
    await log_.close()

    log2, replay = await LocalLog.open(wal, epoch=2, persisted_seqno=10)
    assert [r.base_seqno for r in replay] == list(range(11, n + 1))
    await log2.close()


async def test_local_log_torn_tail_is_dropped_and_truncated(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    log_, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    for i in range(1, 6):
        await log_.append(rec(i, (b"k", b"v%d" % i)))
    await log_.close()
    (seg,) = sorted(wal.iterdir())
    size = seg.stat().st_size
    with seg.open("r+b") as f:
        f.truncate(size - 3)  # the last record was cut short by a crash
    log2, replay = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == [1, 2, 3, 4]
    assert seg.stat().st_size < size - 3  # the torn bytes are gone from the file
    await log2.append(rec(5, (b"k", b"again")))
    await log2.close()
    # The old segment is no longer the newest, and it is intact: a later open accepts it.
    log3, replay = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == [1, 2, 3, 4, 5]
    assert replay[-1].batch().ops[0][2] == b"again"
    await log3.close()


async def test_local_log_corruption_before_the_newest_segment_is_refused(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    log_, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    await log_.append(rec(1, (b"a", b"1")))
    await log_.append(rec(2, (b"b", b"2")))
    await log_.close()
    log2, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    await log2.append(rec(3, (b"c", b"3")))  # a second segment
    await log2.close()
    first = sorted(wal.iterdir())[0]
    data = bytearray(first.read_bytes())
    data[-2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(Corruption):
        await LocalLog.open(wal, epoch=1, persisted_seqno=0)


async def test_local_log_torn_header_segment_is_dropped(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    log_, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    await log_.append(rec(1, (b"a", b"1")))
    await log_.close()
    (wal / f"{99:020d}.log").write_bytes(b"CDWAL0")  # crash while creating a segment
    log2, replay = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == [1]
    assert not (wal / f"{99:020d}.log").exists()
    await log2.close()


async def test_local_log_release_deletes_persisted_segments(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    log_, _ = await LocalLog.open(wal, epoch=1, persisted_seqno=0)
    await log_.append(rec(1, (b"a", b"1")))
    await log_.release(1)  # rolls: the next record starts a new segment
    await log_.append(rec(2, (b"b", b"2")))
    assert len(os.listdir(wal)) == 2
    await log_.release(2)  # the first segment is wholly persisted
    assert len(os.listdir(wal)) == 1
    await log_.append(rec(3, (b"c", b"3")))
    await log_.close()
    log2, replay = await LocalLog.open(wal, epoch=1, persisted_seqno=2)
    assert [r.base_seqno for r in replay] == [3]
    assert len(os.listdir(wal)) == 1  # the segment holding only seqno 2 was deleted on open
    await log2.close()


async def test_remote_log_fences_an_older_writer() -> None:
    store = MemoryObjectStore()
    io = CloudIO(store)
    old, replay = await RemoteLog.open(io, "d", epoch=1, persisted_seqno=0)
    assert replay == []
    await asyncio.gather(*(old.append(rec(i, (b"k%d" % i, b"v"))) for i in range(1, 11)))
    assert old.stats.syncs < 10

    new, replay = await RemoteLog.open(io, "d", epoch=2, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == list(range(1, 11))  # nothing acknowledged lost
    with pytest.raises(Fenced):
        await old.append(rec(11, (b"late", b"x")))
    with pytest.raises(Fenced):  # and it stays failed
        await old.append(rec(12, (b"later", b"x")))
    await new.append(rec(11, (b"mine", b"y")))
    third, replay = await RemoteLog.open(io, "d", epoch=3, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == list(range(1, 12))
    assert replay[-1].batch().ops[0][1] == b"mine"
    # An older epoch cannot open behind a newer one.
    with pytest.raises(Fenced):
        await RemoteLog.open(io, "d", epoch=2, persisted_seqno=0)
    await third.release(11)
    # Left: only the fences of the three opens (an older writer may still try their ids).
    infos = [o async for o in store.list_all("d/wal/")]
    assert len(infos) == 3 * FENCE_SPAN
    assert all(o.size == HEADER_BYTES for o in infos)
    _, replay = await RemoteLog.open(io, "d", epoch=4, persisted_seqno=11)
    assert replay == []


async def test_remote_log_replays_an_older_writer_that_won_the_fence_slot() -> None:
    store = MemoryObjectStore()
    io = CloudIO(store)
    old, _ = await RemoteLog.open(io, "d", epoch=1, persisted_seqno=0)
    await old.append(rec(1, (b"a", b"1")))
    # The older writer takes the slot the newer one is about to fence.
    slot = old._next_id
    await store.put(segment_key("d", slot + 1), encode_segment(SegmentHeader(1, slot + 1),
                                                               [rec(3, (b"c", b"3"))]))
    await old.append(rec(2, (b"b", b"2")))  # lands at `slot`
    new, replay = await RemoteLog.open(io, "d", epoch=2, persisted_seqno=0)
    assert [r.base_seqno for r in replay] == [1, 2, 3]
    await new.close()


async def test_remote_log_open_is_not_outrun_by_a_fast_older_writer() -> None:
    store = MemoryObjectStore()
    io = CloudIO(store)
    old, _ = await RemoteLog.open(io, "d", epoch=1, persisted_seqno=0)
    acked: list[int] = []

    async def hammer() -> None:
        seq = 1
        while True:
            try:
                await old.append(rec(seq, (b"k%d" % seq, b"v")))
            except Fenced:
                return
            acked.append(seq)
            seq += 1

    task = asyncio.create_task(hammer())
    await asyncio.sleep(0.01)
    new, replay = await RemoteLog.open(io, "d", epoch=2, persisted_seqno=0)
    await asyncio.wait_for(task, 5)
    assert acked and [r.base_seqno for r in replay] == acked  # every acknowledged record
    await new.append(rec(acked[-1] + 1, (b"new", b"v")))


async def test_concurrent_writers_share_fsyncs_counted_at_the_syscall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = os.fdatasync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log_, _ = await LocalLog.open(tmp_path / "wal", epoch=1, persisted_seqno=0)
    await log_.append(rec(1, (b"first", b"x")))  # the segment exists: only record syncs remain
    calls = 0
    n = 50
    await asyncio.gather(*(log_.append(rec(i + 2, (b"k%d" % i, b"v"))) for i in range(n)))
    assert 1 <= calls < n, calls
    assert calls == log_.stats.syncs - 1
    await log_.close()
