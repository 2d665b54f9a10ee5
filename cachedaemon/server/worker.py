"""A worker shard's process: ``python -m cachedaemon.server.worker`` (started by shard 0).

It reads its :class:`~cachedaemon.server.supervisor.WorkerSpec` from standard input, makes
sure it never outlives shard 0 (``PR_SET_PDEATHSIG``: the kernel kills it when its parent
dies; and it checks the parent is still the one that started it), leaves ``SIGINT`` and
``SIGTERM`` to shard 0 (a Ctrl-C reaches the whole process group, but shard 0 decides how the
daemon stops), and runs the spec's entry (the daemon's shard start-up) on its own uvloop.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
from typing import Any

from cachedaemon.core.channel import ShardLinks

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


async def link_to_shard0(spec: dict[str, Any]) -> ShardLinks:
    """This worker's links: listening for its peers, and joined to shard 0 (``shards.hello``).
    When the link to shard 0 closes — shard 0 died or stopped — the worker exits at once."""
    links = ShardLinks(spec["shard"], spec["links_dir"], bytes.fromhex(spec["secret"]))
    await links.listen()

    def lost(peer: int) -> None:
        if peer == 0:
            os._exit(0)

    links.on_peer_lost = lost
    await links.call(0, "shards", "hello", [spec["shard"], os.getpid()])
    return links


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    set_parent_death_signal()
    if spec.get("parent_pid") and os.getppid() != spec["parent_pid"]:
        return 1  # shard 0 died before we could ask to die with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    module, _, func = spec["entry"].partition(":")
    entry = getattr(importlib.import_module(module), func)
    import uvloop

    return int(uvloop.run(entry(spec)) or 0)


if __name__ == "__main__":
    sys.exit(main())
