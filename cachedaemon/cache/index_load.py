"""Reading the cache index at start: the snapshot, then the journal replayed on top of it.

Called by the coordinator (shard 0) in one thread job before the cache serves, and by
``cachedaemon fsck``. Blocking, no state. The work is bounded by the index's size, never by a
walk of the cache directory: the snapshot decodes at C speed (a NUL-joined blob of paths and
an array of sizes per 65,536 entries, fed to ``dict.update``), and the journal, which
compaction keeps no larger than the snapshot, is replayed batch by batch.

What the reader decides (see :mod:`cachedaemon.cache.index_format` for the bytes):

* no snapshot file: :func:`load_index` returns ``None`` (a new cache, or one from before the
  index: the caller walks);
* a snapshot that is damaged in any way (header, checksum, a record that does not decode, no
  END record or counts that disagree with it), or one in an older format, a journal whose
  header is damaged or whose generation is *newer* than the snapshot's, or a journal damaged
  before its end: :class:`IndexUnusable` with the reason (the caller warns and walks);
* a journal whose generation is *older* than the snapshot's: a compaction was interrupted
  between its two renames; the snapshot already holds everything, the journal is ignored;
* damage at the very end of the journal (a record cut short, or zeros, or a bad checksum on
  the last record): an append interrupted by a crash; the records before it are used and the
  journal is continued from there (the writer cuts the tail off);
* no journal: the snapshot alone (a crash right after the first snapshot's rename).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from cachedaemon.cache import index_format as fmt
from cachedaemon.cache.keys import JOURNAL_NAME, TRACKER_NAME
from cachedaemon.errors import Corruption

#: The access-time tracker the index replaced wrote ``%tracker`` with this magic, then a u32
#: version: 2 from caches of the current layout (the metastore's SST copies under
#: ``.cachedaemon/lsm/``), 1 from those of the layout before.
LEGACY_TRACKER_MAGIC = b"CDTRACK\n"
LEGACY_CURRENT_LAYOUT_VERSION = 2


class IndexUnusable(Exception):
    """The index files cannot be trusted; ``reason`` says why. ``generation`` is the highest
    generation seen in any readable header (a rebuilt index must use a higher one);
    ``legacy`` is set when the file is the access-time tracker of before the index."""

    def __init__(self, reason: str, generation: int = 0, legacy: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.generation = generation
        self.legacy = legacy


def layout_is_current(root: Path) -> bool:
    """Whether the cache at ``root`` is known to be of the current layout: it has an index
    (only caches of this layout write one), or a version-2 access-time tracker. Anything else
    (a version-1 tracker, none, or an unreadable one) may hold the previous layout's SST
    copies (``walker.drop_legacy_layout``). Blocking."""
    try:
        with open(root / TRACKER_NAME, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head[:8] == fmt.SNAPSHOT_MAGIC:
        return True
    return (head[:8] == LEGACY_TRACKER_MAGIC and len(head) == 12
            and int.from_bytes(head[8:12], "little") == LEGACY_CURRENT_LAYOUT_VERSION)


@dataclass
class LoadedIndex:
    entries: dict[str, int]
    total_bytes: int
    #: Staging files begun and never finished: leftovers of a crash, to delete.
    staging: set[str]
    #: The journal generation to continue, and the valid length of its file (``None``: there
    #: is no journal of that generation; the writer makes one).
    generation: int
    journal_length: int | None
    snapshot_bytes: int
    journal_records: int = 0
    torn_tail: str | None = None
    stale_journal: bool = False
    seconds: float = 0.0
    snapshot_entries: int = 0
    notes: list[str] = field(default_factory=list)


def read_snapshot(data: bytes) -> tuple[int, dict[str, int], set[str]]:
    """(generation, entries in LRU order, staging) of a snapshot file's bytes, or
    :class:`Corruption`."""
    if data[:8] == LEGACY_TRACKER_MAGIC:
        raise Corruption("it is an access-time tracker from before the index")
    generation = fmt.decode_header(data, fmt.SNAPSHOT_MAGIC, "the index snapshot")
    records, _, damage = fmt.iter_records(data)
    if damage is not None:
        raise Corruption(f"the index snapshot is damaged at byte {damage.offset}: "
                         f"{damage.reason}")
    entries: dict[str, int] = {}
    staging: set[str] = set()
    ended = False
    for kind, body in records:
        if ended:
            raise Corruption("the index snapshot has records after its END")
        if kind == fmt.ENTRIES:
            paths, sizes = fmt.decode_batch(kind, body)
            assert sizes is not None
            entries.update(zip(paths, sizes, strict=True))
        elif kind == fmt.STAGING:
            staging.update(fmt.decode_batch(kind, body)[0])
        elif kind == fmt.END:
            if len(body) != fmt.END_BODY.size:
                raise Corruption("the index snapshot's END record has the wrong size")
            count, total, nstaging = fmt.END_BODY.unpack(body)
            if (count, nstaging) != (len(entries), len(staging)):
                raise Corruption(f"the index snapshot holds {len(entries)} entries and "
                                 f"{len(staging)} staging files, its END says {count} and "
                                 f"{nstaging}")
            if total != sum(entries.values()):
                raise Corruption("the index snapshot's byte total does not add up")
            ended = True
        else:
            raise Corruption(f"the index snapshot holds a {fmt.TYPE_NAMES.get(kind, kind)} "
                             f"record")
    if not ended:
        raise Corruption("the index snapshot has no END record (it is cut short)")
    return generation, entries, staging


def replay(records: list[tuple[int, bytes]], entries: dict[str, int], staging: set[str]) -> int:
    """Apply journal records to ``entries`` and ``staging``; return how many there were."""
    for kind, body in records:
        paths, sizes = fmt.decode_batch(kind, body)
        if kind == fmt.COMMIT:
            assert sizes is not None
            for path, size in zip(paths, sizes, strict=True):
                entries.pop(path, 0)
                entries[path] = size
        elif kind == fmt.REMOVE:
            for path in paths:
                entries.pop(path, None)
        elif kind == fmt.TOUCH:
            for path in paths:
                known = entries.pop(path, None)
                if known is not None:
                    entries[path] = known
        elif kind == fmt.BEGIN:
            staging.update(paths)
        elif kind == fmt.FINISH:
            staging.difference_update(paths)
        else:
            raise Corruption(f"the index journal holds a {fmt.TYPE_NAMES.get(kind, kind)} "
                             f"record")
    return len(records)


def journal_generation(root: Path) -> int:
    """The generation in the journal's header, or 0 if it has none that can be read."""
    try:
        with open(root / JOURNAL_NAME, "rb") as f:
            return fmt.decode_header(f.read(fmt.HEADER_SIZE), fmt.JOURNAL_MAGIC, "journal")
    except (OSError, Corruption):
        return 0


def load_index(root: Path) -> LoadedIndex | None:
    """The index of the cache at ``root``; ``None`` if it has no snapshot;
    :class:`IndexUnusable` if it cannot be trusted. Blocking: run in a thread."""
    started = time.monotonic()
    try:
        data = (root / TRACKER_NAME).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IndexUnusable(f"cannot read the index snapshot: {exc}") from exc
    if data[:8] == LEGACY_TRACKER_MAGIC:
        raise IndexUnusable("it is an access-time tracker from before the index", legacy=True)
    try:
        generation, entries, staging = read_snapshot(data)
    except Corruption as exc:
        raise IndexUnusable(str(exc)) from exc
    snapshot_bytes = len(data)
    del data
    loaded = LoadedIndex(entries, 0, staging, generation, None, snapshot_bytes,
                         snapshot_entries=len(entries))
    try:
        journal = (root / JOURNAL_NAME).read_bytes()
    except FileNotFoundError:
        journal = None
    except OSError as exc:
        raise IndexUnusable(f"cannot read the index journal: {exc}", generation) from exc
    if journal is not None:
        try:
            jgen = fmt.decode_header(journal, fmt.JOURNAL_MAGIC, "the index journal")
        except Corruption as exc:
            raise IndexUnusable(str(exc), generation) from exc
        if jgen > generation:
            raise IndexUnusable(f"the index journal (generation {jgen}) is newer than its "
                                f"snapshot (generation {generation})", jgen)
        if jgen < generation:
            loaded.stale_journal = True  # a compaction stopped between its renames
        else:
            records, good, damage = fmt.iter_records(journal)
            if damage is not None and not damage.torn:
                raise IndexUnusable(f"the index journal is damaged at byte {damage.offset} of "
                                    f"{len(journal)}: {damage.reason}", generation)
            try:
                loaded.journal_records = replay(records, entries, staging)
            except Corruption as exc:
                raise IndexUnusable(str(exc), generation) from exc
            if damage is not None:
                loaded.torn_tail = (f"{len(journal) - good} bytes at the end of the journal "
                                    f"({damage.reason})")
            loaded.journal_length = good
    loaded.total_bytes = sum(entries.values())
    loaded.seconds = time.monotonic() - started
    return loaded
