"""Per key, reads follow writes: bounded stress rounds against the real daemon subprocess.

Each round races writes of one key (and, for some, a cache-filling GET or a cache drop) over
separate connections, so that with ``--shards 2`` they land on either shard. Once every request
of the round has answered, the bucket's state (read from the listing, which never goes through
the cache) is the truth: a GET must return exactly that version (same ETag, same bytes) or 404
when the listing has no object, and a HEAD must agree. The rounds are bounded (a few seconds
each test); the ``slow`` variants run many more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from tests.support.daemon import DaemonProcess, start_daemon

ROUNDS = 40
SLOW_ROUNDS = 400
#: A cheap scenario whose window is narrow on one shard gets more rounds.
SCENARIO_ROUNDS = {"fill_delete": 100}
#: Random delays at the dangerous steps widen the race windows unevenly, as a slow disk or
#: network would, so that a broken ordering shows in a few rounds.
JITTER = ";".join(f"{name}=jitter:0.01" for name in (
    "server.put.before_upload", "server.put.after_upload", "server.get.before_fill_commit",
    "server.delete.after_bucket"))


@pytest.fixture(scope="module", params=[1, 2], ids=["shards1", "shards2"])
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[DaemonProcess]:
    data: Path = tmp_path_factory.mktemp("coherence") / "data"
    with start_daemon(data, "--cache-max-bytes", "256MiB", shards=request.param,
                      env={"CACHEDAEMON_FAILPOINTS": JITTER}) as d:
        yield d


class Client:
    """Each request on a fresh connection, so SO_REUSEPORT spreads them over the shards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def close(self) -> None:
        await self.session.close()

    async def req(self, method: str, path: str, data: bytes | None = None
                  ) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.request(method, URL(self.url + path, encoded=True),
                                        data=data) as r:
            return r.status, r.headers.copy(), await r.read()

    async def bucket_etag(self, key: str) -> str | None:
        """The bucket's version of ``key`` (the listing is served from the bucket)."""
        status, _, body = await self.req("GET", f"/v1/objects?prefix={key}")
        assert status == 200, body
        found = [o["etag"] for o in json.loads(body)["objects"] if o["key"] == key]
        return found[0] if found else None

    async def check(self, key: str, what: str) -> str | None:
        """GET and HEAD of ``key`` agree with the bucket. Returns the problem, if any."""
        etag = await self.bucket_etag(key)
        status, headers, body = await self.req("GET", f"/v1/objects/{key}")
        if etag is None:
            if status != 404:
                return f"{what}: bucket has no {key}, GET answered {status} {headers.get('X-Cache')}"
        else:
            if status != 200 or headers.get("ETag") != etag:
                return (f"{what}: bucket holds {etag}, GET answered {status} "
                        f"{headers.get('ETag')} ({headers.get('X-Cache')})")
            if f'"{hashlib.md5(body).hexdigest()}"' != etag:
                return f"{what}: GET's bytes are not the bucket's version {etag}"
        status, headers, _ = await self.req("HEAD", f"/v1/objects/{key}")
        if (status == 404) != (etag is None) or (etag is not None and headers.get("ETag") != etag):
            return f"{what}: bucket holds {etag}, HEAD answered {status} {headers.get('ETag')}"
        return None


def body(round_: int, writer: int) -> bytes:
    return f"round {round_} writer {writer} ".encode() * (50 + 37 * writer)


async def put_put(c: Client, key: str, round_: int) -> str | None:
    """Concurrent PUTs of one key (two of them from connections that first read it)."""
    results = await asyncio.gather(*(c.req("PUT", f"/v1/objects/{key}", body(round_, w))
                                     for w in range(4)))
    assert all(r[0] == 201 for r in results), results
    return await c.check(key, "PUT/PUT")


async def put_delete(c: Client, key: str, round_: int) -> str | None:
    results = await asyncio.gather(
        c.req("PUT", f"/v1/objects/{key}", body(round_, 0)),
        c.req("DELETE", f"/v1/objects/{key}"),
        c.req("PUT", f"/v1/objects/{key}", body(round_, 1)),
        c.req("DELETE", f"/v1/objects/{key}"),
    )
    assert [r[0] for r in results] == [201, 204, 201, 204], results
    return await c.check(key, "PUT/DELETE")


async def fill_delete(c: Client, key: str, round_: int) -> str | None:
    """A cache-filling GET racing a DELETE: after both, the object is gone."""
    assert (await c.req("PUT", f"/v1/objects/{key}", body(round_, 0)))[0] == 201
    assert (await c.req("DELETE", f"/v1/cache/objects/{key}"))[0] == 204  # next GET fills
    results = await asyncio.gather(
        c.req("GET", f"/v1/objects/{key}"),
        c.req("GET", f"/v1/objects/{key}"),
        c.req("DELETE", f"/v1/objects/{key}"),
        c.req("GET", f"/v1/objects/{key}"),
    )
    assert results[2][0] == 204
    return await c.check(key, "fill/DELETE")


async def fill_put(c: Client, key: str, round_: int) -> str | None:
    """A cache-filling GET of the old version racing a PUT of a new one."""
    assert (await c.req("PUT", f"/v1/objects/{key}", body(round_, 0)))[0] == 201
    assert (await c.req("DELETE", f"/v1/cache/objects/{key}"))[0] == 204
    results = await asyncio.gather(
        c.req("GET", f"/v1/objects/{key}"),
        c.req("PUT", f"/v1/objects/{key}", body(round_, 1)),
        c.req("GET", f"/v1/objects/{key}"),
    )
    assert results[1][0] == 201
    return await c.check(key, "fill/PUT")


async def drop_races(c: Client, key: str, round_: int) -> str | None:
    """Cache drops racing PUTs and fills never leave a copy that differs from the bucket."""
    assert (await c.req("PUT", f"/v1/objects/{key}", body(round_, 0)))[0] == 201
    await asyncio.gather(
        c.req("DELETE", f"/v1/cache/objects/{key}"),
        c.req("GET", f"/v1/objects/{key}"),
        c.req("PUT", f"/v1/objects/{key}", body(round_, 1)),
        c.req("DELETE", f"/v1/cache/objects/{key}"),
        c.req("PUT", f"/v1/objects/{key}", body(round_, 2)),
    )
    return await c.check(key, "drop races")


SCENARIOS = {"put_put": put_put, "put_delete": put_delete, "fill_delete": fill_delete,
             "fill_put": fill_put, "drop": drop_races}


async def run_rounds(d: DaemonProcess, name: str, rounds: int) -> None:
    scenario = SCENARIOS[name]
    c = Client(d.url)
    try:
        problems = []
        for r in range(rounds):
            problem = await scenario(c, f"race/{name}/{r}", r)
            if problem is not None:
                problems.append(f"round {r}: {problem}")
        assert not problems, f"{len(problems)} of {rounds} rounds broke: {problems[:5]}"
    finally:
        await c.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_reads_follow_writes(daemon: DaemonProcess, name: str) -> None:
    await run_rounds(daemon, name, SCENARIO_ROUNDS.get(name, ROUNDS))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_reads_follow_writes_long(daemon: DaemonProcess, name: str) -> None:
    await run_rounds(daemon, name, SLOW_ROUNDS)
