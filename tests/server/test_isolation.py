"""Isolation end to end: no client reaches the daemon's own objects through ``/v1/objects``.

Each attack of issue 10 runs against the real daemon subprocess (two shards, ``file://``
bucket). The attacker uses the object routes only and tries both the paths where the previous
layout kept the metastore (``meta/registry/…``, ``meta/domain/<uuid>/…`` in the bucket and the
cache key ``lsm/meta/domain/<uuid>/…``) and the reserved ``.cachedaemon/…`` paths where it lives
now. The reserved ones must be ``400 invalid_key``; the others are ordinary user objects. Then
the victim domain's values, a write, a flush, a compaction and a restart must all be unaffected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.daemon import DaemonProcess, start_daemon

VICTIM = "victim"
VALUES = {f"key{i}".encode(): f"value-{i}".encode() * 20 for i in range(10)}
SST_NAME = re.compile(r"^(\d{20})-(\d{20})\.sst$")


class Api:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.s = session

    async def req(self, method: str, path: str, **kw: object) -> tuple[int, bytes]:
        async with self.s.request(method, URL(self.url + path, encoded=True),
                                  **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.read()

    async def code(self, method: str, path: str, **kw: object) -> tuple[int, str | None]:
        status, body = await self.req(method, path, **kw)
        try:
            return status, json.loads(body)["error"]["code"]
        except Exception:
            return status, None

    async def info(self, domain: str) -> dict[str, object]:
        status, body = await self.req("GET", f"/v1/domains/{domain}")
        assert status == 200, (status, body)
        return json.loads(body)  # type: ignore[no-any-return]


def legacy_and_reserved(path: str) -> tuple[list[str], list[str]]:
    """For a path relative to the metastore root (``registry/x``, ``domain/<uuid>/<f>``): the
    object keys of the previous layout, and the reserved keys of this one."""
    legacy = [f"meta/{path}"]
    reserved = [f".cachedaemon/meta/{path}"]
    if path.startswith("domain/") and path.endswith(".sst"):
        legacy.append(f"lsm/meta/{path}")  # the previous layout's cache key of an SST
        reserved.append(f".cachedaemon/lsm/.cachedaemon/meta/{path}")
    return legacy, reserved


def domain_dirs(bucket: Path, uuid: str) -> list[Path]:
    """The directories of domain ``uuid`` in the ``file://`` bucket, in either layout."""
    return [d for d in (bucket / "meta" / "domain" / uuid,
                        bucket / ".cachedaemon" / "meta" / "domain" / uuid) if d.is_dir()]


def sst_names(bucket: Path, uuid: str) -> list[str]:
    names = {p.name for d in domain_dirs(bucket, uuid) for p in d.iterdir()
             if SST_NAME.match(p.name)}
    assert names, f"no SSTs of {uuid} in {bucket}"
    return sorted(names)


async def attack(api: Api, method: str, path: str, body: bytes | None = None) -> None:
    """Hit every form of ``path`` through the object routes: the legacy keys are ordinary
    objects (accepted), the reserved ones ``400 invalid_key`` on every route."""
    legacy, reserved = legacy_and_reserved(path)
    for key in legacy:
        status, _ = await api.req(method, f"/v1/objects/{key}", data=body)
        assert status in (201, 204), (method, key, status)
    for key in reserved:
        for variant in (key, key.replace(".", "%2E", 1), key.replace("/", "%2F")):
            assert await api.code(method, f"/v1/objects/{variant}", data=body) == (
                400, "invalid_key"), (method, variant)


async def put_values(api: Api, domain: str, values: dict[bytes, bytes]) -> None:
    for k, v in values.items():
        status, body = await api.req("PUT", f"/v1/kv/{domain}/{k.decode()}", data=v)
        assert status == 204, (k, status, body)


async def check_values(api: Api, domain: str, values: dict[bytes, bytes]) -> None:
    for k, v in values.items():
        assert await api.req("GET", f"/v1/kv/{domain}/{k.decode()}") == (200, v), k


async def write_flush_compact(api: Api, values: dict[bytes, bytes], tag: str
                              ) -> dict[bytes, bytes]:
    more = {**values, f"after-{tag}".encode(): tag.encode(), b"key5": f"rewritten {tag}".encode()}
    await put_values(api, VICTIM, {k: more[k] for k in (f"after-{tag}".encode(), b"key5")})
    assert (await api.req("POST", f"/v1/domains/{VICTIM}/flush"))[0] == 204
    await check_values(api, VICTIM, more)
    assert (await api.req("POST", f"/v1/domains/{VICTIM}/compact"))[0] == 204
    await check_values(api, VICTIM, more)
    info = await api.info(VICTIM)
    assert info["persisted_seqno"] == info["last_seqno"]
    return more


async def check_unaffected(d: DaemonProcess, data: Path, session: aiohttp.ClientSession,
                           values: dict[bytes, bytes]) -> None:
    """The victim's values, a write, a flush, a compaction and a restart (then all of them
    again) are unaffected by what the attacker did. Stops ``d``."""
    api = Api(d.url, session)
    await check_values(api, VICTIM, values)
    values = {**values, b"fresh": b"flushed in the attacked daemon"}
    await put_values(api, VICTIM, {b"fresh": values[b"fresh"]})
    assert (await api.req("POST", f"/v1/domains/{VICTIM}/flush"))[0] == 204
    await check_values(api, VICTIM, values)
    assert d.terminate() == 0
    with start_daemon(data, shards=2) as again:
        api = Api(again.url, session)
        await check_values(api, VICTIM, values)
        values = await write_flush_compact(api, values, "first")
        assert again.terminate() == 0
    with start_daemon(data, shards=2) as third:
        api = Api(third.url, session)
        await check_values(api, VICTIM, values)
        await write_flush_compact(api, values, "second")


@pytest.fixture
async def session() -> object:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def victim(data: Path) -> Iterator[DaemonProcess]:
    with start_daemon(data, shards=2) as d:
        yield d


async def setup_victim(d: DaemonProcess, session: aiohttp.ClientSession) -> str:
    api = Api(d.url, session)
    await put_values(api, VICTIM, VALUES)
    assert (await api.req("POST", f"/v1/domains/{VICTIM}/flush"))[0] == 204
    await check_values(api, VICTIM, VALUES)  # the SSTs are now cached
    return str((await api.info(VICTIM))["uuid"])


async def test_forged_sst_over_the_cached_copy(victim: DaemonProcess, data: Path,
                                               session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    uuid = await setup_victim(victim, session)
    # A well-formed SST holding forged values: the attacker's own domain's, read from the
    # bucket (a real attacker would build one; the bytes are the same kind).
    await put_values(api, "attacker", {b"key5": b"FORGED" * 10, b"key7": b"FORGED" * 10})
    assert (await api.req("POST", "/v1/domains/attacker/flush"))[0] == 204
    attacker_uuid = str((await api.info("attacker"))["uuid"])
    bucket = data / "bucket"
    forged = next(p for d in domain_dirs(bucket, attacker_uuid) for p in d.iterdir()
                  if SST_NAME.match(p.name)).read_bytes()
    for name in sst_names(bucket, uuid):
        await attack(api, "PUT", f"domain/{uuid}/{name}", forged)
    await check_unaffected(victim, data, session, VALUES)


async def test_planted_next_sst_names(victim: DaemonProcess, data: Path,
                                      session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    uuid = await setup_victim(victim, session)
    epoch = int((await api.info(VICTIM))["epoch"])  # type: ignore[call-overload]
    top = max(int(SST_NAME.match(n).group(1)) for n in sst_names(data / "bucket", uuid))  # type: ignore[union-attr]
    for file_id in range(top + 1, top + 12):
        await attack(api, "PUT", f"domain/{uuid}/{file_id:020d}-{epoch:020d}.sst",
                     b"planted garbage")
    await check_unaffected(victim, data, session, VALUES)


async def test_garbage_over_ssts_and_manifest(victim: DaemonProcess, data: Path,
                                              session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    uuid = await setup_victim(victim, session)
    for name in sst_names(data / "bucket", uuid):
        await attack(api, "PUT", f"domain/{uuid}/{name}", b"\x00garbage" * 100)
    await attack(api, "PUT", f"domain/{uuid}/MANIFEST", b"garbage manifest")
    await check_unaffected(victim, data, session, VALUES)


async def test_deleting_the_registry_entry(victim: DaemonProcess, data: Path,
                                           session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    uuid = await setup_victim(victim, session)
    await attack(api, "DELETE", f"registry/{VICTIM}")
    await attack(api, "DELETE", f"domain/{uuid}/MANIFEST")
    await check_unaffected(victim, data, session, VALUES)


async def test_registry_alias_of_the_victim(victim: DaemonProcess, data: Path,
                                            session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    uuid = await setup_victim(victim, session)
    doc = json.dumps({"name": "alias", "uuid": uuid, "created": 0}).encode()
    await attack(api, "PUT", "registry/alias", doc)
    # Writes to "alias" make a domain of its own; the victim's own writes still work.
    assert (await api.req("PUT", "/v1/kv/alias/intruder", data=b"x"))[0] == 204
    alias_uuid = (await api.info("alias"))["uuid"]
    assert alias_uuid != uuid
    assert await api.code("GET", f"/v1/kv/{VICTIM}/intruder") == (404, "not_found")
    values = dict(VALUES)
    await put_values(api, VICTIM, {b"own": b"write"})
    values[b"own"] = b"write"
    await check_values(api, VICTIM, values)
    assert (await api.req("DELETE", "/v1/kv/alias/intruder"))[0] == 204
    await check_unaffected(victim, data, session, values)


RESERVED_RAW = [
    ".cachedaemon",
    ".cachedaemon/x",
    ".cachedaemonfoo/x",
    ".cachedaemon-tmp/x",
    "%2Ecachedaemon/x",
    ".cachedaemon%2Fmeta%2Fregistry%2Fvictim",
    ".cachedaemon/meta/registry/victim",
]
ORDINARY = ["-x", ".a", ".cache/x", ".cachedaemo/x", ".cachedaemoo", "x/.cachedaemon/y", "z",
            "meta/registry/victim", "lsm/y"]


async def test_reserved_keys_on_every_route(victim: DaemonProcess,
                                            session: aiohttp.ClientSession) -> None:
    api = Api(victim.url, session)
    await setup_victim(victim, session)
    for raw in RESERVED_RAW:
        for method in ("PUT", "GET", "DELETE"):
            assert await api.code(method, f"/v1/objects/{raw}", data=b"x") == (
                400, "invalid_key"), (method, raw)
        assert (await api.req("HEAD", f"/v1/objects/{raw}"))[0] == 400, raw
        assert await api.code("DELETE", f"/v1/cache/objects/{raw}") == (400, "invalid_key"), raw
    for key in ORDINARY:
        assert (await api.req("PUT", f"/v1/objects/{key}", data=key.encode()))[0] == 201, key
        assert await api.req("GET", f"/v1/objects/{key}") == (200, key.encode()), key
    await check_values(api, VICTIM, VALUES)

    # Listings never show the daemon's objects, whatever the page size.
    for limit in (1, 2, 3, 1000):
        keys: list[str] = []
        query = f"limit={limit}"
        while True:
            status, body = await api.req("GET", f"/v1/objects?{query}")
            assert status == 200, body
            page = json.loads(body)
            keys += [o["key"] for o in page["objects"]]
            assert len(page["objects"]) <= limit
            if page["next"] is None:
                break
            query = f"limit={limit}&start_after={URL.build(query={'x': page['next']}).raw_query_string[2:]}"
        assert keys == sorted(ORDINARY), limit
    status, body = await api.req("GET", "/v1/objects?prefix=.cache")
    assert [o["key"] for o in json.loads(body)["objects"]] == [".cache/x", ".cachedaemo/x",
                                                                ".cachedaemoo"]
    for prefix in (".cachedaemon", ".cachedaemon/", ".cachedaemon/meta/", "%2Ecachedaemon"):
        assert await api.code("GET", f"/v1/objects?prefix={prefix}") == (400, "invalid_key")
    status, body = await api.req("GET", "/v1/objects?start_after=.cachedaemon/meta/x")
    assert [o["key"] for o in json.loads(body)["objects"]] == [
        ".cachedaemoo", "lsm/y", "meta/registry/victim", "x/.cachedaemon/y", "z"]


async def test_file_bucket_never_follows_links(tmp_path: Path,
                                               session: aiohttp.ClientSession) -> None:
    """End to end: a link inside the ``file://`` bucket leads nowhere, for every route."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"outside secret")
    (outside / "victim.txt").write_bytes(b"outside victim")
    data = tmp_path / "data"
    bucket = data / "bucket"
    bucket.mkdir(parents=True)
    (bucket / "evil").symlink_to(outside)
    (bucket / "leaf.txt").symlink_to(outside / "secret.txt")
    with start_daemon(data, shards=2) as d:
        api = Api(d.url, session)
        assert (await api.req("PUT", "/v1/objects/fine.txt", data=b"fine"))[0] == 201
        for key in ("evil/secret.txt", "leaf.txt", "evil/victim.txt"):
            assert await api.code("GET", f"/v1/objects/{key}") == (404, "not_found"), key
            assert (await api.req("HEAD", f"/v1/objects/{key}"))[0] == 404, key
            assert await api.code("PUT", f"/v1/objects/{key}", data=b"x") == (
                400, "invalid_key"), key
            assert await api.code("DELETE", f"/v1/objects/{key}") == (400, "invalid_key"), key
        assert await api.code("PUT", "/v1/objects/evil/new.txt", data=b"x") == (
            400, "invalid_key")
        _, body = await api.req("GET", "/v1/objects")
        assert [o["key"] for o in json.loads(body)["objects"]] == ["fine.txt"]
        _, body = await api.req("GET", "/v1/objects?prefix=evil/")
        assert json.loads(body)["objects"] == []
    assert (outside / "secret.txt").read_bytes() == b"outside secret"
    assert (outside / "victim.txt").read_bytes() == b"outside victim"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt", "victim.txt"]
    cached = [p for p in (data / "cache").rglob("*") if p.is_file()]
    assert not any(p.read_bytes() == b"outside secret" for p in cached)
