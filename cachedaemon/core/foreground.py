"""The foreground board: which serving shards have object requests about, in shared memory.

With the metastore in a process of its own (``metastore.process``, ``docs/shards.md``), its
:class:`~cachedaemon.core.scheduling.Scheduler` cannot see the object requests it must give way
to: they run in the other processes. The board is a small file mapped by every shard (created by
shard 0 in the daemon's private links directory before the workers start): per serving shard,
one slot of two 8-byte words, the count of its foreground requests in flight and the time the
last one ended (``time.perf_counter``, the system's monotonic clock, the same in every process).
A serving shard's scheduler writes its own slot (two stores into the mapping on each request's
start and end, no system call); the metastore process's scheduler reads them all when it decides
whether to pause. A torn read (a word written while read) can only misjudge one decision.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

#: Bytes per slot: the in-flight count (int64) and the last end (float64).
SLOT_BYTES = 16
FILE_NAME = "foreground"


class ForegroundBoard:
    """The mapped board of ``shards`` slots at ``path`` (see the module docstring)."""

    def __init__(self, path: str | Path, shards: int, *, create: bool = False) -> None:
        self.path = str(path)
        self.shards = shards
        size = max(1, shards) * SLOT_BYTES
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._view = memoryview(self._map)
        #: ``counts[2 * i]``: shard i's requests in flight; ``ends[2 * i + 1]``: its last end.
        self.counts = self._view.cast("q")
        self.ends = self._view.cast("d")

    @classmethod
    def in_dir(cls, directory: str | Path, shards: int, *, create: bool = False
               ) -> ForegroundBoard:
        return cls(Path(directory) / FILE_NAME, shards, create=create)

    def active(self, window_s: float) -> bool:
        """A serving shard has a request in flight, or ended one less than ``window_s`` ago."""
        counts, ends = self.counts, self.ends
        now = time.perf_counter()
        for i in range(0, 2 * self.shards, 2):
            if counts[i] > 0 or now - ends[i + 1] < window_s:
                return True
        return False

    def close(self) -> None:
        self.counts.release()
        self.ends.release()
        self._view.release()
        self._map.close()
