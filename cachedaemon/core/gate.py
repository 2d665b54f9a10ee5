"""Gate: tracks in-flight work so a service can stop only after it has drained (Seastar's gate).

Every public operation of a service enters its gate (``with gate.hold():`` or
``async with gate.hold():``); ``await gate.close()`` refuses new entries at once and waits
until every holder has left. Long-running work calls :meth:`Gate.check` between steps to bail
out early once closing began. A holder can outlive the block that made it (a staging file holds
one for its whole life) and is released exactly once, by :meth:`GateHolder.release`.

A gate belongs to one shard: it is used from that shard's loop only.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from cachedaemon.errors import GateClosed


class GateHolder:
    """Proof of being inside a gate. Releasing twice is harmless."""

    __slots__ = ("_gate", "_released")

    def __init__(self, gate: Gate) -> None:
        self._gate = gate
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._leave()

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> GateHolder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> GateHolder:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Gate:
    """Counts holders; ``close()`` waits for them. ``name`` appears in errors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._count = 0
        self._closing = False
        self._drained: asyncio.Event | None = None

    @property
    def count(self) -> int:
        """Holders currently inside."""
        return self._count

    @property
    def is_closed(self) -> bool:
        """True once ``close()`` has begun (new entries are refused)."""
        return self._closing

    def hold(self) -> GateHolder:
        """Enter the gate. Raises :class:`GateClosed` once ``close()`` has begun."""
        self.check()
        self._count += 1
        return GateHolder(self)

    def try_hold(self) -> GateHolder | None:
        """Enter the gate, or ``None`` if it is closing."""
        if self._closing:
            return None
        self._count += 1
        return GateHolder(self)

    def check(self) -> None:
        """Raise :class:`GateClosed` if closing began (for long work to bail out)."""
        if self._closing:
            raise GateClosed(f"gate {self.name} is closed")

    async def close(self) -> None:
        """Refuse new holders and wait until all current ones have left. Idempotent."""
        self._closing = True
        if self._count == 0:
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        await self._drained.wait()

    def _leave(self) -> None:
        self._count -= 1
        assert self._count >= 0, f"gate {self.name}: more leaves than holds"
        if self._count == 0 and self._drained is not None:
            self._drained.set()
