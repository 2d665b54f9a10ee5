"""FileMeta and VersionEdit: what an SST is, and a change to the set of live SSTs
(LevelDB's ``FileMetaData`` and ``VersionEdit``).

A flush adds one file; a compaction deletes its inputs and adds its outputs; a trivial move
deletes a file from one level and adds it to the next. Edits are built by the flush and the
compaction on the database's shard and applied by
:meth:`~cachedaemon.lsm.version_set.VersionSet.log_and_apply`, which writes the whole resulting
state as a new manifest (there is no incremental log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachedaemon.lsm.io.persistence import FileHandle


@dataclass(frozen=True, slots=True)
class FileMeta:
    """An immutable SST description. ``smallest``/``largest`` are internal keys."""

    handle: FileHandle
    size: int
    smallest: bytes
    largest: bytes
    oldest_seqno: int
    newest_seqno: int

    @property
    def smallest_user(self) -> bytes:
        """Escaped user key + terminator of ``smallest`` (orders like user keys)."""
        return self.smallest[:-8]

    @property
    def largest_user(self) -> bytes:
        return self.largest[:-8]


@dataclass
class VersionEdit:
    deleted: set[tuple[int, FileHandle]] = field(default_factory=set)
    added: list[tuple[int, FileMeta]] = field(default_factory=list)
    compact_pointers: dict[int, bytes] = field(default_factory=dict)
    #: Raise the persisted seqno to at least this (a flush sets it).
    last_seqno: int | None = None

    def add_file(self, level: int, meta: FileMeta) -> None:
        self.added.append((level, meta))

    def delete_file(self, level: int, handle: FileHandle) -> None:
        self.deleted.add((level, handle))

    def set_compact_pointer(self, level: int, ikey: bytes) -> None:
        self.compact_pointers[level] = ikey
