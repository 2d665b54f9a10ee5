"""Named fail points: places in dangerous code paths where a test can inject a fault.

Code marks a step with ``await failpoint("cache.commit.after_link")`` (or the synchronous
:func:`failpoint_sync` inside thread work). Unarmed, a fail point costs one dict lookup. A test
arms one in-process with :func:`arm`, or in a subprocess through the environment variable
``CACHEDAEMON_FAILPOINTS`` read at import::

    CACHEDAEMON_FAILPOINTS="cache.commit.after_link=crash;lsm.flush=raise@3;x=delay:0.5"

Actions: ``raise`` (raises :class:`FailPointTriggered`), ``delay:SECONDS``, ``jitter:SECONDS``
(a random delay from 0 to SECONDS: widens race windows unevenly, for stress tests), ``crash``
(``os._exit(137)`` at once: no cleanup, no flush, as a kill -9 would). ``@N`` fires only on the
N-th hit; ``@N+`` on the N-th hit and every one after it.

The registry is process-wide and shared by all shards; arming is test-only.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field

from cachedaemon.errors import ConfigError, FailPointTriggered

ENV_VAR = "CACHEDAEMON_FAILPOINTS"
CRASH_EXIT_CODE = 137


@dataclass
class _Action:
    kind: str  # raise | delay | jitter | crash
    delay_s: float = 0.0
    nth: int = 0  # 0 = every hit
    and_after: bool = False
    hits: int = field(default=0)


_lock = threading.Lock()
_armed: dict[str, _Action] = {}


def _parse_action(name: str, spec: str) -> _Action:
    nth = 0
    and_after = False
    if "@" in spec:
        spec, _, count = spec.partition("@")
        if count.endswith("+"):
            and_after = True
            count = count[:-1]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"failpoint {name}", ENV_VAR, f"bad hit count {count!r}")
        nth = int(count)
    if spec == "raise":
        return _Action("raise", nth=nth, and_after=and_after)
    if spec == "crash":
        return _Action("crash", nth=nth, and_after=and_after)
    for kind in ("delay", "jitter"):
        if spec.startswith(kind + ":"):
            try:
                seconds = float(spec[len(kind) + 1 :])
            except ValueError:
                raise ConfigError(f"failpoint {name}", ENV_VAR, f"bad {kind} {spec!r}") from None
            return _Action(kind, delay_s=seconds, nth=nth, and_after=and_after)
    raise ConfigError(f"failpoint {name}", ENV_VAR, f"unknown action {spec!r}")


def arm(name: str, action: str) -> None:
    """Arm fail point ``name`` with an action spec (``raise``, ``crash``, ``delay:0.1``, ``@N``)."""
    parsed = _parse_action(name, action)
    with _lock:
        _armed[name] = parsed


def disarm(name: str | None = None) -> None:
    """Disarm one fail point, or all of them."""
    with _lock:
        if name is None:
            _armed.clear()
        else:
            _armed.pop(name, None)


def armed(name: str) -> bool:
    """Whether fail point ``name`` is armed (for a step that is only split when it is)."""
    return bool(_armed) and name in _armed


def hits(name: str) -> int:
    """How many times an armed fail point has been reached."""
    with _lock:
        action = _armed.get(name)
        return action.hits if action else 0


def load_from_env(value: str | None = None) -> None:
    """Arm fail points from ``CACHEDAEMON_FAILPOINTS`` (``name=action;...``)."""
    value = os.environ.get(ENV_VAR, "") if value is None else value
    for item in filter(None, (part.strip() for part in value.split(";"))):
        name, sep, spec = item.partition("=")
        if not sep:
            raise ConfigError(f"failpoint {item}", ENV_VAR, "expected name=action")
        arm(name.strip(), spec.strip())


def _fire(name: str) -> _Action | None:
    if not _armed:
        return None
    with _lock:
        action = _armed.get(name)
        if action is None:
            return None
        action.hits += 1
        if action.nth and (
            action.hits < action.nth or (action.hits > action.nth and not action.and_after)
        ):
            return None
        return action


def _crash(name: str) -> None:
    sys.stderr.write(f"cachedaemon: fail point {name} crashed the process\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


def _reach(name: str) -> float | None:
    """What reaching fail point ``name`` does, decided once for both flavours: nothing (None),
    crash the process, raise FailPointTriggered, or a delay (the seconds the caller sleeps, in
    its own way)."""
    action = _fire(name)
    if action is None:
        return None
    if action.kind == "crash":
        _crash(name)
    if action.kind == "delay":
        return action.delay_s
    if action.kind == "jitter":
        return random.uniform(0.0, action.delay_s)
    raise FailPointTriggered(f"fail point {name} triggered")


async def failpoint(name: str) -> None:
    """Reach fail point ``name`` on the event loop."""
    delay_s = _reach(name)
    if delay_s is not None:
        await asyncio.sleep(delay_s)


def failpoint_sync(name: str) -> None:
    """Reach fail point ``name`` in synchronous (thread) code."""
    delay_s = _reach(name)
    if delay_s is not None:
        time.sleep(delay_s)


load_from_env()
