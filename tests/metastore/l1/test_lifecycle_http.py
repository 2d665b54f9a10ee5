"""End to end against the real daemon subprocess, through HTTP: the preregistration lifecycle
(an upload that raced its preregistration's expiry is never registered and never lost), the
object GC of one domain never touching another domain's objects, the GC loop running from
start-up, and the request schema the validation rules need (caller-chosen ids, required
terms, several runs per replacement, metadata-only compaction commits, bulk compaction infos,
extents answered with their object's footer)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import msgspec
import pytest
from yarl import URL

from cachedaemon.client import AsyncClient
from cachedaemon.client.l1 import L1Client
from cachedaemon.errors import NotFound
from cachedaemon.metastore.l1 import InvalidRequest, MissingPartition
from cachedaemon.metastore.l1.types import CleanedRange, CompactionUpdate, NewObject
from tests.metastore.l1.helpers import P0, P1, Q0, T1, ext, obj, term, terms_for
from tests.support.daemon import start_daemon


async def raw(url: str, method: str, path: str, body: object = None
              ) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.request(
            method, URL(url + path, encoded=True),
            data=None if body is None else json.dumps(body).encode()) as r:
        text = await r.read()
        return r.status, json.loads(text) if text else {}


async def upload(client: AsyncClient, l1: L1Client, o: NewObject) -> None:
    await client.put(l1.object_key(o.oid), b"d" * o.object_size)


async def exists(client: AsyncClient, key: str) -> bool:
    try:
        await client.head(key)
    except NotFound:
        return False
    return True


async def test_an_upload_that_raced_its_expiry_is_never_registered_nor_lost(
        tmp_path: Path) -> None:
    """Issue 12, point 4: the GC deleted an expired preregistration outright (row and bucket
    object) at the TTL, and an add_objects for that id then succeeded, leaving extents that
    pointed at a deleted object."""
    ttl_s, delay_s = 1.0, 1.5
    with start_daemon(tmp_path / "d", "--metastore-l1-preregistration-ttl", f"{ttl_s:g}s",
                      "--metastore-file-deletion-delay", f"{delay_s:g}s",
                      "--metastore-gc-interval", "1h",
                      remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "race")
            (oid,) = await l1.preregister_objects(1)
            o = obj(ext(P0, 0, 9), oid=oid)
            await upload(client, l1, o)  # a slow writer: the upload lands ...
            await client.flush("race")
            await asyncio.sleep(ttl_s + 0.3)
            got = await l1.collect_garbage()  # ... the preregistration expires ...
            assert (got.preregistrations_expired, got.objects_deleted) == (1, 0)
            info = await l1.get_object(oid)
            assert info is not None and not info.is_preregistration
            assert (info.total_data_size, info.removed_data_size) == (0, 0)
            assert await exists(client, l1.object_key(oid))  # not deleted at the TTL
            expired_at = time.monotonic()
            with pytest.raises(InvalidRequest, match=f"{oid} is not pre-registered"):
                await l1.add_objects([o], terms_for([o]))  # ... and the add comes too late
            with pytest.raises(MissingPartition):
                await l1.get_offsets(P0)  # no extent points at the object
            await client.flush("race")
            assert (await l1.collect_garbage()).objects_deleted == 0  # within the delay
            await asyncio.sleep(max(0.0, expired_at + delay_s + 0.3 - time.monotonic()))
            got = await l1.collect_garbage()
            assert (got.objects_deleted, got.preregistrations_expired) == (1, 0)
            assert not await exists(client, l1.object_key(oid))
            assert await l1.get_object(oid) is None


async def test_one_domains_gc_never_deletes_another_domains_object(tmp_path: Path) -> None:
    """Issue 10, point 2: domain B added the same id as domain A, removed its topic and ran
    its GC: A's object was deleted while A's extents still pointed at it."""
    delay_s = 1.0
    with start_daemon(tmp_path / "d", "--metastore-file-deletion-delay", f"{delay_s:g}s",
                      "--metastore-gc-interval", "1h", shards=2,
                      remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            a, b = L1Client(client, "team-a"), L1Client(client, "team-b")
            oid = uuid.uuid4()
            for l1 in (a, b):
                o = obj(ext(P0, 0, 9), oid=oid)
                assert await l1.preregister_objects(oids=[oid]) == [oid]
                await client.put(l1.object_key(oid), l1.domain.encode() * 10)
                assert await l1.add_objects([o], [term(P0, 1, 0)]) == {}
            assert a.object_key(oid) != b.object_key(oid)
            assert await b.remove_topics([T1]) == 1
            await client.flush("team-b")
            await asyncio.sleep(delay_s + 0.3)
            assert (await b.collect_garbage()).objects_deleted == 1
            assert not await exists(client, b.object_key(oid))
            where = await a.get_first_ge(P0, 0)
            assert (where.oid, where.object_key) == (oid, a.object_key(oid))
            assert await client.get(where.object_key) == b"team-a" * 10
            await client.flush("team-a")
            assert (await a.collect_garbage()).objects_deleted == 0


async def test_the_gc_loop_runs_from_start_up(tmp_path: Path) -> None:
    """After a restart, a domain's GC ran only once the domain got its first L1 request."""
    data, bucket = tmp_path / "d", f"file://{tmp_path / 'bucket'}"
    # The delay outlasts the first run (so its own GC loop cannot have deleted the object).
    args = ("--metastore-file-deletion-delay", "2s", "--metastore-gc-interval", "500ms")
    with start_daemon(data, *args, remote=bucket) as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "boot")
            objects = [obj(ext(P0, 0, 9)), obj(ext(P0, 10, 19))]
            await l1.preregister_objects(oids=[o.oid for o in objects])
            for o in objects:
                await upload(client, l1, o)
            await l1.add_objects(objects, terms_for(objects))
            await l1.set_start_offset(P0, 10)  # objects[0] is dead
            await client.flush("boot")
            assert await exists(client, l1.object_key(objects[0].oid))
        assert d.terminate() == 0
    with start_daemon(data, *args, remote=bucket) as d:
        async with AsyncClient(d.url) as client:
            keys = [L1Client(client, "boot").object_key(o.oid) for o in objects]
            deadline = time.monotonic() + 15
            while await exists(client, keys[0]):  # no L1 request: only object HEADs
                assert time.monotonic() < deadline, "the GC did not run after the restart"
                await asyncio.sleep(0.2)
            assert await exists(client, keys[1])


async def test_the_requests_the_rules_need(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "schema")
            base = "/v1/l1/schema"
            # caller-chosen ids, answered like the count form; an existing id is refused
            mine = [uuid.uuid4(), uuid.uuid4()]
            status, doc = await raw(d.url, "POST", f"{base}/objects/preregister",
                                    {"oids": [str(o) for o in mine]})
            assert (status, doc) == (200, {"oids": [str(o) for o in mine]})
            status, doc = await raw(d.url, "POST", f"{base}/objects/preregister",
                                    {"oids": [str(mine[0])]})
            assert status == 400 and str(mine[0]) in doc["error"]["message"]  # type: ignore[index]
            for body in ({}, {"count": 1, "oids": [str(uuid.uuid4())]}, {"oids": []}):
                status, doc = await raw(d.url, "POST", f"{base}/objects/preregister", body)
                assert status == 400, body
            # terms are required
            o = obj(ext(P0, 0, 9), ext(P1, 0, 4, length=40), oid=mine[0])
            body = {"objects": [json.loads(msgspec.json.encode(o))]}
            status, doc = await raw(d.url, "POST", f"{base}/objects/add", body)
            assert status == 400 and "terms" in doc["error"]["message"]  # type: ignore[index]
            assert await l1.add_objects([o], [term(P0, 1, 0), term(P1, 1, 0)]) == {}
            o2 = obj(ext(P0, 10, 19), ext(P0, 20, 29), oid=mine[1])
            assert await l1.add_objects([o2], terms_for([o2])) == {}
            # get_first_ge answers with the object's footer position and size
            where = await l1.get_first_ge(P0, 25)
            assert (where.oid, where.footer_pos, where.object_size, where.object_key) == (
                o2.oid, o2.footer_pos, o2.object_size, l1.object_key(o2.oid))
            assert (await l1.get_first_ge_timestamp(P1, -1)).footer_pos == o.footer_pos
            # several runs of one partition in one replacement
            new = obj(ext(P0, 0, 9, length=30), ext(P0, 20, 29, length=30))
            await l1.preregister_objects(oids=[new.oid])
            assert await l1.replace_objects([new], {P0: 0}) == {P0: 1}
            assert [e.oid for e in (await l1.get_extents(P0)).extents] == [
                new.oid, o2.oid, new.oid]
            # compaction: an update needs extents; metadata alone is committed separately
            up = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=1,
                                  cleaned_ranges=[CleanedRange(base=0, last=29,
                                                               has_tombstones=True)],
                                  cleaned_at=123)
            with pytest.raises(InvalidRequest, match="no objects"):
                await l1.compact_objects([], [up])
            assert await l1.commit_compaction_metadata([up]) == {P0: 2}
            infos = await l1.get_compaction_infos([P0, P1, Q0], 123)
            p0 = infos[P0]
            assert infos[Q0] is None and p0 is not None and p0.compaction_epoch == 2
            assert [(r.base, r.last) for r in p0.removable_tombstone_ranges] == [(0, 29)]
            assert infos[P1] is not None and infos[P1].dirty_ranges[0].last == 4

        status, spec = await raw(d.url, "GET", "/openapi.json")
        paths = spec["paths"]
        assert isinstance(paths, dict)
        for path, schema in [("/v1/l1/{domain}/compaction/commit", "CommitCompactionRequest"),
                             ("/v1/l1/{domain}/compaction/infos", "CompactionInfosRequest")]:
            op = paths[path]["post"]
            assert op["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{schema}"}
        schemas = spec["components"]["schemas"]  # type: ignore[index]
        assert "oids" in schemas["PreregisterRequest"]["properties"]
        assert "terms" in schemas["AddObjectsRequest"]["required"]
        assert {"footer_pos", "object_size"} <= set(schemas["ExtentLocation"]["properties"])



async def test_a_collected_object_is_not_served_from_the_cache(tmp_path: Path) -> None:
    """Issue 10 follow-up: the GC deleted objects straight from the bucket, so a copy cached
    by an earlier GET kept being served. Its deletes now go through the per-key rule."""
    delay_s = 1.0
    with start_daemon(tmp_path / "d", "--metastore-file-deletion-delay", f"{delay_s:g}s",
                      "--metastore-gc-interval", "1h", shards=2,
                      remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "cached")
            o = obj(ext(P0, 0, 9))
            await l1.preregister_objects(oids=[o.oid])
            await upload(client, l1, o)
            await l1.add_objects([o], terms_for([o]))
            for _ in range(4):  # cached, and read on both shards
                assert await client.get(l1.object_key(o.oid)) == b"d" * o.object_size
            assert await l1.remove_topics([T1]) == 1
            await client.flush("cached")
            await asyncio.sleep(delay_s + 0.3)
            assert (await l1.collect_garbage()).objects_deleted == 1
            for _ in range(4):
                assert not await exists(client, l1.object_key(o.oid))
                with pytest.raises(NotFound):
                    await client.get(l1.object_key(o.oid))


async def test_a_fill_racing_the_collection_leaves_no_ghost(tmp_path: Path) -> None:
    """A GET filling the cache while the GC deletes its object: the fill must not put a copy
    of the deleted object in the cache (the GC's delete is a write of the key)."""
    env = {"CACHEDAEMON_FAILPOINTS": "server.get.before_fill_commit=delay:1.5"}
    with start_daemon(tmp_path / "d", "--metastore-file-deletion-delay", "0s",
                      "--metastore-gc-interval", "1h", env=env,
                      remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "racing")
            o = obj(ext(P0, 0, 9))
            await l1.preregister_objects(oids=[o.oid])
            await upload(client, l1, o)
            await l1.add_objects([o], terms_for([o]))
            key = l1.object_key(o.oid)
            await client.drop_cached(key)
            fill = asyncio.ensure_future(client.get(key))  # held before its publish
            await asyncio.sleep(0.5)
            assert await l1.remove_topics([T1]) == 1
            await client.flush("racing")
            assert (await l1.collect_garbage()).objects_deleted == 1
            assert await fill == b"d" * o.object_size  # it had started before the delete
            with pytest.raises(NotFound):
                await client.get(key)
