"""LocalObjectStore specifics: on-disk layout, containment, cross-thread conditional puts."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cachedaemon.errors import InvalidKey, PreconditionFailed
from cachedaemon.remote.local import META_DIR, OBJECT_IN_DIR, TMP_DIR, LocalObjectStore
from tests.remote.test_contract import BodyFailed, failing_body, payload

MiB = 1024 * 1024


def regular_files(root: Path) -> dict[str, bytes]:
    """Every regular file under root outside our reserved dirs, by relative path."""
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (TMP_DIR, META_DIR)]
        for name in filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


async def test_objects_are_plain_files_at_their_key(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    await store.put("x/y/z.bin", b"zzz")
    await store.put("top", b"t")
    assert (tmp_path / "bucket" / "x" / "y" / "z.bin").read_bytes() == b"zzz"
    assert (tmp_path / "bucket" / "top").read_bytes() == b"t"
    assert store.url == f"file://{tmp_path / 'bucket'}"


async def test_a_and_a_slash_b_are_both_plain_files(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    await store.put("a", b"A")
    await store.put("a/b", b"AB")  # converts the file "a" into a directory holding it
    await store.put("c/d", b"CD")
    await store.put("c", b"C")  # "c" is already a directory
    files = regular_files(root)
    assert sorted(files.values()) == [b"A", b"AB", b"C", b"CD"]
    assert files[f"a/{OBJECT_IN_DIR}"] == b"A"
    assert files["a/b"] == b"AB"
    assert await store.get_bytes("a") == b"A"
    assert await store.get_bytes("c") == b"C"
    # Deleting the child keeps the parent object; deleting both leaves no empty dirs.
    await store.delete("a/b")
    assert await store.get_bytes("a") == b"A"
    await store.delete("a")
    await store.delete("c")
    await store.delete("c/d")
    assert sorted(p.name for p in root.iterdir()) == sorted([TMP_DIR, META_DIR])


async def test_reserved_names_are_escaped(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    await store.put(f"{TMP_DIR}/x", b"1")
    await store.put(f"d/{OBJECT_IN_DIR}", b"2")
    await store.put("d", b"3")
    assert await store.get_bytes(f"{TMP_DIR}/x") == b"1"
    assert await store.get_bytes(f"d/{OBJECT_IN_DIR}") == b"2"
    assert await store.get_bytes("d") == b"3"
    assert [o.key for o in (await store.list()).objects] == sorted(
        [f"{TMP_DIR}/x", "d", f"d/{OBJECT_IN_DIR}"]
    )
    assert sorted(regular_files(root).values()) == [b"1", b"2", b"3"]


@pytest.mark.parametrize("key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a\x00b"])
async def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
    assert not (tmp_path / "escape").exists()
    assert regular_files(root) == {}


async def test_too_long_segment_is_invalid_key(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    with pytest.raises(InvalidKey):
        await store.put("x" * 256, b"x")
    # 255 bytes is a valid segment, but escaping a reserved name can push it over the limit.
    await store.put("y" * 255, b"y")
    assert await store.get_bytes("y" * 255) == b"y"
    with pytest.raises(InvalidKey):
        await store.put(".cachedaemon-" + "z" * 240, b"z")


async def test_etag_recomputed_when_file_changed_by_hand(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    info = await store.put("k", b"before")
    assert info.etag == hashlib.md5(b"before").hexdigest()
    (root / "k").write_bytes(b"after, longer")
    head = await store.head("k")
    assert head is not None
    assert head.etag == hashlib.md5(b"after, longer").hexdigest()
    assert head.size == len(b"after, longer")


async def test_failed_put_leaves_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    with pytest.raises(BodyFailed):
        await store.put("k", failing_body(12 * MiB, 9 * MiB))
    await store.put("exists", b"e")
    with pytest.raises(PreconditionFailed):
        await store.put_if_absent("exists", b"other")
    assert [p.name for p in (root / TMP_DIR).iterdir()] == ["lock"]  # the root lock's file
    assert regular_files(root) == {"exists": b"e"}


async def test_stale_temp_files_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    LocalObjectStore(root)
    stale = root / TMP_DIR / "old.tmp"
    fresh = root / TMP_DIR / "fresh.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    LocalObjectStore(root)
    assert not stale.exists()
    assert fresh.exists()  # may belong to another shard's in-flight put


async def test_large_object_is_read_in_windows(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    data = payload(9 * MiB + 5, seed=4)
    await store.put("big", data)
    result = await store.get("big", byte_range=(1, 9 * MiB + 100))
    assert result is not None
    chunks = [c async for c in result.iter_chunks()]
    await result.close()
    assert len(chunks) == 3  # 4 MiB windows
    assert b"".join(chunks) == data[1:]


def race_on_threads(
    root: Path, n: int, attempt: Callable[[LocalObjectStore, int], Awaitable[object]]
) -> list[str]:
    """Run ``attempt(store, i)`` on ``n`` threads at once, each with its own loop and store
    instance on ``root`` (as shards have); thread i's result is "won", or "lost" if its
    attempt raised PreconditionFailed."""
    barrier = threading.Barrier(n)
    results: list[str] = [""] * n

    def shard(i: int) -> None:
        async def run() -> None:
            store = LocalObjectStore(root)
            barrier.wait()
            try:
                await attempt(store, i)
                results[i] = "won"
            except PreconditionFailed:
                results[i] = "lost"

        asyncio.run(run())

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_put_if_absent_across_threads_one_winner(tmp_path: Path) -> None:
    """Several threads, each with its own loop and store instance (as shards have)."""
    root = tmp_path / "bucket"
    n = 8
    results = race_on_threads(
        root, n, lambda store, i: store.put_if_absent("race", f"shard-{i}".encode() * 1000))
    assert results.count("won") == 1, results
    assert results.count("lost") == n - 1
    winner = results.index("won")
    assert (root / "race").read_bytes() == f"shard-{winner}".encode() * 1000


def test_put_if_match_across_threads_one_winner(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    base = asyncio.run(LocalObjectStore(root).put("cas", b"base"))
    n = 8
    results = race_on_threads(
        root, n, lambda store, i: store.put_if_match("cas", f"shard-{i}".encode(), base.etag))
    assert results.count("won") == 1, results


async def test_concurrent_mixed_layout_changes(tmp_path: Path) -> None:
    """Puts that force file->directory conversions, racing reads of the parent object."""
    store = LocalObjectStore(tmp_path / "bucket")
    await store.put("p", b"parent")

    async def reader() -> None:
        for _ in range(50):
            assert await store.get_bytes("p") == b"parent"

    async def writer() -> None:
        for i in range(20):
            await store.put(f"p/{i}", b"c")
            await store.delete(f"p/{i}")

    await asyncio.gather(reader(), writer(), reader())
    assert await store.get_bytes("p") == b"parent"


def test_put_if_match_is_atomic_across_processes(tmp_path: Path) -> None:
    """The daemon's shards are processes: a conditional put racing one from another process
    must still have exactly one winner (the root lock holds across processes)."""
    import subprocess
    import sys

    from tests.support.daemon import daemon_env

    root = tmp_path / "bucket"
    racer = (
        "import asyncio, os, sys, time\n"
        "from cachedaemon.errors import PreconditionFailed\n"
        "from cachedaemon.remote.local import LocalObjectStore\n"
        "s = LocalObjectStore(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[3]):\n"
        "    time.sleep(0.0005)\n"
        "async def go():\n"
        "    try:\n"
        "        await s.put('k', os.urandom(1000), if_match=sys.argv[2])\n"
        "        print('won')\n"
        "    except PreconditionFailed:\n"
        "        print('lost')\n"
        "asyncio.run(go())\n")
    bad = 0
    for round_ in range(5):
        info = asyncio.run(LocalObjectStore(root).put("k", b"base %d" % round_))
        go = tmp_path / f"go-{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", racer, str(root), info.etag, str(go)],
                                  stdout=subprocess.PIPE, env=daemon_env()) for _ in range(4)]
        for p in procs:  # every racer is ready: start them together
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        go.touch()
        outcomes = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
        if outcomes.count("won") != 1:
            bad += 1
    assert bad == 0, f"{bad} of 5 rounds had no or several winners"
