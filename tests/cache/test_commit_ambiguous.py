"""A cache commit that fails after its file is in place: the entry exists, so it is accounted.

The rule of ``docs/concurrency.md``: a write whose failure may still have landed is *unknown*,
never "did not happen". A commit puts the staged file in place with ``link`` (or ``rename``)
and only then can anything after it fail (here the fail point ``cache.commit.after_link``
raising, as a lost answer would). The entry is then visible on disk; if the commit treated the
failure as "nothing happened" the bytes would be in the cache but not in its counters (the
limits would be exceeded unnoticed, and the tracker would not know the entry to trim it).
"""

from __future__ import annotations

import pytest

from cachedaemon.cache import CacheService
from cachedaemon.clock import deadline_after
from cachedaemon.core import failpoints
from cachedaemon.errors import CacheDaemonError
from tests.cache.conftest import OpenCache, disk_entries, part_files


async def stage(cache: CacheService, key: str, data: bytes) -> None:
    staging = await cache.create_staging_file(key, deadline_after(1.0))
    await staging.append(data)
    failpoints.arm("cache.commit.after_link", "raise@1")
    try:
        with pytest.raises(CacheDaemonError):
            await staging.commit(replace=key.startswith("replace"))
    finally:
        failpoints.disarm()
    assert staging.closed
    await staging.close()  # a no-op on a file that is in place


@pytest.mark.parametrize("key", ["fresh/key", "replace/key"])
async def test_commit_failing_after_the_link_accounts_the_entry(
    open_cache: OpenCache, key: str
) -> None:
    cache = await open_cache()
    if key.startswith("replace"):
        staging = await cache.create_staging_file(key, deadline_after(1.0))
        await staging.append(b"o" * 300)
        await staging.commit(replace=True)
    await stage(cache, key, b"n" * 1000)
    entry = await cache.get(key)
    assert entry is not None and entry.path.read_bytes() == b"n" * 1000
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (1000, 1, 0, 0)
    assert not part_files(cache.root)
    assert sorted(disk_entries(cache.root).values()) == [1000]
    # The counters agree with what a restart recounts from the disk.
    root = cache.root
    await cache.stop()
    again = await open_cache(root)
    s2 = await again.stats()
    assert (s2.bytes_used, s2.objects) == (1000, 1)
    await again.invalidate(key)
    s3 = await again.stats()
    assert (s3.bytes_used, s3.objects) == (0, 0)
