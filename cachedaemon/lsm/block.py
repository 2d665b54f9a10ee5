"""Block: a data or index block, decoded lazily (LevelDB's ``Block``).

A block payload (format in :mod:`block_builder`) is checked on construction: the restart array
must fit and every restart entry must parse, and the whole keys of the restart entries are kept.
The entries between two restart points form a *run* (at most ``block_restart_interval`` of
them, 16 by default). Three ways to read a block:

* :meth:`Block.find` — a point lookup: bisect the restart keys, then look inside one run. The
  first lookup in a run walks its entries without keeping them; a second one decodes the run
  and keeps it, so a block fetched for one lookup is never decoded, and a hot one is searched
  by ``bisect``.
* :meth:`Block.run` — the keys and values of one run as two parallel lists, decoded on first
  use and kept on the block. Iterators (:class:`~cachedaemon.lsm.table.SstIterator`) step
  through a block run by run, so a seek decodes one run, not the whole block (LevelDB's block
  iterator also parses from the nearest restart point).
* :attr:`Block.keys` / :attr:`Block.values` — every entry (index and meta blocks, tests).

Every entry of a run must lie inside the run (between its restart point and the next one),
else the read raises :class:`~cachedaemon.errors.Corruption`; damaged bytes are never returned.

Blocks live in the shared :class:`~cachedaemon.lsm.block_cache.BlockCache`; they are immutable
apart from the one-time decodes, and used from the database's shard only.
"""

from __future__ import annotations

import bisect
import struct

from cachedaemon.errors import Corruption

_ENTRY = struct.Struct("<III")
_U32 = struct.Struct("<I")
_unpack_entry = _ENTRY.unpack_from

Run = tuple[list[bytes], list[bytes]]
#: ``Block._runs[r]`` of a run one lookup has walked but nobody decoded yet.
_WALKED = ([], [])  # type: ignore[var-annotated]


class Block:
    __slots__ = (
        "_data",
        "_keys",
        "_limit",
        "_restart_keys",
        "_restarts",
        "_runs",
        "_values",
        "_where",
        "charge",
        "nruns",
    )

    def __init__(self, data: bytes, where: str) -> None:
        size = len(data)
        if size < 4:
            raise Corruption(f"{where}: block too short ({size} bytes)")
        (num_restarts,) = _U32.unpack_from(data, size - 4)
        limit = size - 4 - 4 * num_restarts
        if num_restarts == 0 or limit < 0:
            raise Corruption(f"{where}: bad restart count {num_restarts}")
        # An empty block (no entries) still carries one restart; it has no key.
        restarts = list(struct.unpack_from(f"<{num_restarts}I", data, limit)) if limit else []
        restart_keys = []
        try:
            for off in restarts:
                shared, unshared, _ = _unpack_entry(data, off)
                if shared or off + 12 + unshared > limit:
                    raise Corruption(f"{where}: bad restart entry at block offset {off}")
                restart_keys.append(data[off + 12 : off + 12 + unshared])
        except struct.error as e:
            raise Corruption(f"{where}: restart beyond the block") from e
        self._data = data
        self._limit = limit
        self._restarts = restarts
        self._restart_keys = restart_keys
        self._where = where
        self._keys: list[bytes] | None = None
        self._values: list[bytes] = []
        self._runs: list[Run | None] = [None] * len(restarts)
        #: How many runs (restart intervals) the block holds; 0 for an empty block.
        self.nruns = len(restarts)
        self.charge = size

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def keys(self) -> list[bytes]:
        if self._keys is None:
            self._decode()
        assert self._keys is not None
        return self._keys

    @property
    def values(self) -> list[bytes]:
        if self._keys is None:
            self._decode()
        return self._values

    @property
    def restart_keys(self) -> list[bytes]:
        """The first (whole) key of every run, in order."""
        return self._restart_keys

    def seek(self, target: bytes) -> int:
        """Index of the first key >= ``target`` (``len(self)`` if none)."""
        return bisect.bisect_left(self.keys, target)

    def run(self, r: int) -> Run:
        """The keys and values of run ``r`` (``0 <= r < nruns``), decoded once and kept."""
        run = self._runs[r]
        if run is None or run is _WALKED:
            run = self._decode_run(r)
            self._runs[r] = run
        return run

    def run_for(self, target: bytes) -> int:
        """The run that holds the first key >= ``target`` if any run does: the last run whose
        first key is <= ``target`` (0 if ``target`` is below every key)."""
        r = bisect.bisect_right(self._restart_keys, target)
        return r - 1 if r else 0

    def find(self, target: bytes) -> tuple[bytes, bytes] | None:
        """The first entry with key >= ``target``, or ``None`` if every key is smaller."""
        if self._keys is not None:
            i = bisect.bisect_left(self._keys, target)
            return (self._keys[i], self._values[i]) if i < len(self._keys) else None
        rk = self._restart_keys
        if not rk:
            return None
        r = bisect.bisect_right(rk, target)
        if r == 0:  # below every key: the first entry
            return self._first(0)
        r -= 1
        run = self._runs[r]
        if run is None:
            # First lookup in this run: walk it, keep nothing (the block may never be read
            # again); the next lookup decodes it.
            self._runs[r] = _WALKED
            found = self._walk(r, target)
        else:
            keys, values = self.run(r)
            i = bisect.bisect_left(keys, target)
            found = (keys[i], values[i]) if i < len(keys) else None
        if found is None and r + 1 < len(rk):
            return self._first(r + 1)
        return found

    def _first(self, r: int) -> tuple[bytes, bytes]:
        """The first entry of run ``r`` (its key is the restart key)."""
        run = self._runs[r]
        if run is not None and run is not _WALKED:
            return run[0][0], run[1][0]
        start, end = self._bounds(r)
        _, unshared, vlen = _unpack_entry(self._data, start)  # parsed in __init__
        kend = start + 12 + unshared
        if kend + vlen > end:
            raise Corruption(f"{self._where}: entry at block offset {start} overruns its run")
        return self._restart_keys[r], self._data[kend : kend + vlen]

    def _bounds(self, r: int) -> tuple[int, int]:
        start = self._restarts[r]
        end = self._restarts[r + 1] if r + 1 < len(self._restarts) else self._limit
        if end <= start:
            raise Corruption(f"{self._where}: restart points out of order at block offset {start}")
        return start, end

    def _walk(self, r: int, target: bytes) -> tuple[bytes, bytes] | None:
        """The first entry of run ``r`` with key >= ``target``, parsed in place."""
        pos, end = self._bounds(r)
        data = self._data
        where = self._where
        last = b""
        try:
            while pos < end:
                shared, unshared, vlen = _unpack_entry(data, pos)
                pos += 12
                kend = pos + unshared
                if shared > len(last) or kend + vlen > end:
                    raise Corruption(f"{where}: entry at block offset {pos - 12} is malformed")
                last = last[:shared] + data[pos:kend] if shared else data[pos:kend]
                if last >= target:
                    return last, data[kend : kend + vlen]
                pos = kend + vlen
        except struct.error as e:
            raise Corruption(f"{where}: truncated entry at block offset {pos}") from e
        return None

    def _decode_run(self, r: int) -> Run:
        pos, end = self._bounds(r)
        return self._decode_entries(pos, end, "its run")

    def _decode(self) -> None:
        keys, values = self._decode_entries(0, self._limit, "the block")
        self._values = values
        self._keys = keys

    def _decode_entries(self, pos: int, end: int, span: str) -> Run:
        """The keys and values of the entries from ``pos`` to ``end`` (a restart interval, or
        every entry of the block); an entry reaching past ``end`` (``span``) is Corruption."""
        data = self._data
        where = self._where
        keys: list[bytes] = []
        values: list[bytes] = []
        kappend = keys.append
        vappend = values.append
        last = b""
        unpack = _unpack_entry
        try:
            while pos < end:
                shared, unshared, vlen = unpack(data, pos)
                pos += 12
                kend = pos + unshared
                if shared:
                    if shared > len(last):
                        raise Corruption(f"{where}: entry at block offset {pos - 12} shares too much")
                    last = last[:shared] + data[pos:kend]
                else:
                    last = data[pos:kend]
                vend = kend + vlen
                if vend > end:
                    raise Corruption(f"{where}: entry at block offset {pos - 12} overruns {span}")
                kappend(last)
                vappend(data[kend:vend])
                pos = vend
        except struct.error as e:
            raise Corruption(f"{where}: truncated entry at block offset {pos}") from e
        return keys, values


def decode_block(data: bytes, where: str) -> Block:
    """Check a block payload's framing and wrap it; raises :class:`Corruption` (naming
    ``where``) on damage. Entries are decoded on first use."""
    return Block(data, where)
