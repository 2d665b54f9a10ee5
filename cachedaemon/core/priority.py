"""A process's CPU and I/O priority, as the kernel schedules it.

Seastar gives each scheduling group CPU shares and each I/O priority class disk shares, inside
one process. cachedaemon's shards are processes (``docs/shards.md``), and the metastore runs in
one of its own when there is more than one shard: the kernel's scheduling policy and ``nice``
value (CPU) and I/O class (``ioprio_set``) are then the shares between it and the shards that
serve objects. :func:`lower` is called once, first thing in that process (before any thread
starts, since a thread inherits all three at its creation); :func:`io_class_of` reads the I/O
class back (tests).

The CPU policy: ``idle`` (``SCHED_IDLE``) or ``other`` (``SCHED_OTHER`` at the nice value).
A niced process still keeps a CPU to the end of its slice when a shard wakes (Linux's EEVDF
protects the running task's slice), so every wake-up of a read's fill (a reply from shard 0, a
thread job's end) could wait up to a slice behind a compaction: in a ping-pong probe on a
2-CPU machine with half-busy burners, the p99 of a wake-up was 1-3.5 ms with the burners at nice
10 or 19, and 0.2-0.4 ms with them in ``SCHED_IDLE``, as with no burners at all (issue 18;
``bench/wakeup.py``). A ``SCHED_IDLE`` task is preempted as soon as a normal one wants its
CPU, and gets the CPU that is left otherwise (the kernel's smallest weight, so it is never
starved outright, but under a load that keeps every CPU busy it waits: ``docs/cache.md``).

On Linux only: elsewhere :func:`lower` changes the niceness alone (POSIX) and reports the
policy and the I/O class as unsupported. Lowering never needs a privilege; raising back does,
so it is one-way.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

IO_CLASSES = ("best-effort", "idle")
CPU_POLICIES = ("idle", "other")

#: ``ioprio_set``/``ioprio_get`` syscall numbers (no libc wrapper exists).
_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31), "arm64": (30, 31),
             "ppc64le": (273, 274), "s390x": (282, 283), "riscv64": (30, 31)}
_WHO_PROCESS = 1  # IOPRIO_WHO_PROCESS: one thread, or 0 for the caller
_CLASS_SHIFT = 13
_CLASS_NUMBERS = {"realtime": 1, "best-effort": 2, "idle": 3}
_CLASS_NAMES = {0: "none", **{v: k for k, v in _CLASS_NUMBERS.items()}}


def _syscall(index: int, *args: int) -> int:
    numbers = _SYSCALLS.get(platform.machine())
    if not sys.platform.startswith("linux") or numbers is None:
        raise OSError(f"I/O priorities are not supported on {sys.platform} "
                      f"{platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.syscall(numbers[index], *args))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def io_class_of(pid: int = 0) -> str:
    """The I/O scheduling class of process (thread) ``pid``: ``best-effort``, ``idle``,
    ``realtime``, or ``none`` (the default: best-effort at a level derived from the nice
    value)."""
    value = _syscall(1, _WHO_PROCESS, pid)
    return _CLASS_NAMES.get(value >> _CLASS_SHIFT, "none")


def lower(nice: int, io_class: str, cpu_policy: str = "other") -> list[str]:
    """Lower this process's CPU priority to ``nice`` (never raise it), set its CPU policy
    (``idle``: ``SCHED_IDLE``; ``other``: left as it is) and its I/O class (``best-effort`` at
    its lowest level, or ``idle``); what could not be done, as sentences for the log (an empty
    list when all took)."""
    if io_class not in IO_CLASSES:
        raise ValueError(f"unknown I/O class {io_class!r} (expected one of {IO_CLASSES})")
    if cpu_policy not in CPU_POLICIES:
        raise ValueError(f"unknown CPU policy {cpu_policy!r} (expected one of {CPU_POLICIES})")
    problems = []
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        problems.append(f"cannot set the nice value {nice}: {exc.strerror or exc}")
    if cpu_policy == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError) as exc:  # not Linux, or refused (a seccomp filter)
            problems.append(f"cannot set the CPU policy idle: "
                            f"{getattr(exc, 'strerror', None) or exc}")
    level = 7 if io_class == "best-effort" else 0
    try:
        _syscall(0, _WHO_PROCESS, 0, (_CLASS_NUMBERS[io_class] << _CLASS_SHIFT) | level)
    except OSError as exc:
        problems.append(f"cannot set the I/O class {io_class}: {exc.strerror or exc}")
    return problems
