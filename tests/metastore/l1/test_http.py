"""The L1 routes end to end against the real daemon subprocess, through the typed client
(:class:`cachedaemon.client.l1.L1Client`) and raw HTTP: answers, error kinds and codes, body
validation naming the field, the OpenAPI entries; object GC of objects uploaded through the
daemon's object API to moto S3; L1 rows surviving kill -9 and visible on a read replica."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from cachedaemon.client import AsyncClient, Client
from cachedaemon.client.l1 import L1Client, SyncL1Client
from cachedaemon.errors import Fenced, NotFound, ReadOnly
from cachedaemon.metastore.l1 import (
    InvalidRequest,
    MissingPartition,
    OutOfRange,
    TopicIdPartition,
)
from cachedaemon.metastore.l1.types import CompactionUpdate, NewObject, OffsetRange, TermStart
from tests.metastore.l1.helpers import P0, P1, T1, ext, obj, term, terms_for
from tests.support.daemon import start_daemon


async def raw(url: str, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.request(
            method, URL(url + path, encoded=True),
            data=None if body is None else (body if isinstance(body, bytes) else
                                            json.dumps(body).encode())) as r:
        text = await r.read()
        return r.status, json.loads(text) if text else {}


async def add(l1: L1Client, objects: list[NewObject], terms: list[TermStart] | None = None
              ) -> dict[TopicIdPartition, int]:
    """Preregister, then add (terms: term 1 from each partition's first base)."""
    await l1.preregister_objects(oids=[o.oid for o in objects])
    return await l1.add_objects(objects, terms_for(objects) if terms is None else terms)


async def test_l1_routes_contract(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", shards=2, remote=f"file://{tmp_path / 'bucket'}") as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "cat")
            with pytest.raises(MissingPartition):
                await l1.get_offsets(P0)
            o1 = obj(ext(P0, 0, 9, ts=100), ext(P1, 0, 4, length=50, ts=50))
            o2 = obj(ext(P0, 10, 19, ts=200))
            assert await add(l1, [o1], [term(P0, 1, 0), term(P1, 1, 0)]) == {}
            assert await add(l1, [o2], [term(P0, 1, 10), term(P0, 2, 15)]) == {}
            assert await add(l1, [obj(ext(P0, 5, 9))]) == {P0: 20}
            offsets = await l1.get_offsets(P0)
            assert (offsets.start_offset, offsets.next_offset) == (0, 20)
            part = await l1.get_partition(P0)
            assert (part.size, part.num_extents, part.compaction_epoch) == (200, 2, 0)
            assert await l1.get_size(P1) == 50
            where = await l1.get_first_ge(P0, 12)
            assert (where.oid, where.footer_pos, where.object_size) == (
                o2.oid, o2.footer_pos, o2.object_size)
            assert (await l1.get_first_ge_timestamp(P0, 150)).base_offset == 10
            assert await l1.get_first_offset_for_bytes(P0, 150) == 10
            assert await l1.get_term_for_offset(P0, 16) == 2
            assert await l1.get_end_offset_for_term(P0, 1) == 15
            got = await l1.get_extents(P0, limit=1, reverse=True)
            assert [e.base_offset for e in got.extents] == [10] and got.more
            info = await l1.get_object(o1.oid)
            assert info is not None and info.total_data_size == 150
            assert await l1.get_object(uuid.uuid4()) is None
            listed = await l1.list_objects()
            assert len(listed.objects) == 3 and listed.next is None

            # writes that change state
            merged, late = obj(ext(P0, 0, 19, length=120)), obj(ext(P0, 0, 19))
            await l1.preregister_objects(oids=[merged.oid, late.oid])
            assert await l1.replace_objects([merged], {P0: 0}) == {P0: 1}
            with pytest.raises(InvalidRequest, match="stale compaction epoch"):
                await l1.replace_objects([late], {P0: 0})
            up = CompactionUpdate(topic_id=T1, partition=0, expected_epoch=1,
                                  cleaned_range=OffsetRange(base=0, last=9))
            assert await l1.commit_compaction_metadata([up]) == {P0: 2}
            ci = await l1.get_compaction_info(P0)
            assert [(r.base, r.last) for r in ci.dirty_ranges] == [(10, 19)]
            assert (await l1.set_start_offset(P0, 20)).start_offset == 20
            with pytest.raises(OutOfRange):
                await l1.get_first_ge(P0, 20)
            with pytest.raises(OutOfRange):
                await l1.set_start_offset(P1, 99)
            with pytest.raises(InvalidRequest, match="still referenced"):
                await l1.remove_objects([o1.oid])
            (pre,) = await l1.preregister_objects(1)
            assert await l1.remove_objects([o2.oid, pre]) == 2
            assert await l1.remove_topics([T1]) == 2
            with pytest.raises(MissingPartition):
                await l1.get_size(P1)
            with pytest.raises(InvalidRequest, match="not contiguous"):
                gap = [obj(ext(P0, 0, 9)), obj(ext(P0, 11, 19))]
                await l1.add_objects(gap, terms_for(gap))

        # the blocking client: same API
        with Client(d.url) as sync:
            sl1 = SyncL1Client(sync, "cat")
            q = TopicIdPartition(uuid.uuid4(), 0)
            o = obj(ext(q, 0, 9))
            assert sl1.preregister_objects(oids=[o.oid]) == [o.oid]
            assert sl1.add_objects([o], terms_for([o])) == {}
            assert sl1.get_offsets(q).next_offset == 10
            assert sl1.get_first_ge(q, 3).object_key == sl1.object_key(o.oid)
            with pytest.raises(OutOfRange):
                sl1.get_first_ge(q, 10)
            assert sl1.remove_topics([q.topic_id]) == 1

        # raw HTTP: statuses, codes, and messages naming the field
        base = "/v1/l1/cat"
        part = f"{base}/partitions/{T1}/0"
        status, doc = await raw(d.url, "GET", f"{base}/partitions/{T1}/7/offsets")
        assert (status, doc["error"]["code"]) == (404, "not_found")  # type: ignore[index]
        oid = str(uuid.uuid4())
        status, _ = await raw(d.url, "POST", f"{base}/objects/preregister", {"oids": [oid]})
        assert status == 200
        status, _ = await raw(d.url, "POST", f"{base}/objects/add", {"objects": [
            {"oid": oid, "footer_pos": 10, "object_size": 20, "extents": [
                {"topic_id": str(T1), "partition": 0, "base_offset": 0, "last_offset": 9,
                 "filepos": 0, "len": 10}]}],
            "terms": [{"topic_id": str(T1), "partition": 0, "term": 1, "start_offset": 0}]})
        assert status == 200
        status, doc = await raw(d.url, "GET", f"{part}/first?offset=10")
        assert (status, doc["error"]["code"]) == (416, "invalid_range")  # type: ignore[index]
        cases = [
            ("POST", f"{base}/objects/add", {"objects": [], "bogus": 1}, "bogus"),
            ("POST", f"{base}/objects/add", {"objects": [{"oid": "x", "footer_pos": 1,
                                                          "object_size": 1, "extents": []}]},
             "$.objects[0].oid"),
            ("POST", f"{base}/objects/add", {"objects": [{"oid": str(uuid.uuid4()),
                                                          "footer_pos": -1, "object_size": 1,
                                                          "extents": []}]},
             "$.objects[0].footer_pos"),
            ("POST", f"{base}/objects/add", {}, "objects"),
            ("POST", f"{base}/objects/add", {"objects": []}, "terms"),
            ("POST", f"{base}/objects/add", b"{not json", "JSON"),
            ("POST", f"{base}/objects/preregister", {"count": 0}, "$.count"),
            ("POST", f"{part}/start_offset", {"start_offset": "1"}, "$.start_offset"),
            ("GET", f"{base}/partitions/not-a-uuid/0/offsets", None, "topic_id"),
            ("GET", f"{base}/partitions/{T1}/-1/offsets", None, "partition"),
            ("GET", f"{part}/term", None, "offset"),
            ("GET", f"{part}/first", None, "offset"),
            ("GET", f"{part}/extents?limit=0", None, "limit"),
            ("GET", f"{part}/extents?reverse=maybe", None, "reverse"),
            ("GET", f"{base}/objects?start_after=zz", None, "start_after"),
            ("GET", "/v1/l1/Bad/partitions/x/0/offsets", None, "domain"),
        ]
        for method, path, body, needle in cases:
            status, doc = await raw(d.url, method, path, body)
            err = doc["error"]
            assert isinstance(err, dict)
            assert (status, err["code"]) == (400, "invalid_argument"), (path, body, doc)
            assert needle in err["message"], (needle, err["message"])

        status, spec = await raw(d.url, "GET", "/openapi.json")
        assert status == 200
        paths = spec["paths"]
        assert isinstance(paths, dict)
        add_op = paths["/v1/l1/{domain}/objects/add"]["post"]
        assert add_op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/AddObjectsRequest"}
        schemas = spec["components"]["schemas"]  # type: ignore[index]
        assert "oid" in schemas["NewObject"]["properties"]
        first = paths["/v1/l1/{domain}/partitions/{topic_id}/{partition}/first"]["get"]
        assert first["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ExtentLocation"}
        assert len([p for p in paths if p.startswith("/v1/l1/")]) >= 18


@pytest.mark.s3
async def test_gc_deletes_objects_uploaded_through_the_daemon(
        tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> None:
    delay_s = 2.0
    with start_daemon(tmp_path / "d", "--metastore-file-deletion-delay", f"{delay_s:g}s",
                      "--metastore-gc-interval", "1h", remote=f"s3://{s3_bucket}",
                      s3_endpoint=moto_endpoint) as d:
        async with AsyncClient(d.url) as client:
            l1 = L1Client(client, "gcd")
            o1 = obj(ext(P0, 0, 9))
            o2 = obj(ext(P0, 10, 19), ext(P1, 0, 4, length=50))
            await l1.preregister_objects(oids=[o1.oid, o2.oid])
            for o in (o1, o2):
                await client.put(l1.object_key(o.oid), b"d" * o.object_size)
                assert await client.get(l1.object_key(o.oid))  # now cached too
            await l1.add_objects([o1, o2], terms_for([o1, o2]))
            await client.flush("gcd")
            await l1.set_start_offset(P0, 10)  # o1 dead, o2 still referenced
            died = time.monotonic()
            assert (await l1.collect_garbage()).objects_deleted == 0  # not persisted yet
            await client.flush("gcd")
            assert (await l1.collect_garbage()).objects_deleted == 0  # within the delay
            await client.head(l1.object_key(o1.oid))
            await asyncio.sleep(max(0.0, died + delay_s + 0.2 - time.monotonic()))
            got = await l1.collect_garbage()
            assert (got.objects_deleted, got.bytes_deleted) == (1, o1.object_size)
            with pytest.raises(NotFound):
                await client.head(l1.object_key(o1.oid))
            with pytest.raises(NotFound):  # neither in the bucket nor in the cache
                await client.get(l1.object_key(o1.oid))
            assert await client.get(l1.object_key(o2.oid)) == b"d" * o2.object_size
            assert await l1.get_object(o1.oid) is None
            await l1.set_start_offset(P0, 20)
            await client.flush("gcd")
            await asyncio.sleep(delay_s + 0.2)
            assert (await l1.collect_garbage()).objects_deleted == 0  # P1 still holds o2
            assert await client.get(l1.object_key(o2.oid)) == b"d" * o2.object_size
        async with aiohttp.ClientSession() as s, s.get(d.url + "/metrics") as r:
            text = await r.text()
        assert 'cachedaemon_l1_gc_objects_deleted_total{domain="gcd"} 1.0' in text
        assert f'cachedaemon_l1_gc_bytes_deleted_total{{domain="gcd"}} {o1.object_size}.0' in text


async def test_rows_survive_kill_9_and_reach_a_read_replica(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    q = TopicIdPartition(uuid.uuid4(), 3)
    with start_daemon(tmp_path / "w", remote=bucket) as w:
        async with AsyncClient(w.url) as client:
            l1 = L1Client(client, "dur")
            await add(l1, [obj(ext(q, 0, 9))], [term(q, 4, 0)])
            await add(l1, [obj(ext(q, 10, 14))], [term(q, 4, 10)])
        w.kill()
    with start_daemon(tmp_path / "w", remote=bucket) as w, \
            start_daemon(tmp_path / "r", "--read-only", "--metastore-refresh-interval", "1s",
                         remote=bucket) as r:
        async with AsyncClient(w.url) as cw, AsyncClient(r.url) as cr:
            lw, lr = L1Client(cw, "dur"), L1Client(cr, "dur")
            offsets = await lw.get_offsets(q)
            assert (offsets.start_offset, offsets.next_offset) == (0, 15)
            assert await lw.get_term_for_offset(q, 12) == 4
            await cw.flush("dur")
            assert (await lr.get_offsets(q)).next_offset == 15
            with pytest.raises(ReadOnly):
                await lr.add_objects([obj(ext(q, 15, 19))], [term(q, 4, 15)])
            with pytest.raises(ReadOnly):
                await lr.preregister_objects(1)
            with pytest.raises(ReadOnly):
                await lr.collect_garbage()
            await lw.set_start_offset(q, 10)
            await cw.flush("dur")
            deadline = time.monotonic() + 1.0 + 1.5
            while (await lr.get_offsets(q)).start_offset != 10:
                assert time.monotonic() < deadline, "the replica did not refresh"
                await asyncio.sleep(0.05)
            assert (await lr.get_first_ge(q, 0)).base_offset == 10


async def test_a_second_writer_fences_the_first_for_l1_writes(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    common = ("--metastore-wal", "remote")
    q = TopicIdPartition(uuid.uuid4(), 0)
    with start_daemon(tmp_path / "a", *common, remote=bucket) as a, \
            start_daemon(tmp_path / "b", *common, remote=bucket) as b:
        async with AsyncClient(a.url) as ca, AsyncClient(b.url) as cb:
            la, lb = L1Client(ca, "fx"), L1Client(cb, "fx")
            await add(la, [obj(ext(q, 0, 9))])
            await ca.flush("fx")
            await add(la, [obj(ext(q, 10, 19))])  # only in a's log so far
            assert await add(lb, [obj(ext(q, 20, 29))]) == {}  # b took over
            with pytest.raises(Fenced):
                await la.preregister_objects(1)
            with pytest.raises(Fenced):
                await la.set_start_offset(q, 5)
            part = await lb.get_partition(q)
            assert (part.next_offset, part.num_extents) == (30, 3)  # nothing acknowledged lost
