"""Wake-up latency of a busy process pair beside background CPU work, by the background's
scheduling policy: why the metastore's own process runs in ``SCHED_IDLE`` (issue 18,
``metastore.cpu_policy``, ``core/priority.py``).

Usage: .venv-test/bin/python bench/wakeup.py [--hops N] [--duty F]

A read's fill in a multi-shard daemon is a chain of wake-ups: a reply from shard 0, the end of
a thread job, the next chunk. Here two processes play ping-pong over a socketpair (50 µs of
work on each hop, 100 µs between hops, a short sleep every tenth), which is that chain, while
one burner per CPU works ``--duty`` of every 10 ms (the metastore's flushes and compactions).
The burners run with no burners at all (the baseline), at nice 10 (the metastore's
``metastore.nice``), at nice 19, and in ``SCHED_IDLE`` (``metastore.cpu_policy = "idle"``,
the default); it prints the hop's p50/p99/p99.9 and the p99's ratio to the baseline's.

Linux only. Each case is a fresh set of processes; nothing here needs a privilege (a process
may always lower its own priority).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

CASES = ("none", "nice 10", "nice 19", "SCHED_IDLE")


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _lower(case: str) -> None:
    if case == "SCHED_IDLE":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    elif case.startswith("nice "):
        os.nice(int(case.split()[1]))


def _fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def run_case(case: str, hops: int, duty: float) -> list[float]:
    """The hop latencies (seconds, sorted) of ``hops`` round trips beside the burners."""
    burners = []
    if case != "none":
        def burn() -> None:
            _lower(case)
            while True:
                spin(duty * 0.010)
                time.sleep((1 - duty) * 0.010)
        burners = [_fork(burn) for _ in range(os.cpu_count() or 1)]
    ours, theirs = socket.socketpair()

    def echo() -> None:
        ours.close()
        while msg := theirs.recv(8):
            spin(50e-6)
            theirs.send(msg)
    peer = _fork(echo)
    theirs.close()
    time.sleep(0.2)  # the burners are under way
    lat = []
    try:
        for i in range(hops):
            t0 = time.perf_counter()
            ours.send(b"x" * 8)
            ours.recv(8)
            lat.append(time.perf_counter() - t0)
            spin(100e-6)
            if i % 10 == 0:
                time.sleep(0.0005)
    finally:
        ours.close()
        os.waitpid(peer, 0)
        for pid in burners:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return sorted(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hops", type=int, default=15_000, help="round trips per case")
    ap.add_argument("--duty", type=float, default=0.5,
                    help="the share of each 10 ms that a burner works (0-1)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("bench/wakeup.py: scheduling policies are Linux's")
    print(f"# bench/wakeup.py  ({os.cpu_count()} cpus, {args.hops} hops, burners at duty "
          f"{args.duty:.2f}, one per cpu)")
    print(f"{'burners':<12} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'p99 / none':>11}")
    base = None
    for case in CASES:
        lat = run_case(case, args.hops, args.duty)

        def q(f: float, lat: list[float] = lat) -> float:
            return lat[min(len(lat) - 1, int(f * len(lat)))] * 1e6
        base = base or q(0.99)
        print(f"{case:<12} {q(0.5):8.0f} {q(0.99):8.0f} {q(0.999):9.0f} "
              f"{q(0.99) / base:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
