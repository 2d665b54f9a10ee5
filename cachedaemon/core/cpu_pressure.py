"""Is the machine's CPU contended? Linux's pressure stall information, sampled.

The metastore's own process keeps to ``metastore.cpu_share`` while object requests are about
(``core/scheduling.py``), but a pause is only worth its cost when the serving shards want the
CPU it would take: on a machine with cores to spare, the metastore should run at full speed
beside the reads. Seastar's shares are work-conserving in the same way (they divide the CPU only
among groups that have work). :class:`CpuPressure` reads the daemon's cgroup's
``cpu.pressure`` (cgroup v2: a container's or a systemd service's own tasks, throttling
included), else the machine's ``/proc/pressure/cpu`` (``some``: the share of time at least one
runnable task waited for a CPU), at most once per
:data:`SAMPLE_S` and says the CPU is contended when that share, over the last sample, is at
least :data:`CONTENDED`. Without the file (an old kernel, PSI off) it always says contended, so
the share applies as it did before. Owned by the scheduler of the metastore's process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PSI_CPU = "/proc/pressure/cpu"
#: How often the file is read (the decision in between is the last one).
SAMPLE_S = 0.05
#: Share of time with a task waiting for a CPU from which the CPU counts as contended.
CONTENDED = 0.05


def pressure_path(cgroup_file: str = "/proc/self/cgroup",
                  root: str = "/sys/fs/cgroup") -> str:
    """This process's cgroup v2 ``cpu.pressure`` when there is one, else :data:`PSI_CPU`."""
    try:
        with open(cgroup_file) as f:
            for line in f:
                if line.startswith("0::"):
                    candidate = os.path.join(root, line[3:].strip().lstrip("/"), "cpu.pressure")
                    if os.path.exists(candidate):
                        return candidate
    except OSError:
        pass
    return PSI_CPU


class CpuPressure:
    """See the module docstring. ``path`` and ``clock`` are for tests."""

    def __init__(self, path: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._path = pressure_path() if path is None else path
        self._clock = clock
        self._last_t = clock()
        self._last_total = self._read()
        self._contended = True

    def _read(self) -> int | None:
        """``some total`` in microseconds, or None when there is no such file."""
        try:
            with open(self._path, "rb") as f:
                first = f.readline()
        except OSError:
            return None
        for field in first.split():
            if field.startswith(b"total="):
                return int(field[6:])
        return None

    def contended(self) -> bool:
        if self._last_total is None:
            return True
        now = self._clock()
        if now - self._last_t < SAMPLE_S:
            return self._contended
        total = self._read()
        if total is None:
            self._last_total = None
            return True
        waited = (total - self._last_total) / 1e6
        self._contended = waited >= CONTENDED * (now - self._last_t)
        self._last_t, self._last_total = now, total
        return self._contended
