"""Tuning knobs of one LSM database (LevelDB's ``Options``, Redpanda's ``lsm::options``).

Built by whoever opens a :class:`~cachedaemon.lsm.db.Database` (the metastore domain, tests,
the benchmark) and read-only afterwards. Defaults follow Redpanda's numbers; tests shrink the
sizes so flushes and compactions happen with a few kilobytes of data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cachedaemon.clock import SYSTEM_CLOCK, Clock
from cachedaemon.errors import ConfigError

NUM_LEVELS = 7

KiB = 1024
MiB = 1024 * KiB

COMPRESSION_NONE = "none"
COMPRESSION_ZSTD = "zstd"
COMPRESSION_LZ4 = "lz4"
COMPRESSIONS = (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_LZ4)


def _default_compression() -> tuple[str, ...]:
    # L0/L1 are rewritten soon, so they stay cheap to build; deeper levels are long-lived.
    return (COMPRESSION_NONE, COMPRESSION_NONE) + (COMPRESSION_ZSTD,) * (NUM_LEVELS - 2)


@dataclass(frozen=True)
class Options:
    """Database options. Durations end in ``_s``; sizes are bytes."""

    #: Writer epoch (a Raft term in the metastore). Never decreases; names new files.
    epoch: int = 0
    readonly: bool = False
    #: Swap the memtable for a new one (and flush the old one) above this many bytes.
    memtable_bytes: int = 16 * MiB
    #: L0 file counts: start compacting, slow writers down (one sleep), stop writers.
    l0_compaction_trigger: int = 4
    l0_slowdown_writes_trigger: int = 8
    l0_stop_writes_trigger: int = 12
    l0_slowdown_sleep_s: float = 0.1
    #: Uncompressed data block size target and the restart interval inside a block.
    block_size: int = 8 * KiB
    block_restart_interval: int = 16
    #: Bloom filter bits per key (0 disables filters) and bytes of data per filter.
    bloom_bits_per_key: int = 10
    filter_period_bytes: int = 2 * KiB
    #: Compression per level (none / zstd / lz4).
    compression: tuple[str, ...] = field(default_factory=_default_compression)
    zstd_level: int = 3
    #: Target SST size and the byte limit of L1 (L0 shares it); each deeper level is x10.
    max_file_bytes: int = 16 * MiB
    l1_max_bytes: int = 192 * MiB
    level_size_multiplier: int = 10
    #: Grandparent overlap limit and compaction expansion limit, as multiples of max_file_bytes.
    grandparent_overlap_factor: int = 10
    expanded_compaction_factor: int = 25
    #: Deepest level a flushed memtable may be placed at when it overlaps nothing.
    max_mem_compact_level: int = 2
    #: Unreferenced SSTs are deleted only this long after they became unreferenced.
    file_deletion_delay_s: float = 0.0
    block_cache_bytes: int = 10 * MiB
    max_open_files: int = 1000
    #: Verify block checksums on every read (always on for the manifest).
    verify_checksums: bool = True
    clock: Clock = SYSTEM_CLOCK

    def __post_init__(self) -> None:
        def bad(name: str, problem: str) -> ConfigError:
            return ConfigError(f"lsm.{name}", "Options", problem)

        for name in ("memtable_bytes", "block_size", "max_file_bytes", "l1_max_bytes"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be positive")
        if self.block_restart_interval < 1:
            raise bad("block_restart_interval", "must be >= 1")
        if not self.l0_compaction_trigger >= 1:
            raise bad("l0_compaction_trigger", "must be >= 1")
        if self.l0_stop_writes_trigger <= self.l0_slowdown_writes_trigger:
            raise bad("l0_stop_writes_trigger", "must exceed l0_slowdown_writes_trigger")
        if self.epoch < 0:
            raise bad("epoch", "must be >= 0")
        if self.file_deletion_delay_s < 0:
            raise bad("file_deletion_delay_s", "must be >= 0")
        for c in self.compression:
            if c not in COMPRESSIONS:
                raise bad("compression", f"unknown compression {c!r} (one of {COMPRESSIONS})")
        if self.level_size_multiplier < 2:
            raise bad("level_size_multiplier", "must be >= 2")

    def compression_for(self, level: int) -> str:
        if level < len(self.compression):
            return self.compression[level]
        return self.compression[-1] if self.compression else COMPRESSION_NONE

    def max_bytes_for_level(self, level: int) -> float:
        """Byte limit of ``level`` (L0 and L1 share ``l1_max_bytes``)."""
        result = float(self.l1_max_bytes)
        for _ in range(2, level + 1):
            result *= self.level_size_multiplier
        return result

    def max_grandparent_overlap_bytes(self) -> int:
        return self.grandparent_overlap_factor * self.max_file_bytes

    def expanded_compaction_bytes(self) -> int:
        return self.expanded_compaction_factor * self.max_file_bytes
