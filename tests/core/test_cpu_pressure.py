"""``core/cpu_pressure.py``: the metastore's process pauses for the reads only when the CPU is
contended (Linux PSI), so that on a machine with cores to spare it runs at full speed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachedaemon.core.cpu_pressure import (
    CONTENDED,
    PSI_CPU,
    SAMPLE_S,
    CpuPressure,
    pressure_path,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def write(path: Path, total_us: int) -> None:
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def test_contended_when_tasks_waited_for_a_cpu_a_large_enough_share_of_the_time(
        tmp_path: Path) -> None:
    psi, clock = tmp_path / "cpu", Clock()
    write(psi, 1_000_000)
    p = CpuPressure(str(psi), clock)
    step = 0.1  # seconds between samples
    # 1 % of the time waiting: cores to spare.
    clock.t += step
    write(psi, 1_000_000 + int(step * 0.01 * 1e6))
    assert not p.contended()
    # Above the threshold: contended.
    clock.t += step
    write(psi, 1_000_000 + int(step * 0.01 * 1e6) + int(step * (CONTENDED * 2) * 1e6))
    assert p.contended()
    # Read at most once per SAMPLE_S: a change within the window is seen at the next sample.
    write(psi, 0)
    clock.t += SAMPLE_S / 2
    assert p.contended()
    clock.t += SAMPLE_S
    write(psi, 1_000_000 + int(step * 0.01 * 1e6) + int(step * (CONTENDED * 2) * 1e6))
    assert not p.contended()  # nothing waited since the last sample


def test_without_pressure_information_the_cpu_always_counts_as_contended(
        tmp_path: Path) -> None:
    clock = Clock()
    p = CpuPressure(str(tmp_path / "absent"), clock)
    for _ in range(3):
        clock.t += 1.0
        assert p.contended()
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=0.00\n")  # no total: as if absent
    p = CpuPressure(str(psi), clock)
    clock.t += 1.0
    assert p.contended()


@pytest.mark.skipif(not os.path.exists(PSI_CPU), reason="this kernel has no pressure stall "
                    "information (CONFIG_PSI off, or before Linux 4.20)")
def test_the_kernels_file_is_read() -> None:
    p = CpuPressure()
    assert p._last_total is not None and p._last_total >= 0
    assert isinstance(p.contended(), bool)


def test_the_daemons_own_cgroup_is_read_when_it_has_pressure_information(
        tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    root = tmp_path / "fs"
    cgroup.write_text("12:memory:/x\n0::/system.slice/cachedaemon.service\n")
    assert pressure_path(str(cgroup), str(root)) == PSI_CPU  # v1 only, or no PSI there
    service = root / "system.slice" / "cachedaemon.service"
    service.mkdir(parents=True)
    (service / "cpu.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n")
    assert pressure_path(str(cgroup), str(root)) == str(service / "cpu.pressure")
    assert pressure_path(str(tmp_path / "none"), str(root)) == PSI_CPU
