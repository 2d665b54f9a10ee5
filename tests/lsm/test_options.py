from __future__ import annotations

import pytest

from cachedaemon.errors import ConfigError
from cachedaemon.lsm import Options
from cachedaemon.lsm.options import MiB


def test_defaults_follow_redpanda() -> None:
    o = Options()
    assert o.memtable_bytes == 16 * MiB and o.max_file_bytes == 16 * MiB
    assert (o.l0_compaction_trigger, o.l0_slowdown_writes_trigger, o.l0_stop_writes_trigger) == (4, 8, 12)
    assert o.max_bytes_for_level(0) == o.max_bytes_for_level(1) == 192 * MiB
    assert o.max_bytes_for_level(3) == 19200 * MiB
    assert o.max_grandparent_overlap_bytes() == 160 * MiB
    assert o.expanded_compaction_bytes() == 400 * MiB
    assert o.block_cache_bytes == 10 * MiB and o.max_open_files == 1000
    assert o.compression_for(0) == "none" and o.compression_for(6) == "zstd"
    assert o.compression_for(99) == "zstd"


@pytest.mark.parametrize(
    "kw",
    [
        {"memtable_bytes": 0},
        {"l0_slowdown_writes_trigger": 12, "l0_stop_writes_trigger": 12},
        {"compression": ("snappy",)},
        {"epoch": -1},
        {"block_restart_interval": 0},
    ],
)
def test_bad_options_are_config_errors(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"lsm\."):
        Options(**kw)  # type: ignore[arg-type]
