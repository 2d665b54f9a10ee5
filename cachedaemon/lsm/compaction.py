"""Leveled compaction: choosing inputs and merging them into the next level (LevelDB's
``VersionSet::PickCompaction``, ``Compaction`` and ``DBImpl::DoCompactionWork``).

* **Seek compaction**: when no level scores >= 1, a file that lookups keep consulting in vain
  (``VersionSet.charge_seek``) is compacted into the next level.
* **Scoring** (computed per :class:`~cachedaemon.lsm.version_set.Version`): L0 scores its file
  count over ``l0_compaction_trigger``; level ``n >= 1`` its bytes over
  ``Options.max_bytes_for_level(n)``. The best level with a score >= 1 is compacted.
* **Inputs**: the first file of the level after the level's compaction pointer (wrapping
  around), for L0 grown to every overlapping L0 file; then the overlapping files of the next
  level, boundary files that share a user key, and — if that does not pull in more next-level
  files and stays under ``expanded_compaction_factor`` files' worth of bytes — a grown input
  set. Grandparents (level + 2) bound how much one output may overlap.
* **Trivial move**: one input, nothing overlapping below, small grandparent overlap: the file
  moves down by a manifest edit alone.
* **Merge**: inputs are merged; a version is dropped if a newer version of the same user key
  at or below the smallest live snapshot exists, and a tombstone at or below that snapshot is
  dropped when no deeper level may hold the key. Outputs are cut at ``max_file_bytes`` or when
  the grandparent overlap grows too big, always between user keys.

Run by the database's compactor task on its shard, one compaction at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cachedaemon.core.preempt import TaskQuota
from cachedaemon.lsm.dbformat import KIND_DELETE
from cachedaemon.lsm.iterator import InternalIterator
from cachedaemon.lsm.level_iterator import LevelIterator
from cachedaemon.lsm.merger import MergingIterator
from cachedaemon.lsm.options import NUM_LEVELS, Options
from cachedaemon.lsm.table_builder import _DRAIN_BYTES, SstBuilder
from cachedaemon.lsm.table_cache import TableCache
from cachedaemon.lsm.version_edit import FileMeta, VersionEdit
from cachedaemon.lsm.version_set import Version, total_bytes

#: How often (in entries) the merge loop looks at its task quota.
_CHECK_EVERY = 16
_M64 = (1 << 64) - 1
_from_bytes = int.from_bytes
_DELETE_BYTE = 0xFF - KIND_DELETE  # last trailer byte of a tombstone


def key_range(files: list[FileMeta]) -> tuple[bytes, bytes]:
    """``(smallest, largest)`` user parts of ``files`` (non-empty)."""
    return min(f.smallest[:-8] for f in files), max(f.largest[:-8] for f in files)


def add_boundary_inputs(level_files: list[FileMeta], inputs: list[FileMeta]) -> None:
    """Add files of the level whose smallest user key equals the inputs' largest user key
    (a user key's versions split across files must be compacted together)."""
    if not inputs:
        return
    largest = max(inputs, key=lambda f: f.largest).largest
    chosen = {f.handle for f in inputs}
    while True:
        cands = [
            f
            for f in level_files
            if f.handle not in chosen
            and f.smallest > largest
            and f.smallest[:-8] == largest[:-8]
        ]
        if not cands:
            return
        b = min(cands, key=lambda f: f.smallest)
        inputs.append(b)
        chosen.add(b.handle)
        largest = b.largest


@dataclass
class Compaction:
    level: int
    version: Version
    options: Options
    inputs: list[list[FileMeta]] = field(default_factory=lambda: [[], []])
    grandparents: list[FileMeta] = field(default_factory=list)
    edit: VersionEdit = field(default_factory=VersionEdit)
    manual: bool = False
    _gp_index: int = 0
    _seen_key: bool = False
    _overlapped: int = 0

    @property
    def output_level(self) -> int:
        return self.level + 1

    def is_trivial_move(self) -> bool:
        return (
            not self.manual
            and len(self.inputs[0]) == 1
            and not self.inputs[1]
            and total_bytes(self.grandparents) <= self.options.max_grandparent_overlap_bytes()
        )

    def add_input_deletions(self, edit: VersionEdit) -> None:
        for which in (0, 1):
            for f in self.inputs[which]:
                edit.delete_file(self.level + which, f.handle)

    def is_base_level_for_key(self, uprefix: bytes) -> bool:
        for level in range(self.level + 2, NUM_LEVELS):
            if self.version.overlap_in_level(level, uprefix, uprefix):
                return False
        return True

    def should_stop_before(self, uprefix: bytes) -> bool:
        gps = self.grandparents
        while self._gp_index < len(gps) and uprefix > gps[self._gp_index].largest[:-8]:
            if self._seen_key:
                self._overlapped += gps[self._gp_index].size
            self._gp_index += 1
        self._seen_key = True
        if self._overlapped > self.options.max_grandparent_overlap_bytes():
            self._overlapped = 0
            return True
        return False


def setup_other_inputs(c: Compaction) -> None:
    v, level, opts = c.version, c.level, c.options
    add_boundary_inputs(v.levels[level], c.inputs[0])
    lo, hi = key_range(c.inputs[0])
    c.inputs[1] = v.overlapping_inputs(level + 1, lo, hi)
    add_boundary_inputs(v.levels[level + 1], c.inputs[1])
    all_lo, all_hi = key_range(c.inputs[0] + c.inputs[1])
    if c.inputs[1]:
        expanded0 = v.overlapping_inputs(level, all_lo, all_hi)
        add_boundary_inputs(v.levels[level], expanded0)
        size1 = total_bytes(c.inputs[1])
        if (
            len(expanded0) > len(c.inputs[0])
            and total_bytes(expanded0) + size1 < opts.expanded_compaction_bytes()
        ):
            new_lo, new_hi = key_range(expanded0)
            expanded1 = v.overlapping_inputs(level + 1, new_lo, new_hi)
            add_boundary_inputs(v.levels[level + 1], expanded1)
            if len(expanded1) == len(c.inputs[1]):
                c.inputs = [expanded0, expanded1]
                all_lo, all_hi = key_range(expanded0 + expanded1)
    if level + 2 < NUM_LEVELS:
        c.grandparents = v.overlapping_inputs(level + 2, all_lo, all_hi)
    c.edit.set_compact_pointer(level, max(f.largest for f in c.inputs[0]))


def pick_compaction(
    version: Version,
    pointers: list[bytes | None],
    options: Options,
    seek_file: tuple[int, FileMeta] | None = None,
) -> Compaction | None:
    """The compaction to run next: size-triggered if a level scores >= 1, else the
    seek-triggered one for ``seek_file``; ``None`` if neither is due."""
    if version.compaction_score < 1:
        if seek_file is None or not version.contains(seek_file[0], seek_file[1].handle):
            return None
        c = Compaction(seek_file[0], version, options)
        c.inputs[0] = [seek_file[1]]
        if c.level == 0:
            lo, hi = key_range(c.inputs[0])
            c.inputs[0] = version.overlapping_inputs(0, lo, hi)
        setup_other_inputs(c)
        return c
    level = version.compaction_level
    files = version.levels[level]
    if not files:
        return None
    c = Compaction(level, version, options)
    pointer = pointers[level]
    # L0 is kept newest first; like LevelDB (file-number order) start from the oldest.
    ordered = files[::-1] if level == 0 else files
    first = next((f for f in ordered if pointer is None or f.largest > pointer), ordered[0])
    c.inputs[0] = [first]
    if level == 0:
        lo, hi = key_range(c.inputs[0])
        c.inputs[0] = version.overlapping_inputs(0, lo, hi)
    setup_other_inputs(c)
    return c


def compact_range_compaction(
    version: Version, level: int, begin: bytes | None, end: bytes | None, options: Options
) -> Compaction | None:
    """A manual compaction of ``level`` over user parts ``[begin, end]`` (``None`` unbounded),
    or ``None`` if nothing there overlaps. Above L0 the inputs are capped near one file size
    so a huge range runs as several compactions."""
    inputs = version.overlapping_inputs(level, begin, end)
    if not inputs:
        return None
    if level > 0:
        total = 0
        for i, f in enumerate(inputs):
            total += f.size
            if total >= options.max_file_bytes:
                inputs = inputs[: i + 1]
                break
    c = Compaction(level, version, options, manual=True)
    c.inputs[0] = inputs
    setup_other_inputs(c)
    return c


def input_iterator(c: Compaction, cache: TableCache) -> InternalIterator:
    children: list[InternalIterator] = []
    if c.level == 0:
        children.extend(LevelIterator([f], cache) for f in c.inputs[0])
    elif c.inputs[0]:
        children.append(LevelIterator(c.inputs[0], cache))
    if c.inputs[1]:
        children.append(LevelIterator(c.inputs[1], cache))
    return MergingIterator(children)


#: Opens a new output: returns a builder writing to a freshly allocated handle.
NewOutput = Callable[[], Awaitable[SstBuilder]]


async def do_compaction_work(
    c: Compaction,
    cache: TableCache,
    smallest_snapshot: int,
    new_output: NewOutput,
    check: Callable[[], None],
) -> list[FileMeta]:
    """Merge ``c``'s inputs into new files; returns their metadata (not yet installed).

    ``check`` is called between steps and may raise to abandon the work (shutdown). On error
    the output being built is aborted; finished outputs stay behind as unreferenced files for
    the file GC.
    """
    opts = c.options
    outputs: list[FileMeta] = []
    builder: SstBuilder | None = None
    it = input_iterator(c, cache)
    quota = TaskQuota()  # the shard serves requests meanwhile: hold its loop for no longer
    try:
        await it.seek_to_first()
        current_user: bytes | None = None
        last_seq_for_key = 0
        has_last = False
        n = 0
        max_bytes = opts.max_file_bytes
        has_gps = bool(c.grandparents)
        # The loop runs once per input entry: keep it flat (no helper calls where a
        # comparison will do; seqno and kind come straight off the trailer bytes).
        while it.valid():
            ikey = it.key()
            up = ikey[:-8]
            if up != current_user:
                if builder is not None and (
                    builder._offset + builder._data._size >= max_bytes
                    or (has_gps and c.should_stop_before(up))
                ):
                    outputs.append(await _finish(builder))
                    builder = None
                    check()
                elif builder is None and has_gps:
                    c.should_stop_before(up)
                current_user = up
                has_last = False
            seq = (_M64 ^ _from_bytes(ikey[-8:], "big")) >> 8
            if has_last and last_seq_for_key <= smallest_snapshot:
                pass  # shadowed by a newer version every reader sees: drop
            elif (
                ikey[-1] == _DELETE_BYTE
                and seq <= smallest_snapshot
                and c.is_base_level_for_key(up)
            ):
                pass  # tombstone with nothing older left below: drop
            else:
                if builder is None:
                    builder = await new_output()
                builder.add(ikey, it.value())
                if builder._pending_bytes >= _DRAIN_BYTES:
                    await builder.drain()
            last_seq_for_key = seq
            has_last = True
            n += 1
            if not n % _CHECK_EVERY and quota.need_preempt():
                check()
                await quota.yield_now()
            await it.next()
        if builder is not None:
            outputs.append(await _finish(builder))
            builder = None
    except BaseException:
        if builder is not None:
            await asyncio.shield(builder.abort())
        raise
    finally:
        await it.close()
    return outputs


async def _finish(builder: SstBuilder) -> FileMeta:
    size = await builder.finish()
    assert builder.smallest is not None
    return FileMeta(
        builder.handle,
        size,
        builder.smallest,
        builder.largest,
        builder.oldest_seqno,
        builder.newest_seqno,
    )
