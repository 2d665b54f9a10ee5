"""A one-line progress display for long transfers of the CLI (``put``, ``get``).

Drawn on stderr only when stderr is a terminal and the transfer is large (at least
:data:`MIN_BYTES`, or of unknown size and still running after :data:`UNKNOWN_DELAY_S`); otherwise every call is a no-op, so piped output and
logs stay clean. Redrawn at most :data:`REDRAW_S` apart. ``update`` is called from the client's
loop thread; ``finish`` from the main thread after the transfer, so a lock guards the line.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from cachedaemon.units import format_size

MIN_BYTES = 1024 * 1024
REDRAW_S = 0.1
#: A transfer of unknown size is shown only once it has run this long.
UNKNOWN_DELAY_S = 0.5


class ProgressBar:
    """``label  12.0 MiB / 40.0 MiB  30%  8.1 MiB/s``, rewritten in place with ``\\r``."""

    def __init__(
        self, label: str, total: int | None, *, stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = _isatty(self.stream) and (total is None or total >= MIN_BYTES)
        self.enabled = enabled
        self.label = label
        self.total = total
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._lock = threading.Lock()

    def set_total(self, total: int | None) -> None:
        """Learned late (a GET's Content-Length); re-decides whether to draw when auto."""
        self.total = total
        if self.enabled and total is not None and total < MIN_BYTES:
            self.enabled = False

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.total is None and not self._drawn and now - self._started < UNKNOWN_DELAY_S:
            return  # a stream of unknown size: only show it once it proves long
        if now - self._last_draw >= REDRAW_S:
            self._draw(now)

    def finish(self) -> None:
        if not self.enabled or (self.total is None and not self._drawn):
            return
        self._draw(time.monotonic())
        with self._lock:
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()

    def _draw(self, now: float) -> None:
        with self._lock:
            self._last_draw = now
            elapsed = max(now - self._started, 1e-6)
            rate = f"{format_size(int(self.done / elapsed))}/s"
            if self.total:
                pct = min(100, self.done * 100 // self.total)
                line = (f"{self.label}  {format_size(self.done)} / {format_size(self.total)}"
                        f"  {pct:3d}%  {rate}")
            else:
                line = f"{self.label}  {format_size(self.done)}  {rate}"
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._drawn = True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
