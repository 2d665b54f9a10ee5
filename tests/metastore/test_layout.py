"""The metastore's bucket layout: migration from the previous layout (``meta/…``) to the
reserved one (``.cachedaemon/meta/…``), its refusals, its restart after a crash, and the marker
that keeps ``meta/…`` user keys from ever being migrated later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from cachedaemon.errors import FailPointTriggered
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.metastore.layout import LAYOUT_KEY, LayoutError, ensure_layout
from cachedaemon.remote.base import ObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from tests.support.daemon import run_cli, start_daemon

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def entry(name: str, uuid: str) -> bytes:
    return json.dumps({"name": name, "uuid": uuid, "created": 1.0}).encode()


async def legacy_bucket(store: ObjectStore) -> None:
    await store.put("meta/registry/alpha", entry("alpha", U1))
    await store.put("meta/registry/beta", entry("beta", U2))
    for uuid in (U1, U2):
        await store.put(f"meta/domain/{uuid}/MANIFEST", f"manifest {uuid}".encode())
        await store.put(f"meta/domain/{uuid}/00000000000000000002-00000000000000000001.sst",
                        f"sst {uuid}".encode())
        await store.put(f"meta/domain/{uuid}/epoch/00000000000000000001", b"{}")
    await store.put("photos/cat.jpg", b"a user object")


async def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [o.key async for o in store.list_all(prefix)]


async def test_migration_moves_every_domain_and_leaves_user_objects() -> None:
    store = MemoryObjectStore()
    await legacy_bucket(store)
    io = CloudIO(store)
    assert await ensure_layout(io, read_only=False) == 2
    assert await keys(store, "meta/") == []
    assert await store.get_bytes(".cachedaemon/meta/registry/alpha") == entry("alpha", U1)
    assert await store.get_bytes(f".cachedaemon/meta/domain/{U2}/MANIFEST") == (
        f"manifest {U2}".encode())
    assert len(await keys(store, f".cachedaemon/meta/domain/{U1}/")) == 3
    assert await store.get_bytes("photos/cat.jpg") == b"a user object"
    assert await store.head(LAYOUT_KEY) is not None
    # From now on meta/… are user keys: never migrated, even if they look like the registry.
    await store.put("meta/registry/alias", entry("alias", U1))
    await store.put(f"meta/domain/{U1}/MANIFEST", b"a user's object")
    assert await ensure_layout(io, read_only=False) == 0
    assert await store.head(".cachedaemon/meta/registry/alias") is None
    assert await store.get_bytes(f".cachedaemon/meta/domain/{U1}/MANIFEST") == (
        f"manifest {U1}".encode())
    assert await store.get_bytes("meta/registry/alias") == entry("alias", U1)


async def test_fresh_bucket_gets_the_marker() -> None:
    store = MemoryObjectStore()
    io = CloudIO(store)
    assert await ensure_layout(io, read_only=True) == 0
    assert await store.head(LAYOUT_KEY) is None  # a read-only daemon writes nothing
    assert await ensure_layout(io, read_only=False) == 0
    assert await store.head(LAYOUT_KEY) is not None


async def test_a_crash_in_the_middle_is_finished_by_the_next_start() -> None:
    store = MemoryObjectStore()
    await legacy_bucket(store)
    io = CloudIO(store, retry_chain_s=0.0)
    # The third copy fails (as a crash would stop it): nothing after it happens.
    copies = 0
    real_put_if_absent = store.put_if_absent

    async def flaky(key: str, body: object) -> object:
        nonlocal copies
        if key.startswith(".cachedaemon/meta/domain/"):
            copies += 1
            if copies == 3:
                raise FailPointTriggered("crash in the middle of the migration")
        return await real_put_if_absent(key, body)  # type: ignore[arg-type]

    store.put_if_absent = flaky  # type: ignore[method-assign]
    with pytest.raises(Exception, match="crash in the middle"):
        await ensure_layout(io, read_only=False)
    store.put_if_absent = real_put_if_absent  # type: ignore[method-assign]
    assert await store.head(LAYOUT_KEY) is None
    assert await keys(store, "meta/registry/") == ["meta/registry/alpha", "meta/registry/beta"]
    # Something was written in the new place meanwhile: the resumed copy must not overwrite it.
    await store.put(f".cachedaemon/meta/domain/{U1}/MANIFEST", b"newer manifest")
    assert await ensure_layout(io, read_only=False) == 2
    assert await keys(store, "meta/") == []
    assert await store.get_bytes(f".cachedaemon/meta/domain/{U1}/MANIFEST") == b"newer manifest"
    assert len(await keys(store, ".cachedaemon/meta/domain/")) == 6


@pytest.mark.parametrize("bad", ["duplicate", "wrong_name", "garbage", "conflict"])
async def test_untrustworthy_legacy_entries_are_refused(bad: str) -> None:
    store = MemoryObjectStore()
    await legacy_bucket(store)
    if bad == "duplicate":
        await store.put("meta/registry/alias", entry("alias", U1))
        match = "both name domain uuid"
    elif bad == "wrong_name":
        await store.put("meta/registry/gamma", entry("alpha", U2))
        match = "names domain 'alpha'"
    elif bad == "garbage":
        await store.put("meta/registry/gamma", b"not json")
        match = "does not decode"
    else:
        await store.put(".cachedaemon/meta/registry/alpha", entry("alpha", U2))
        match = "exists in both layouts"
    before = await keys(store)
    with pytest.raises(LayoutError, match=match):
        await ensure_layout(CloudIO(store), read_only=False)
    if bad != "conflict":
        assert await keys(store) == before  # refused before anything changed


async def test_read_only_daemon_refuses_an_unmigrated_bucket() -> None:
    store = MemoryObjectStore()
    await legacy_bucket(store)
    with pytest.raises(LayoutError, match="read-only daemon cannot migrate"):
        await ensure_layout(CloudIO(store), read_only=True)
    assert await keys(store, "meta/registry/") == ["meta/registry/alpha", "meta/registry/beta"]


# --- end to end: a data directory and bucket of the previous layout ------------------------------


def to_legacy_layout(data: Path) -> None:
    """Rewrite a stopped daemon's bucket and cache into the previous layout."""
    bucket = data / "bucket"
    (bucket / "meta").mkdir()
    for part in ("registry", "domain"):
        shutil.move(bucket / ".cachedaemon" / "meta" / part, bucket / "meta" / part)
    (bucket / ".cachedaemon" / "meta" / "layout").unlink()
    cache = data / "cache"
    new = cache / ".cachedaemon%d" / "lsm%d" / ".cachedaemon%d" / "meta%d" / "domain%d"
    old = cache / "lsm%d" / "meta%d" / "domain%d"
    old.parent.mkdir(parents=True)
    shutil.move(new, old)
    (cache / "%tracker").unlink()  # layout 1 wrote version-1 trackers; none at all is alike


async def test_daemon_migrates_a_previous_layout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    values = {f"k{i}": f"value {i}".encode() for i in range(20)}
    async with aiohttp.ClientSession() as s:
        with start_daemon(data, shards=2) as d:
            for k, v in values.items():
                async with s.put(f"{d.url}/v1/kv/dom/{k}", data=v) as r:
                    assert r.status == 204
            async with s.post(f"{d.url}/v1/domains/dom/flush") as r:
                assert r.status == 204
            for k in values:  # cache the SSTs
                async with s.get(f"{d.url}/v1/kv/dom/{k}") as r:
                    assert r.status == 200
            async with s.get(f"{d.url}/v1/domains/dom") as r:
                uuid = (await r.json())["uuid"]
            assert d.terminate() == 0
        to_legacy_layout(data)
        sst = next(p.name for p in (data / "bucket" / "meta" / "domain" / uuid).iterdir()
                   if p.name.endswith(".sst"))
        with start_daemon(data, shards=2) as d:
            for k, v in values.items():
                async with s.get(f"{d.url}/v1/kv/dom/{k}") as r:
                    assert (r.status, await r.read()) == (200, v)
            async with s.get(f"{d.url}/v1/objects") as r:
                assert (await r.json())["objects"] == []
            # The old cached SST copy no longer answers for the user key it sat at.
            async with s.get(f"{d.url}/v1/objects/lsm/meta/domain/{uuid}/{sst}") as r:
                assert r.status == 404
            async with s.put(f"{d.url}/v1/kv/dom/after", data=b"after") as r:
                assert r.status == 204
            async with s.post(f"{d.url}/v1/domains/dom/compact") as r:
                assert r.status == 204
            assert "migrated 1 domain" in d.logs()
            assert "dropped" in d.logs()
            assert d.terminate() == 0
    assert not (data / "bucket" / "meta").exists()
    assert not (data / "cache" / "lsm%d").exists()
    assert (data / "bucket" / ".cachedaemon" / "meta" / "registry" / "dom").exists()


def test_read_only_daemon_on_a_previous_layout_exits_with_what_to_do(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "meta" / "registry").mkdir(parents=True)
    (bucket / "meta" / "registry" / "dom").write_bytes(entry("dom", U1))
    proc = run_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                   "--remote", f"file://{bucket}", "--read-only", "--shards", "1")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "cannot start" in err and "start a writable daemon on this bucket once" in err
    assert (bucket / "meta" / "registry" / "dom").exists()


def test_forged_duplicate_registry_entry_stops_the_start(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "meta" / "registry").mkdir(parents=True)
    (bucket / "meta" / "registry" / "dom").write_bytes(entry("dom", U1))
    (bucket / "meta" / "registry" / "alias").write_bytes(entry("alias", U1))
    proc = run_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                   "--remote", f"file://{bucket}", "--shards", "1")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode()
    assert "both name domain uuid" in err and "delete it, then start again" in err

