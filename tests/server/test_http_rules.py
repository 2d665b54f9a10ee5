"""RFC 9110 details of the object routes (issue 13), on a hit and on a miss: conditional lists,
strong If-Match, If-None-Match giving 304 on GET and HEAD, If-Range, the range unit in any
case, conditional PUTs; and a PUT that reserves as its body arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.server.conftest import part_files
from tests.support.daemon import DaemonProcess, start_daemon
from tests.support.http import fetch

BODY = b"0123456789abcdef"


async def stored(daemon: DaemonProcess, key: str, *, cached: bool) -> str:
    r = await fetch("PUT", f"{daemon.url}/v1/objects/{key}", data=BODY)
    assert r.status == 201
    if not cached:
        assert (await fetch("DELETE", f"{daemon.url}/v1/cache/objects/{key}")).status == 204
    return str(r.json()["etag"])


async def get(daemon: DaemonProcess, key: str, method: str = "GET", **headers: str):  # type: ignore[no-untyped-def]
    return await fetch(method, f"{daemon.url}/v1/objects/{key}", headers=headers)


@pytest.mark.parametrize("cached", [True, False], ids=["hit", "miss"])
async def test_if_match_takes_lists_and_compares_strongly(daemon: DaemonProcess,
                                                          cached: bool) -> None:
    key = f"rules/if-match-{cached}"
    etag = await stored(daemon, key, cached=cached)
    assert (await get(daemon, key, **{"If-Match": f'"nope", {etag}'})).body == BODY
    assert (await get(daemon, key, **{"If-Match": "*"})).status == 200
    weak = await get(daemon, key, **{"If-Match": f"W/{etag}"})
    assert weak.status == 412 and weak.error_code == "precondition_failed"
    assert (await get(daemon, key, **{"If-Match": '"a", "b"'})).status == 412
    assert (await get(daemon, "rules/absent", **{"If-Match": "*"})).status == 412


@pytest.mark.parametrize("cached", [True, False], ids=["hit", "miss"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_if_none_match_gives_304(daemon: DaemonProcess, cached: bool, method: str) -> None:
    key = f"rules/inm-{cached}-{method}"
    etag = await stored(daemon, key, cached=cached)
    for value in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = await get(daemon, key, method, **{"If-None-Match": value})
        assert r.status == 304 and r.body == b"" and r.headers["ETag"] == etag, value
    r = await get(daemon, key, method, **{"If-None-Match": '"other"'})
    assert r.status == 200


@pytest.mark.parametrize("cached", [True, False], ids=["hit", "miss"])
async def test_if_range_and_the_range_unit(daemon: DaemonProcess, cached: bool) -> None:
    key = f"rules/range-{cached}"
    etag = await stored(daemon, key, cached=cached)
    r = await get(daemon, key, **{"Range": "BYTES=0-3"})
    assert r.status == 206 and r.body == BODY[:4]
    r = await get(daemon, key, **{"Range": "bytes=2-5", "If-Range": etag})
    assert r.status == 206 and r.body == BODY[2:6]
    for stale in ('"older-version"', f"W/{etag}", "Sat, 05 Dec 2026 08:00:00 GMT"):
        r = await get(daemon, key, **{"Range": "bytes=2-5", "If-Range": stale})
        assert r.status == 200 and r.body == BODY, stale  # the whole object
    r = await get(daemon, key, **{"Range": "bytes=0-1,4-5"})
    assert r.status == 200 and r.body == BODY


async def test_conditional_puts(daemon: DaemonProcess) -> None:
    url = f"{daemon.url}/v1/objects/rules/put"
    absent = await fetch("PUT", url, data=b"v0", headers={"If-Match": "*"})
    assert absent.status == 412
    first = await fetch("PUT", url, data=b"v1", headers={"If-None-Match": "*"})
    assert first.status == 201
    v1 = first.json()["etag"]
    assert (await fetch("PUT", url, data=b"x", headers={"If-None-Match": "*"})).status == 412
    assert (await fetch("PUT", url, data=b"x", headers={"If-Match": f"W/{v1}"})).status == 412
    assert (await fetch("PUT", url, data=b"x", headers={"If-None-Match": f'"z", {v1}'})
            ).status == 412
    second = await fetch("PUT", url, data=b"v2", headers={"If-Match": f'"z", {v1}'})
    assert second.status == 201
    third = await fetch("PUT", url, data=b"v3", headers={"If-Match": "*"})
    assert third.status == 201
    fourth = await fetch("PUT", url, data=b"v4", headers={"If-None-Match": f"{v1}"})
    assert fourth.status == 201  # the current version is v3's, not v1's
    assert (await fetch("GET", url)).body == b"v4"


def test_an_upload_reserves_as_its_body_arrives(tmp_path: Path) -> None:
    with start_daemon(tmp_path / "d", "--cache-max-bytes", "64MiB",
                      "--server-body-timeout", "2s") as d:
        async def scenario() -> None:
            reader, writer = await asyncio.open_connection(d.host, d.port)
            writer.write(b"PUT /v1/objects/greedy HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 67108864\r\n\r\n" + b"g" * 1000)
            await asyncio.sleep(0.5)
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            assert 0 < st["bytes_reserved"] <= 1024 * 1024  # not the 64 MiB announced
            # Everybody else can still write.
            for i in range(5):
                r = await fetch("PUT", f"{d.url}/v1/objects/other/{i}", data=b"o" * 5_000_000)
                assert r.status == 201
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 408")
            writer.close()
            st = (await fetch("GET", f"{d.url}/v1/cache")).json()
            assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
            assert (await fetch("GET", f"{d.url}/v1/objects/greedy")).status == 404
        asyncio.run(scenario())
    assert not part_files(tmp_path / "d")
