"""BlockCache: a bounded LRU of decoded blocks, shared by every table of one database
(LevelDB's ``NewLRUCache`` used as the block cache).

Keyed by ``(file number, block offset)``, where the file number is a small int the cache hands
out per file handle (:meth:`BlockCache.file_number`; hashing a tuple of ints is far cheaper than
hashing a dataclass handle on every lookup). The charge of an entry is its uncompressed payload
size (the decoded Python lists take a few times more; size the cache accordingly). Owned by
the database on its shard; no locking (single loop).
"""

from __future__ import annotations

from collections import OrderedDict

from cachedaemon.lsm.block import Block
from cachedaemon.lsm.io.persistence import FileHandle

CacheKey = tuple[int, int]


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[CacheKey, Block] = OrderedDict()
        self._usage = 0
        self._numbers: dict[FileHandle, int] = {}
        self._next_number = 0
        self.hits = 0
        self.misses = 0

    def file_number(self, handle: FileHandle) -> int:
        """The stable small int that stands for ``handle`` in cache keys."""
        n = self._numbers.get(handle)
        if n is None:
            # Never reused, even after erase_file: a recycled number would alias another
            # file's cached blocks.
            self._next_number += 1
            n = self._numbers[handle] = self._next_number
        return n

    @property
    def usage_bytes(self) -> int:
        return self._usage

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Block | None:
        """The cached block, or ``None``. Counts hits; the loader counts misses (a lookup
        that a bloom filter then answers is neither)."""
        block = self._entries.get(key)
        if block is None:
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return block

    def insert(self, key: CacheKey, block: Block) -> None:
        if block.charge > self.capacity_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._usage -= old.charge
        self._entries[key] = block
        self._usage += block.charge
        while self._usage > self.capacity_bytes:
            _, victim = self._entries.popitem(last=False)
            self._usage -= victim.charge

    def erase_file(self, handle: FileHandle) -> None:
        """Drop every block of ``handle`` (the file is being deleted)."""
        n = self._numbers.pop(handle, None)
        if n is None:
            return
        for key in [k for k in self._entries if k[0] == n]:
            self._usage -= self._entries.pop(key).charge
