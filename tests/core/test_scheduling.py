"""The CPU shares between a shard's object requests and its metastore work
(``core/scheduling.py``, issue 18): the debt rule, and the share of the loop a background task
really gets while a foreground request is in flight (loop thread CPU time, ``thread_time``:
other processes on a busy machine do not count)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cachedaemon.core.cpu_pressure import CpuPressure
from cachedaemon.core.executor import background_io
from cachedaemon.core.foreground import ForegroundBoard
from cachedaemon.core.preempt import TaskQuota
from cachedaemon.core.scheduling import ACTIVE_WINDOW_S, MAX_TURN_S, Scheduler, scheduler


async def test_background_pays_for_its_time_only_while_foreground_waits() -> None:
    s = Scheduler(share=0.2)
    await asyncio.sleep(ACTIVE_WINDOW_S)
    s.charge(0.001)  # nobody waiting: free
    started = time.perf_counter()
    await s.turn()
    assert s.turns == 0 and time.perf_counter() - started < MAX_TURN_S
    with s.foreground():
        s.charge(0.001)  # owes 4 ms of the loop to the foreground
        started = time.perf_counter()
        await s.turn()
        assert s.turns == 1 and time.perf_counter() - started >= 0.0035
        s.charge(0.01)  # owes 40 ms: paid a turn at a time
        await s.turn()
        assert 0.004 <= s.slept_s - 0.004 < 0.02
    await s.turn()  # the foreground just ended: it may send its next request
    assert s.turns == 3
    await asyncio.sleep(ACTIVE_WINDOW_S)
    await s.turn()  # the foreground is gone: the rest is forgiven
    assert s.turns == 3
    with pytest.raises(ValueError):
        s.set_share(0.0)
    s.set_share(1.0)
    with s.foreground():
        s.charge(1.0)
        await s.turn()
    assert s.turns == 3  # share 1: never pauses


async def _shares(with_scheduler: bool) -> float:
    """The background's share of the loop thread's CPU while a foreground request runs: a
    compaction-like task (task quota slices in the background context) beside a request of
    200 steps of 0.1 ms each."""
    sched = scheduler()
    sched.set_share(0.2 if with_scheduler else 1.0)
    background_cpu = 0.0
    stop = False

    async def compaction() -> None:
        nonlocal background_cpu
        quota = TaskQuota()
        with background_io():
            while not stop:
                t = time.thread_time()
                while not quota.need_preempt():
                    pass
                background_cpu += time.thread_time() - t
                await quota.yield_now()

    task = asyncio.ensure_future(compaction())
    await asyncio.sleep(0.01)
    before_bg = background_cpu
    started = time.thread_time()
    with sched.foreground():
        for _ in range(200):
            end = time.thread_time() + 0.0001
            while time.thread_time() < end:
                pass
            await asyncio.sleep(0)
    total = time.thread_time() - started
    share = (background_cpu - before_bg) / total
    stop = True
    await task
    return share


async def test_a_request_gets_the_loop_while_background_work_runs() -> None:
    alone = await _shares(with_scheduler=False)
    shared = await _shares(with_scheduler=True)
    # Without shares the compaction took ~5/6 of the loop (a 0.5 ms slice per 0.1 ms step);
    # with a 0.2 share it takes about a fifth.
    assert alone > 0.6, alone
    assert shared < 0.35, shared


def test_the_metastore_process_sees_the_serving_shards_requests_on_the_board(
        tmp_path: Path) -> None:
    """Two processes' schedulers through one board file (mapped twice here, as by two
    processes): the watcher owes time only while a serving shard has a request about."""
    serving_board = ForegroundBoard.in_dir(tmp_path, 2, create=True)
    watched_board = ForegroundBoard.in_dir(tmp_path, 2)
    shard1, metastore = Scheduler(), Scheduler(0.2)
    shard1.publish_to(serving_board, 1)
    metastore.watch(watched_board, CpuPressure(str(tmp_path / "no-psi")))  # always contended
    assert not metastore.foreground_active
    metastore.charge(0.001)
    assert not metastore.owes()  # nobody waits: no debt

    shard1.foreground_begin()
    assert metastore.foreground_active  # in flight on the other shard
    metastore.charge(0.001)
    assert metastore.owes()
    time.sleep(ACTIVE_WINDOW_S * 2)
    assert metastore.foreground_active  # however long it takes
    shard1.foreground_end()
    assert metastore.foreground_active  # ended just now: its client's next one is coming
    time.sleep(ACTIVE_WINDOW_S * 2)
    assert not metastore.foreground_active and not metastore.owes()
    # A shard's own scheduler never reads the board: its slot is only written.
    assert not shard1.foreground_active
    for board in (serving_board, watched_board):
        board.close()


def test_the_board_starts_quiet_and_keeps_each_shard_in_its_slot(tmp_path: Path) -> None:
    board = ForegroundBoard.in_dir(tmp_path, 3, create=True)
    assert not board.active(1.0)
    schedulers = [Scheduler() for _ in range(3)]
    for i, s in enumerate(schedulers):
        s.publish_to(board, i)
    schedulers[2].foreground_begin()
    schedulers[2].foreground_begin()
    schedulers[0].foreground_begin()
    assert [board.counts[2 * i] for i in range(3)] == [1, 0, 2]
    schedulers[2].foreground_end()
    assert board.counts[4] == 1 and board.ends[5] > 0 and board.ends[1] == 0
    board.close()


def test_with_cores_to_spare_the_metastore_process_does_not_pause(tmp_path: Path) -> None:
    """Work-conserving: the board says a read is in flight, but nothing waits for a CPU."""
    board = ForegroundBoard.in_dir(tmp_path, 1, create=True)
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=5000\n")
    clock = [0.0]
    pressure = CpuPressure(str(psi), lambda: clock[0])
    shard0, metastore = Scheduler(), Scheduler(0.2)
    shard0.publish_to(board, 0)
    metastore.watch(board, pressure)
    shard0.foreground_begin()
    clock[0] += 1.0  # a second in which no task waited for a CPU
    assert not metastore.foreground_active
    metastore.charge(0.01)
    assert not metastore.owes()
    psi.write_text("some avg10=50.00 avg60=0.00 avg300=0.00 total=505000\n")
    clock[0] += 1.0  # half of the next second, some task waited: contended
    assert metastore.foreground_active
    metastore.charge(0.01)
    assert metastore.owes()
    shard0.foreground_end()
    board.close()
