"""The cache directory's layout: the previous layout's metastore SST copies (cache keys
``lsm/meta/domain/…``, user keys now) are dropped when a cache that is not known to be of this
layout starts; a cache of this layout keeps user entries there."""

from __future__ import annotations

from pathlib import Path

from cachedaemon.cache import CacheService
from cachedaemon.cache.keys import TRACKER_NAME, key_relpath
from cachedaemon.cache.tracker import VERSION, encode, stored_version
from tests.cache.conftest import OpenCache, disk_entries

OLD_SST = "lsm/meta/domain/11111111-1111-4111-8111-111111111111/00000000000000000002-1.sst"


def plant(root: Path, key: str, data: bytes) -> None:
    path = root / key_relpath(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def test_previous_layout_sst_copies_are_dropped(tmp_path: Path, open_cache: OpenCache
                                                      ) -> None:
    root = tmp_path / "cache"
    plant(root, OLD_SST, b"an old SST copy")
    plant(root, "lsm/other", b"a user object")
    plant(root, "photos/cat.jpg", b"meow")
    # A version-1 tracker (the previous layout) listing them all.
    items = [(key_relpath(k), 1.0, n) for k, n in ((OLD_SST, 15), ("lsm/other", 13),
                                                    ("photos/cat.jpg", 4))]
    old = bytearray(encode(items))
    old[8:12] = (1).to_bytes(4, "little")
    (root / TRACKER_NAME).write_bytes(bytes(old))
    assert stored_version(root / TRACKER_NAME) == 1
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
    assert stored_version(root / TRACKER_NAME) == VERSION == 2


async def test_a_cache_of_this_layout_keeps_user_entries_there(tmp_path: Path,
                                                               open_cache: OpenCache) -> None:
    root = tmp_path / "cache"
    svc = await open_cache(root)
    guard = await svc.reserve_space(4, 1)
    await svc.put(OLD_SST, b"user", guard)  # an ordinary user key now
    await svc.stop()
    assert stored_version(root / TRACKER_NAME) == 2
    again = await open_cache(root)
    entry = await again.get(OLD_SST)
    assert entry is not None and entry.path.read_bytes() == b"user"
