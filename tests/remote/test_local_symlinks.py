"""The ``file://`` bucket never follows a symbolic link inside its directory (API.md): a key
whose path meets one is absent for reads (get, head, listing) and refused for writes and
deletes, and nothing outside the bucket is read, written or deleted through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachedaemon.errors import InvalidKey
from cachedaemon.remote.local import LocalObjectStore


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.txt").write_bytes(b"outside secret")
    (d / "victim.txt").write_bytes(b"outside victim")
    (d / "sub").mkdir()
    (d / "sub" / "deep.txt").write_bytes(b"deep secret")
    return d


@pytest.fixture
def store(tmp_path: Path, outside: Path) -> LocalObjectStore:
    root = tmp_path / "bucket"
    s = LocalObjectStore(root)
    os.symlink(outside, root / "evil")                      # a directory link, first segment
    (root / "a").mkdir()
    os.symlink(outside, root / "a" / "evil")                # a directory link, deeper
    os.symlink(outside / "secret.txt", root / "leaf.txt")   # a file link
    os.symlink(outside / "nothing", root / "dangling")      # a link to nothing
    (root / "real").mkdir()
    (root / "real" / "x.txt").write_bytes(b"real object")
    os.symlink(root / "real", root / "alias")               # a link inside the bucket
    return s


LINKED = ["evil/secret.txt", "evil/victim.txt", "evil/sub/deep.txt", "a/evil/secret.txt",
          "leaf.txt", "dangling", "dangling/x", "alias/x.txt", "evil", "a/evil"]


@pytest.mark.parametrize("key", LINKED)
async def test_reads_through_a_link_find_nothing(store: LocalObjectStore, key: str) -> None:
    assert await store.get(key) is None
    assert await store.head(key) is None
    assert await store.get_bytes(key) is None
    assert await store.get(key, byte_range=(0, 3)) is None


async def test_listing_skips_links(store: LocalObjectStore) -> None:
    keys = [o.key async for o in store.list_all()]
    assert keys == ["real/x.txt"]
    for prefix in ("evil", "evil/", "a/", "alias/", "leaf"):
        assert [o.key async for o in store.list_all(prefix)] == [], prefix
    page = await store.list("", start_after="evil/a")
    assert [o.key for o in page.objects] == ["real/x.txt"]


@pytest.mark.parametrize("key", LINKED)
async def test_writes_through_a_link_are_refused(store: LocalObjectStore, outside: Path,
                                                 key: str) -> None:
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.put(key, b"written through a link")
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.put_if_absent(key, b"written through a link")
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.put(key, _chunks(b"streamed through a link"))
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.delete(key)
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.delete_many([key])
    after = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    assert after == before
    assert not (outside / "nothing").exists()
    assert (store_root(store) / "real" / "x.txt").read_bytes() == b"real object"


async def test_deeper_keys_and_new_objects_beside_links_still_work(store: LocalObjectStore
                                                                   ) -> None:
    await store.put("a/fine.txt", b"ok")
    assert await store.get_bytes("a/fine.txt") == b"ok"
    await store.put("real/y.txt", b"y")
    assert [o.key async for o in store.list_all()] == ["a/fine.txt", "real/x.txt", "real/y.txt"]
    await store.delete("a/fine.txt")
    assert await store.head("a/fine.txt") is None
    assert os.path.islink(store_root(store) / "a" / "evil")  # untouched


async def test_object_moved_into_a_directory_form_behind_a_link(store: LocalObjectStore,
                                                                tmp_path: Path) -> None:
    """``d``'s own object lives at ``d/.cachedaemon-obj`` once ``d/e`` exists; a link there is
    not the object either."""
    await store.put("d", b"own object")
    await store.put("d/e", b"child")
    assert await store.get_bytes("d") == b"own object"
    own = store_root(store) / "d" / ".cachedaemon-obj"
    own.unlink()
    os.symlink(tmp_path / "outside" / "secret.txt", own)
    assert await store.get("d") is None
    assert await store.head("d") is None
    assert [o.key async for o in store.list_all("d")] == ["d/e"]
    with pytest.raises(InvalidKey, match="symbolic link"):
        await store.delete("d")
    assert (tmp_path / "outside" / "secret.txt").read_bytes() == b"outside secret"


def store_root(store: LocalObjectStore) -> Path:
    return Path(store.root)


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data
