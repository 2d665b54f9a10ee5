"""``core/priority.lower``: the metastore process's CPU policy, nice value and I/O class, as the
kernel reports them. Each case runs in a child process: lowering is one-way, and the test
runner's own priority must stay as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="scheduling policies and I/O classes are Linux's")

CHILD = r"""
import json, os, sys, threading
from cachedaemon.core import priority
args = json.loads(sys.argv[1])
try:
    problems = priority.lower(*args)
except ValueError as exc:
    problems = ["ValueError: " + str(exc)]
seen = {}
def look():
    seen["thread"] = os.sched_getscheduler(threading.get_native_id())
t = threading.Thread(target=look); t.start(); t.join()
print(json.dumps({"problems": problems, "policy": os.sched_getscheduler(0),
                  "thread": seen["thread"], "nice": os.getpriority(os.PRIO_PROCESS, 0),
                  "io": priority.io_class_of(0)}))
"""


def lowered(*args: object) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_idle_policy_takes_for_the_process_and_the_threads_it_starts() -> None:
    got = lowered(7, "idle", "idle")
    assert got["problems"] == []
    assert got["policy"] == os.SCHED_IDLE and got["thread"] == os.SCHED_IDLE
    assert got["nice"] == 7 and got["io"] == "idle"


def test_other_policy_keeps_the_normal_scheduler_at_the_nice_value() -> None:
    got = lowered(5, "best-effort", "other")
    assert got["problems"] == []
    assert got["policy"] == os.SCHED_OTHER and got["thread"] == os.SCHED_OTHER
    assert got["nice"] == 5 and got["io"] == "best-effort"


@pytest.mark.parametrize("args", [(9, "idle", "batch"), (9, "realtime", "idle")])
def test_an_unknown_policy_or_class_changes_nothing(args: tuple[object, ...]) -> None:
    got = lowered(*args)
    (problem,) = got["problems"]  # type: ignore[misc]
    assert str(problem).startswith("ValueError: unknown")
    assert got["policy"] == os.SCHED_OTHER and got["nice"] == os.getpriority(
        os.PRIO_PROCESS, 0) and got["io"] != "idle"
