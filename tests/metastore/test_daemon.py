"""The key-value API end to end, against the real daemon subprocess: the contract of
shared/API.md "Key-value domains", kill -9 in the middle of concurrent acknowledged writes
(every acknowledged write survives, no batch is half applied), two daemons on one bucket (the
older is fenced, nothing acknowledged is lost), and a read-only replica."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support.daemon import DaemonProcess, start_daemon

B64 = base64.b64encode


def b64(data: bytes) -> str:
    return B64(data).decode()


class Api:
    """A thin client for one daemon (the project's client is tested on its own)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.s = session

    async def req(self, method: str, path: str, **kw: object) -> tuple[int, bytes]:
        url = URL(self.url + path, encoded=True)  # the raw path exactly as written
        async with self.s.request(method, url, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.read()

    async def code(self, method: str, path: str, **kw: object) -> tuple[int, str | None]:
        import json

        status, body = await self.req(method, path, **kw)
        try:
            return status, json.loads(body)["error"]["code"]
        except Exception:
            return status, None

    async def json(self, method: str, path: str, **kw: object) -> object:
        import json

        status, body = await self.req(method, path, **kw)
        assert status == 200, (status, body)
        return json.loads(body)

    async def batch(self, domain: str, ops: list[dict[str, str]]) -> int:
        status, _ = await self.req("POST", f"/v1/domains/{domain}/batch", json={"ops": ops})
        return status

    async def scan_all(self, domain: str, prefix: bytes | None = None, limit: int = 1000
                       ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        params = {"limit": str(limit)}
        if prefix is not None:
            params["prefix"] = b64(prefix)
        while True:
            doc = await self.json("GET", f"/v1/domains/{domain}/scan", params=params)
            assert isinstance(doc, dict)
            out += [(base64.b64decode(i["key"]), base64.b64decode(i["value"]))
                    for i in doc["items"]]
            if doc["next"] is None:
                return out
            params["start"] = doc["next"]


@pytest.fixture
async def session() -> object:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with start_daemon(tmp_path / "data", shards=2) as d:
        yield d


async def test_kv_contract(daemon: DaemonProcess, session: aiohttp.ClientSession) -> None:
    api = Api(daemon.url, session)
    assert await api.code("GET", "/v1/kv/nosuch/k") == (404, "not_found")
    assert await api.code("GET", "/v1/domains/nosuch") == (404, "not_found")
    assert await api.code("GET", "/v1/domains/nosuch/scan") == (404, "not_found")
    for bad in ("Upper", "-dash", "a" * 64, "sp%20ace", "dot.ted"):
        assert (await api.code("PUT", f"/v1/kv/{bad}/k", data=b"v"))[0] == 400, bad
        assert await api.code("GET", f"/v1/domains/{bad}") == (400, "invalid_argument"), bad
    assert (await api.code("PUT", "/v1/kv/d/" + "k" * 4097, data=b"v"))[0] == 400
    assert await api.code("PUT", "/v1/kv/d/", data=b"v") == (400, "invalid_key")
    assert await api.code("GET", "/v1/kv/d") == (400, "invalid_key")
    assert (await api.code("PUT", "/v1/kv/d/%zz", data=b"v"))[0] == 400
    assert await api.code("PUT", "/v1/kv/d/big", data=b"x" * (4 * 1024 * 1024 + 1)) == (
        413, "too_large")

    # Arbitrary bytes in keys: percent-encoded in the path, %2F the same as /.
    assert (await api.req("PUT", "/v1/kv/d/%00%FFa%2Fb", data=b"v1"))[0] == 204
    assert await api.req("GET", "/v1/kv/d/%00%ffa/b") == (200, b"v1")
    assert (await api.req("PUT", "/v1/kv/d/" + "k" * 4096, data=b"x" * 4 * 1024 * 1024))[0] == 204
    assert (await api.req("PUT", "/v1/kv/d/empty", data=b""))[0] == 204
    assert await api.req("GET", "/v1/kv/d/empty") == (200, b"")
    assert (await api.req("DELETE", "/v1/kv/d/empty"))[0] == 204
    assert (await api.req("DELETE", "/v1/kv/d/never"))[0] == 204
    assert await api.code("GET", "/v1/kv/d/empty") == (404, "not_found")

    # Batches: atomic, strict base64.
    ops = [{"op": "put", "key": b64(b"b%d" % i), "value": b64(b"v%d" % i)} for i in range(5)]
    ops.append({"op": "delete", "key": b64(b"b0")})
    assert await api.batch("d", ops) == 204
    assert await api.code("GET", "/v1/kv/d/b0") == (404, "not_found")
    assert await api.req("GET", "/v1/kv/d/b4") == (200, b"v4")
    for bad_key in ("YQ", "YQ=", "Y-==", "YQ==\n", "", 5, None):
        bad = [{"op": "put", "key": bad_key, "value": b64(b"x")}]
        assert await api.batch("d", bad) == 400, bad_key  # type: ignore[list-item]
    assert await api.batch("d", [{"op": "merge", "key": b64(b"k")}]) == 400
    assert (await api.req("POST", "/v1/domains/d/batch", data=b"{not json"))[0] == 400
    assert (await api.req("POST", "/v1/domains/d/batch", json={"ops": {}}))[0] == 400
    # A bad op anywhere refuses the whole batch.
    assert await api.batch("d", [{"op": "put", "key": b64(b"half"), "value": b64(b"1")},
                                 {"op": "put", "key": "!!", "value": b64(b"2")}]) == 400
    assert (await api.req("GET", "/v1/kv/d/half"))[0] == 404

    # Scan: pages forward and reverse, prefix, limits.
    keys = [b"s%02d" % i for i in range(23)]
    assert await api.batch("s", [{"op": "put", "key": b64(k), "value": b64(k)} for k in keys]) \
        == 204
    assert [k for k, _ in await api.scan_all("s", limit=5)] == keys
    doc = await api.json("GET", "/v1/domains/s/scan",
                         params={"reverse": "1", "limit": "10", "end": b64(b"s15")})
    assert isinstance(doc, dict)
    assert [base64.b64decode(i["key"]) for i in doc["items"]] == keys[14:4:-1]
    doc2 = await api.json("GET", "/v1/domains/s/scan",
                          params={"reverse": "1", "limit": "10", "end": doc["next"]})
    assert isinstance(doc2, dict)
    assert [base64.b64decode(i["key"]) for i in doc2["items"]] == keys[4::-1]
    assert doc2["next"] is None
    doc3 = await api.json("GET", "/v1/domains/s/scan",
                          params={"start": b64(b"s03"), "end": b64(b"s06")})
    assert isinstance(doc3, dict)
    assert [base64.b64decode(i["key"]) for i in doc3["items"]] == keys[3:6]
    for bad_q in ({"limit": "0"}, {"limit": "10001"}, {"limit": "x"}, {"reverse": "yes"},
                  {"start": "a"}, {"prefix": "YQ"}):
        assert (await api.code("GET", "/v1/domains/s/scan", params=bad_q))[0] == 400, bad_q

    # Flush, compact, info, list.
    info = await api.json("GET", "/v1/domains/s")
    assert isinstance(info, dict)
    assert set(info) == {"name", "uuid", "epoch", "last_seqno", "persisted_seqno", "levels",
                         "read_only"}
    assert info["name"] == "s" and info["read_only"] is False and info["last_seqno"] == 23
    assert (await api.req("POST", "/v1/domains/s/flush"))[0] == 204
    info = await api.json("GET", "/v1/domains/s")
    assert isinstance(info, dict)
    assert info["persisted_seqno"] == info["last_seqno"] == 23
    assert sum(lv["files"] for lv in info["levels"]) >= 1
    assert all(set(lv) == {"level", "files", "bytes"} for lv in info["levels"])
    assert (await api.req("POST", "/v1/domains/s/compact"))[0] == 204
    assert await api.json("GET", "/v1/domains") == {"domains": ["d", "s"]}
    assert [k for k, _ in await api.scan_all("s", prefix=b"s1")] == keys[10:20]


async def _writer(api: Api, domain: str, tag: str, n: int, acked: list[int]) -> None:
    """Batches of three keys sharing one value; records the batches that were acknowledged."""
    for i in range(n):
        value = b64(f"{tag}-{i}".encode())
        ops = [{"op": "put", "key": b64(f"{tag}/{i}/{j}".encode()), "value": value}
               for j in range(3)]
        try:
            status = await api.batch(domain, ops)
        except (TimeoutError, aiohttp.ClientError):
            return
        if status != 204:
            return
        acked.append(i)


async def _check_batches(api: Api, domain: str, acked: dict[str, list[int]]) -> int:
    """Every acknowledged batch is present, and no batch is present only in part."""
    if (await api.req("GET", f"/v1/domains/{domain}"))[0] == 404:
        # Killed before the first write created the domain: then nothing was acknowledged.
        assert not any(acked.values()), "acknowledged writes but the domain does not exist"
        return 0
    items = await api.scan_all(domain, limit=10000)
    groups: dict[tuple[str, int], list[bytes]] = {}
    for key, value in items:
        tag, i, _j = key.decode().split("/")
        assert value == f"{tag}-{i}".encode(), (key, value)
        groups.setdefault((tag, int(i)), []).append(key)
    for (tag, i), got in groups.items():
        assert len(got) == 3, f"batch {tag}/{i} half applied: {got}"
    for tag, done in acked.items():
        for i in done:
            assert (tag, i) in groups, f"acknowledged batch {tag}/{i} lost"
    return len(groups)


async def _kill_loop(tmp_path: Path, session: aiohttp.ClientSession, iterations: int,
                     extra: tuple[str, ...], remote: str | None = None,
                     s3_endpoint: str | None = None) -> None:
    rng = random.Random(0xC0FFEE)
    data_dir = tmp_path / "data"
    acked: dict[str, list[int]] = {}
    total_acked = 0
    for it in range(iterations + 1):
        with start_daemon(data_dir, *extra, shards=2, remote=remote,
                          s3_endpoint=s3_endpoint) as d:
            api = Api(d.url, session)
            if it:
                await _check_batches(api, "crash", acked)
            if it == iterations:
                break
            tasks = []
            for w in range(8):
                tag = f"i{it}w{w}"
                acked[tag] = []
                tasks.append(asyncio.create_task(_writer(api, "crash", tag, 10_000, acked[tag])))
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            if rng.random() < 0.3:
                await api.req("POST", "/v1/domains/crash/flush")  # flush mid-stream sometimes
                await asyncio.sleep(rng.uniform(0.0, 0.2))
            d.kill()
            await asyncio.gather(*tasks)
            total_acked += sum(len(acked[f"i{it}w{w}"]) for w in range(8))
    assert total_acked > iterations * 8  # the writers really did get acknowledgements


async def test_kill_9_during_concurrent_writes_loses_nothing_acknowledged(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    await _kill_loop(tmp_path, session, 10, ())  # more in test_kill_9_loop_long (slow)


async def test_kill_9_with_the_remote_log(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    await _kill_loop(tmp_path, session, 4, ("--metastore-wal", "remote"))


@pytest.mark.slow
@pytest.mark.parametrize("wal", ["local", "remote"])
async def test_kill_9_loop_long(tmp_path: Path, session: aiohttp.ClientSession, wal: str) -> None:
    await _kill_loop(tmp_path, session, 100 if wal == "local" else 30, ("--metastore-wal", wal))


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.parametrize("wal", ["local", "remote"])
async def test_kill_9_loop_on_moto(tmp_path: Path, session: aiohttp.ClientSession,
                                   moto_endpoint: str, s3_bucket: str, wal: str) -> None:
    await _kill_loop(tmp_path, session, 15, ("--metastore-wal", wal), f"s3://{s3_bucket}",
                     moto_endpoint)


@pytest.mark.parametrize("point", [
    "metastore.wal.before_sync=crash@40",  # records written, not yet fsynced
    "metastore.wal.before_write=crash@40",  # a group about to be written
    "metastore.manifest.put=crash@2",  # a flush: SSTs uploaded, manifest not written
])
async def test_crash_at_fail_points_loses_nothing_acknowledged(
    tmp_path: Path, session: aiohttp.ClientSession, point: str
) -> None:
    data_dir = tmp_path / "data"
    acked: dict[str, list[int]] = {}
    with start_daemon(data_dir, env={"CACHEDAEMON_FAILPOINTS": point}) as d:
        api = Api(d.url, session)
        acked["pre"] = []
        await _writer(api, "fp", "pre", 5, acked["pre"])
        tasks = []
        for w in range(4):
            acked[f"w{w}"] = []
            tasks.append(asyncio.create_task(_writer(api, "fp", f"w{w}", 10_000, acked[f"w{w}"])))
        if "manifest" in point:
            await asyncio.sleep(0.1)
            with contextlib.suppress(aiohttp.ClientError):  # the flush is where it dies
                await api.req("POST", "/v1/domains/fp/flush")  # the open's stamp was @1
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert d.wait(10) == 137, "the fail point did not crash the daemon"
    assert sum(map(len, acked.values())) > 0
    with start_daemon(data_dir) as d:
        await _check_batches(Api(d.url, session), "fp", acked)


async def _two_daemons(tmp_path: Path, session: aiohttp.ClientSession, wal: str,
                       concurrent: bool, remote: str, s3_endpoint: str | None) -> None:
    common = ("--metastore-wal", wal, "--metastore-refresh-interval", "1s")
    with start_daemon(tmp_path / "a", *common, remote=remote, s3_endpoint=s3_endpoint) as a, \
            start_daemon(tmp_path / "b", *common, remote=remote, s3_endpoint=s3_endpoint) as b:
        api_a, api_b = Api(a.url, session), Api(b.url, session)
        acked: dict[str, list[int]] = {"a": [], "b": []}
        await _writer(api_a, "f", "a", 5, acked["a"])
        assert (await api_a.req("POST", "/v1/domains/f/flush"))[0] == 204
        await _writer(api_a, "f", "a1", 3, acked.setdefault("a1", []))  # only in a's log
        epoch_a = (await api_a.json("GET", "/v1/domains/f"))["epoch"]  # type: ignore[index]
        if concurrent:
            # a keeps writing while b takes over: a's writes stop with 409 fenced.
            task = asyncio.create_task(
                _writer(api_a, "f", "a2", 10_000, acked.setdefault("a2", [])))
            await asyncio.sleep(0.2)
            await _writer(api_b, "f", "b", 5, acked["b"])
            await asyncio.wait_for(task, 30)
        else:
            await _writer(api_b, "f", "b", 5, acked["b"])
        if wal == "local":
            # With a local log a learns of b at its next manifest write (its flush); what it
            # acknowledged before that stays in its own log (see docs/wal-format.md).
            del acked["a1"]
            assert await api_a.code("POST", "/v1/domains/f/flush") == (409, "fenced")
        assert len(acked["b"]) == 5
        assert await api_a.code("PUT", "/v1/kv/f/after", data=b"x") == (409, "fenced")
        info = await api_a.json("GET", "/v1/domains/f")
        assert isinstance(info, dict) and info["read_only"] is True
        assert "fenced" in a.logs()
        await _check_batches(api_b, "f", acked)
        info_b = await api_b.json("GET", "/v1/domains/f")
        assert isinstance(info_b, dict) and info_b["epoch"] > epoch_a
        # The fenced daemon stepped down to a replica: it reads what b flushes.
        assert (await api_b.req("PUT", "/v1/kv/f/from-b", data=b"b"))[0] == 204
        assert (await api_b.req("POST", "/v1/domains/f/flush"))[0] == 204
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0 + 1.0  # the refresh interval, and some slack
        while await api_a.req("GET", "/v1/kv/f/from-b") != (200, b"b"):
            assert loop.time() < deadline, "the stepped-down daemon did not refresh"
            await asyncio.sleep(0.05)


@pytest.mark.s3
@pytest.mark.parametrize("wal", ["remote", "local"])
async def test_two_daemons_on_one_moto_bucket_fence_the_older(
    tmp_path: Path, session: aiohttp.ClientSession, moto_endpoint: str, s3_bucket: str, wal: str
) -> None:
    # Takeover between writes: moto evaluates a conditional PUT and stores the object in
    # separate steps, so two *processes* racing on one key can both win there (real S3 is
    # atomic). The racing takeover runs on the file:// bucket below and in-process on moto.
    await _two_daemons(tmp_path, session, wal, False, f"s3://{s3_bucket}", moto_endpoint)


async def test_two_daemons_on_one_file_bucket_racing_takeover(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    await _two_daemons(tmp_path, session, "remote", True, f"file://{tmp_path / 'bucket'}", None)


async def test_read_replica_sees_a_flushed_write_within_its_refresh_interval(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    with start_daemon(tmp_path / "w", remote=bucket) as w, \
            start_daemon(tmp_path / "r", "--read-only", "--metastore-refresh-interval", "1s",
                         remote=bucket) as r:
        api_w, api_r = Api(w.url, session), Api(r.url, session)
        assert await api_r.code("GET", "/v1/kv/rep/k") == (404, "not_found")
        assert await api_r.code("PUT", "/v1/kv/rep/k", data=b"v") == (409, "read_only")
        assert (await api_w.req("PUT", "/v1/kv/rep/k", data=b"v1"))[0] == 204
        assert (await api_w.req("POST", "/v1/domains/rep/flush"))[0] == 204
        assert await api_r.req("GET", "/v1/kv/rep/k") == (200, b"v1")
        ops = [{"op": "put", "key": b64(b"k"), "value": b64(b"x")}]
        assert await api_r.code("POST", "/v1/domains/rep/batch", json={"ops": ops}) == (
            409, "read_only")
        assert await api_r.code("DELETE", "/v1/kv/rep/k") == (409, "read_only")
        assert await api_r.code("POST", "/v1/domains/rep/compact") == (409, "read_only")
        info = await api_r.json("GET", "/v1/domains/rep")
        assert isinstance(info, dict) and info["read_only"] is True
        assert (await api_w.req("PUT", "/v1/kv/rep/k", data=b"v2"))[0] == 204
        assert (await api_w.req("POST", "/v1/domains/rep/flush"))[0] == 204
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0 + 0.8
        while (await api_r.req("GET", "/v1/kv/rep/k"))[1] != b"v2":
            assert loop.time() < deadline, "the replica did not refresh within its interval"
            await asyncio.sleep(0.05)
