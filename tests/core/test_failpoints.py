"""Fail points: raise, delay, nth hit, crash in a subprocess, env arming."""

import subprocess
import sys
import time

import pytest

from cachedaemon.core import failpoints
from cachedaemon.errors import ConfigError, FailPointTriggered


@pytest.fixture(autouse=True)
def _clean() -> None:
    failpoints.disarm()


async def test_unarmed_is_a_no_op_and_armed_raises() -> None:
    await failpoints.failpoint("x")
    failpoints.arm("x", "raise")
    with pytest.raises(FailPointTriggered, match="fail point x"):
        await failpoints.failpoint("x")
    failpoints.disarm("x")
    await failpoints.failpoint("x")


async def test_nth_hit_only_and_after() -> None:
    failpoints.arm("n", "raise@3")
    failpoints.failpoint_sync("n")
    failpoints.failpoint_sync("n")
    with pytest.raises(FailPointTriggered):
        failpoints.failpoint_sync("n")
    failpoints.failpoint_sync("n")  # only the 3rd
    failpoints.arm("m", "raise@2+")
    failpoints.failpoint_sync("m")
    for _ in range(3):
        with pytest.raises(FailPointTriggered):
            failpoints.failpoint_sync("m")
    assert failpoints.hits("m") == 4


async def test_delay() -> None:
    failpoints.arm("d", "delay:0.05")
    start = time.monotonic()
    await failpoints.failpoint("d")
    assert time.monotonic() - start >= 0.045


async def test_jitter_is_a_random_delay_up_to_its_bound() -> None:
    failpoints.arm("j", "jitter:0.02")
    waits = []
    for _ in range(20):
        start = time.monotonic()
        await failpoints.failpoint("j")
        waits.append(time.monotonic() - start)
    assert max(waits) < 0.2
    assert len({round(w, 3) for w in waits}) > 1  # not one fixed delay
    assert failpoints.hits("j") == 20


def test_bad_specs_are_config_errors() -> None:
    for spec in ("explode", "delay:x", "jitter:", "raise@0", "raise@x"):
        with pytest.raises(ConfigError):
            failpoints.arm("p", spec)
    with pytest.raises(ConfigError):
        failpoints.load_from_env("no-equals-sign")


def test_crash_kills_the_process_from_env() -> None:
    code = "from cachedaemon.core.failpoints import failpoint_sync; failpoint_sync('boom'); print('survived')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"CACHEDAEMON_FAILPOINTS": "boom=crash", "PYTHONPATH": "."},
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == failpoints.CRASH_EXIT_CODE
    assert "survived" not in proc.stdout
    assert "fail point boom crashed" in proc.stderr
