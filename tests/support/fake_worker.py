"""A worker shard that only links to shard 0 and serves a tiny "probe" service (supervisor
tests): it answers ``probe.pid`` and exits on ``probe.exit``, like the daemon's workers do on
their stop message."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from cachedaemon.server.worker import link_to_shard0


class Probe:
    def __init__(self) -> None:
        self.done = asyncio.Event()

    def pid(self) -> int:
        return os.getpid()

    def exit(self) -> None:
        self.done.set()


async def run(spec: dict[str, Any]) -> int:
    probe = Probe()
    links = await link_to_shard0(spec)
    links.register("probe", probe)
    await probe.done.wait()
    await links.close()
    return 0
