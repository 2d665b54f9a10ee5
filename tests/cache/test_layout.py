"""The cache directory's layout: the previous layout's metastore SST copies (cache keys
``lsm/meta/domain/…``, user keys now) are dropped when a cache that is not known to be of this
layout starts; a cache of this layout (it has an index, or a version-2 access-time tracker from
before the index) keeps user entries there."""

from __future__ import annotations

import struct
from pathlib import Path

from cachedaemon.cache import CacheService
from cachedaemon.cache.index_load import layout_is_current, load_index
from cachedaemon.cache.keys import TRACKER_NAME, key_relpath
from tests.cache.conftest import OpenCache, disk_entries

OLD_SST = "lsm/meta/domain/11111111-1111-4111-8111-111111111111/00000000000000000002-1.sst"


def plant(root: Path, key: str, data: bytes) -> None:
    path = root / key_relpath(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def old_tracker(version: int) -> bytes:
    """The header of the access-time tracker of before the index (the body is not read)."""
    return b"CDTRACK\n" + struct.pack("<IIQ", version, 0, 0)


async def test_previous_layout_sst_copies_are_dropped(tmp_path: Path, open_cache: OpenCache
                                                      ) -> None:
    root = tmp_path / "cache"
    plant(root, OLD_SST, b"an old SST copy")
    plant(root, "lsm/other", b"a user object")
    plant(root, "photos/cat.jpg", b"meow")
    (root / TRACKER_NAME).write_bytes(old_tracker(1))  # the previous layout
    assert not layout_is_current(root)
    svc: CacheService = await open_cache(root)
    assert await svc.get(OLD_SST) is None
    assert not (root / "lsm%d" / "meta%d").exists()
    assert (await svc.get("lsm/other")) is not None
    assert (await svc.get("photos/cat.jpg")) is not None
    stats = await svc.stats()
    assert (stats.objects, stats.bytes_used) == (2, 13 + 4)
    assert sorted(disk_entries(root)) == sorted(key_relpath(k) for k in ("lsm/other",
                                                                          "photos/cat.jpg"))
    await svc.save_tracker()
    assert layout_is_current(root) and load_index(root) is not None


async def test_a_cache_of_this_layout_keeps_user_entries_there(tmp_path: Path,
                                                               open_cache: OpenCache) -> None:
    root = tmp_path / "cache"
    svc = await open_cache(root)
    guard = await svc.reserve_space(4, 1)
    await svc.put(OLD_SST, b"user", guard)  # an ordinary user key now
    await svc.stop()
    assert layout_is_current(root)
    again = await open_cache(root)
    entry = await again.get(OLD_SST)
    assert entry is not None and entry.path.read_bytes() == b"user"


async def test_the_tracker_of_this_layout_is_replaced_by_the_index_keeping_entries(
    tmp_path: Path, open_cache: OpenCache,
) -> None:
    root = tmp_path / "cache"
    plant(root, OLD_SST, b"user")
    (root / TRACKER_NAME).write_bytes(old_tracker(2))  # this layout, before the index
    assert layout_is_current(root)
    svc = await open_cache(root)
    assert svc.coordinator.metrics.recovered_from_index == 0  # it walked, once
    entry = await svc.get(OLD_SST)
    assert entry is not None and entry.path.read_bytes() == b"user"
    await svc.stop()
    loaded = load_index(root)
    assert loaded is not None and list(loaded.entries) == [key_relpath(OLD_SST)]
