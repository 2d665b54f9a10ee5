"""Key validation on every entry point, the on-disk encoding, and symlink escapes."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.cache import CacheService, CacheStatus
from cachedaemon.cache.keys import (
    INTERNAL_NAMES,
    MAX_NAME_BYTES,
    key_relpath,
    relpath_key,
    staging_name,
    validate_key,
)
from cachedaemon.clock import deadline_after
from cachedaemon.errors import InvalidKey
from tests.cache.conftest import disk_entries

BAD_KEYS: list[Any] = [
    "",
    "/",
    "/abs",
    "/etc/passwd",
    "trailing/",
    "a//b",
    ".",
    "..",
    "./a",
    "a/.",
    "a/./b",
    "../escape",
    "a/../../escape",
    "a/..",
    "nul\x00byte",
    "x.part",
    "dir/y.part",
    "a" * 1025,
    "s/" + "b" * 256,
    "é" * 513,  # 1026 bytes
    "\udcff",  # not encodable as UTF-8
    b"bytes",
    None,
    42,
]

GOOD_KEYS = [
    "a",
    "a/b",
    "a/b/c",
    "%tracker",
    "%tracker.tmp",
    "a%d",
    "a%d/b",
    "100%",
    "%25",
    "x.part/y",
    "y.partx",
    ".hidden",
    "...",
    "a b/c\td",
    "ünïcödé/鍵",
    "a" * 255,
    ("b" * 255 + "/") * 3 + "c" * 255,
    "%" * 255,
    "/".join(["k" * 204] * 5),  # 1024 bytes
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_validator_rejects(key: Any) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize("key", GOOD_KEYS, ids=lambda k: repr(k)[:40])
def test_validator_accepts(key: str) -> None:
    assert validate_key(key) == key


def _entry_points(svc: CacheService) -> dict[str, Callable[[Any], Awaitable[Any]]]:
    async def get(k: Any) -> Any:
        return await svc.get(k)

    async def get_range(k: Any) -> Any:
        return await svc.get_range(k, 0, 1)

    async def is_cached(k: Any) -> Any:
        return svc.is_cached(k)

    async def put(k: Any) -> Any:
        guard = await svc.reserve_space(1, 1, deadline_after(1.0))
        try:
            return await svc.put(k, b"x", guard)
        finally:
            guard.close()

    async def invalidate(k: Any) -> Any:
        return await svc.invalidate(k)

    async def staging(k: Any) -> Any:
        f = await svc.create_staging_file(k, deadline_after(1.0))
        await f.close()

    return {"get": get, "get_range": get_range, "is_cached": is_cached, "put": put,
            "invalidate": invalidate, "create_staging_file": staging}


async def test_every_entry_point_rejects_every_bad_key(cache: CacheService) -> None:
    for name, call in _entry_points(cache).items():
        for key in BAD_KEYS:
            with pytest.raises(InvalidKey):
                await call(key)
                pytest.fail(f"{name} accepted {key!r}")
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (0, 0, 0, 0)
    assert [p for p in cache.root.iterdir() if p.name not in INTERNAL_NAMES] == []


async def test_good_keys_round_trip_and_stay_inside(cache: CacheService) -> None:
    root = cache.root.resolve()
    for i, key in enumerate(GOOD_KEYS):
        guard = await cache.reserve_space(8, 1, deadline_after(1.0))
        await cache.put(key, str(i).encode(), guard)
    for i, key in enumerate(GOOD_KEYS):
        entry = await cache.get(key)
        assert entry is not None, key
        assert entry.path.read_bytes() == str(i).encode()
        assert root in entry.path.resolve().parents
    assert len(disk_entries(cache.root)) == len(GOOD_KEYS)
    await cache.save_tracker()
    assert not (cache.root / "%tracker.tmp").exists()
    # The index's files are not entries and are untouched by keys named like them.
    assert (await cache.get("%tracker")) is not None
    assert (cache.root / "%tracker").read_bytes()[:8] == b"CDINDEX\n"
    assert (cache.root / "%tracker.journal").read_bytes()[:8] == b"CDJOURN\n"


segment = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
    min_size=1, max_size=80,
).filter(lambda s: s not in (".", ".."))
keys = st.lists(segment, min_size=1, max_size=4).map("/".join).filter(
    lambda k: not k.endswith(".part") and len(k.encode()) <= 1024
    and all(len(s.encode()) <= 255 for s in k.split("/"))  # 64 4-byte characters are 256
)


@settings(max_examples=300, deadline=None)
@given(st.lists(keys, min_size=2, max_size=6, unique=True))
def test_encoding_is_injective_and_files_never_collide_with_dirs(ks: list[str]) -> None:
    paths = [key_relpath(validate_key(k)) for k in ks]
    assert len(set(paths)) == len(paths)
    files = set(paths)
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    assert not files & dirs
    for k, p in zip(ks, paths, strict=True):
        assert all(len(n.encode()) <= MAX_NAME_BYTES + 2 for n in p.split("/"))
        assert not p.endswith(".part") and p not in INTERNAL_NAMES
        if "%h" not in p:
            assert relpath_key(p) == k
        name = staging_name(p, 3, 12345)
        assert name.endswith("_3_12345.part") and len(name.encode()) < 255


def test_long_segments_are_hashed_and_distinct() -> None:
    a = key_relpath("%" * 255)
    b = key_relpath("%" * 254 + "x")
    assert a != b and "%h" in a and "%h" in b
    assert len(a.encode()) <= MAX_NAME_BYTES
    assert relpath_key(a) is None


async def test_symlinked_entry_is_not_followed(cache: CacheService, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"top secret")
    os.symlink(outside, cache.root / "evil")
    assert await cache.get("evil") is None
    assert await cache.get_range("evil", 0, 3) is None
    assert cache.is_cached("evil") is CacheStatus.not_available
    await cache.invalidate("evil")
    assert outside.read_bytes() == b"top secret"
    guard = await cache.reserve_space(3, 1, deadline_after(1.0))
    await cache.put("evil", b"new", guard)  # replaces the link itself, not its target
    assert outside.read_bytes() == b"top secret"
    assert not (cache.root / "evil").is_symlink()
    assert (cache.root / "evil").read_bytes() == b"new"


async def test_symlinked_directory_is_not_followed(cache: CacheService, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"outside data")
    os.symlink(outside, cache.root / key_relpath("d/x").split("/")[0])
    assert await cache.get("d/x") is None
    assert cache.is_cached("d/x") is CacheStatus.not_available
    with pytest.raises(InvalidKey):
        await cache.invalidate("d/x")
    with pytest.raises(InvalidKey):
        await cache.create_staging_file("d/y", deadline_after(1.0))
    guard = await cache.reserve_space(1, 1, deadline_after(1.0))
    with pytest.raises(InvalidKey):
        await cache.put("d/z", b"z", guard)
    assert sorted(p.name for p in outside.iterdir()) == ["x"]
    assert (outside / "x").read_bytes() == b"outside data"
    # Trims and walks neither count nor delete through the link.
    await cache.trim()
    s = await cache.stats()
    assert (s.bytes_used, s.objects, s.bytes_reserved, s.objects_reserved) == (0, 0, 0, 0)
    assert (outside / "x").exists()


async def test_trim_does_not_delete_through_a_directory_swapped_for_a_link(
    cache: CacheService, tmp_path: Path
) -> None:
    guard = await cache.reserve_space(4, 1, deadline_after(1.0))
    await cache.put("d/x", b"mine", guard)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"theirs")
    d = cache.root / key_relpath("d/x").split("/")[0]
    (d / "x").unlink()
    d.rmdir()
    os.symlink(outside, d)  # the tracker still lists d%d/x
    coord = cache.coordinator
    async with await coord._trim_sem.get_units(1):
        await coord._trim_once(manual=False, fraction=0.0, all_dims=True)  # LRU phase only
    assert (outside / "x").read_bytes() == b"theirs"


reserved_keys = st.tuples(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
            max_size=250),
    st.lists(segment, max_size=3),
).map(lambda t: "/".join([".cachedaemon" + t[0], *t[1]])).filter(
    lambda k: not k.endswith(".part") and len(k.encode()) <= 1024
    and all(len(s.encode()) <= 255 for s in k.split("/")))


@settings(max_examples=300, deadline=None)
@given(keys, reserved_keys)
def test_no_user_key_shares_a_file_or_directory_with_a_reserved_key(user: str, reserved: str
                                                                    ) -> None:
    """The daemon's own entries (reserved keys, ``.cachedaemon…``) all live under names that
    begin with ``.cachedaemon`` in the cache root, and no other key's path does: a user key
    can never reach, replace or shadow one of them, whatever its escapes or length."""
    from cachedaemon.namespace import is_reserved

    validate_key(reserved)
    r = key_relpath(reserved)
    assert r.split("/")[0].startswith(".cachedaemon")
    if not is_reserved(user):
        u = key_relpath(validate_key(user))
        assert not u.split("/")[0].startswith(".cachedaemon")
        assert u != r and not r.startswith(u + "/") and not u.startswith(r + "/")


async def test_a_parent_removed_by_a_trim_during_mkdir_is_made_again(
    cache: CacheService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in the suite (a tiny cache, concurrent fills): pathlib's ``mkdir(exist_ok=True)``
    found the directory there (EEXIST), a trim removed it as empty, and its ``is_dir()`` check
    then raised FileExistsError; the key was refused as "blocked by a non-directory". A parent
    that is simply gone is made again."""
    real_mkdir = Path.mkdir
    raced: list[Path] = []

    def mkdir(self: Path, mode: int = 0o777, parents: bool = False,
              exist_ok: bool = False) -> None:
        if not raced and self.name == key_relpath("d/x").split("/")[0]:
            raced.append(self)  # the directory existed, then vanished before the is_dir check
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, mode, parents, exist_ok)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    f = await cache.create_staging_file("d/x", deadline_after(1.0))
    await f.append(b"data")
    await f.commit()
    entry = await cache.get("d/x")
    assert raced and entry is not None and entry.path.read_bytes() == b"data"


async def test_a_file_in_place_of_a_parent_still_blocks_the_key(cache: CacheService) -> None:
    (cache.root / key_relpath("d/x").split("/")[0]).write_bytes(b"not a directory")
    with pytest.raises(InvalidKey, match="blocked by a non-directory"):
        await cache.create_staging_file("d/y", deadline_after(1.0))
