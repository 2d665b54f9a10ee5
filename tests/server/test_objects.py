"""End-to-end object routes against one long-lived daemon on a local (file://) bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.server.conftest import cache_files, part_files
from tests.support.daemon import DaemonProcess
from tests.support.http import Reply, fetch

SIZES = [0, 1, 4096, 1024 * 1024 + 7, 40 * 1024 * 1024]


def obj(d: DaemonProcess, key: str) -> str:
    return f"{d.url}/v1/objects/{key}"


async def put(d: DaemonProcess, key: str, data: bytes, **headers: str) -> Reply:
    return await fetch("PUT", obj(d, key), data=data, headers=headers or None)


async def cache_stats(d: DaemonProcess) -> dict[str, int]:
    r = await fetch("GET", f"{d.url}/v1/cache")
    assert r.status == 200
    return r.json()  # type: ignore[no-any-return]


def md5q(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


@pytest.mark.parametrize("size", SIZES)
async def test_put_get_head_delete_sizes(daemon: DaemonProcess, size: int) -> None:
    data = os.urandom(size)
    key = f"sizes/obj-{size}"
    r = await put(daemon, key, data)
    assert r.status == 201, r.body
    assert r.json() == {"key": key, "size": size, "etag": md5q(data)}
    assert r.headers["ETag"] == md5q(data)
    # The bucket holds it (a file:// bucket keeps the plain bytes).
    assert (daemon.data_dir / "bucket" / key).read_bytes() == data
    g = await fetch("GET", obj(daemon, key))
    assert g.status == 200 and g.body == data
    assert g.headers["X-Cache"] == "hit"
    assert g.headers["ETag"] == md5q(data)
    assert int(g.headers["Content-Length"]) == size
    h = await fetch("HEAD", obj(daemon, key))
    assert h.status == 200 and h.body == b"" and int(h.headers["Content-Length"]) == size
    assert h.headers["ETag"] == md5q(data)
    # Drop the local copy: next GET is a miss that fills the cache again.
    assert (await fetch("DELETE", f"{daemon.url}/v1/cache/objects/{key}")).status == 204
    g = await fetch("GET", obj(daemon, key))
    assert g.status == 200 and g.body == data and g.headers["X-Cache"] == "miss"
    assert g.headers["ETag"] == md5q(data)
    g = await fetch("GET", obj(daemon, key))
    assert g.headers["X-Cache"] == "hit" and g.body == data
    d = await fetch("DELETE", obj(daemon, key))
    assert d.status == 204
    g = await fetch("GET", obj(daemon, key))
    assert g.status == 404 and g.error_code == "not_found"
    assert not (daemon.data_dir / "bucket" / key).exists()


async def test_head_counts_neither_hit_nor_miss(daemon: DaemonProcess) -> None:
    await put(daemon, "head/x", b"abc")
    await fetch("DELETE", f"{daemon.url}/v1/cache/objects/head/x")
    before = await cache_stats(daemon)
    h = await fetch("HEAD", obj(daemon, "head/x"))
    assert h.status == 200 and h.headers["X-Cache"] == "miss"
    assert (await fetch("HEAD", obj(daemon, "head/missing"))).status == 404
    after = await cache_stats(daemon)
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    # ...and it did not fill the cache.
    g = await fetch("GET", obj(daemon, "head/x"))
    assert g.headers["X-Cache"] == "miss"
    after2 = await cache_stats(daemon)
    assert after2["misses"] == before["misses"] + 1


@pytest.mark.parametrize("cached", [True, False])
async def test_ranges(daemon: DaemonProcess, cached: bool) -> None:
    data = os.urandom(200_000)
    key = f"ranges/{cached}"
    assert (await put(daemon, key, data)).status == 201
    cases = {"bytes=0-9": (0, 9), "bytes=100-": (100, 199_999), "bytes=-5": (199_995, 199_999),
             "bytes=199999-300000": (199_999, 199_999), "bytes=70000-170000": (70000, 170000)}
    for header, (a, b) in cases.items():
        if not cached:
            await fetch("DELETE", f"{daemon.url}/v1/cache/objects/{key}")
        r = await fetch("GET", obj(daemon, key), headers={"Range": header})
        assert r.status == 206, (header, r.body[:200])
        assert r.body == data[a:b + 1]
        assert r.headers["Content-Range"] == f"bytes {a}-{b}/{len(data)}"
        assert int(r.headers["Content-Length"]) == b - a + 1
        assert r.headers["X-Cache"] == ("hit" if cached else "miss")
    for header in ("bytes=200000-", "bytes=500000-600000", "bytes=-0"):
        r = await fetch("GET", obj(daemon, key), headers={"Range": header})
        assert r.status == 416 and r.error_code == "invalid_range"
        assert r.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_conditional_puts(daemon: DaemonProcess) -> None:
    key = "cond/k"
    r = await put(daemon, key, b"v1", **{"If-None-Match": "*"})
    assert r.status == 201
    etag1 = r.json()["etag"]
    r = await put(daemon, key, b"v2", **{"If-None-Match": "*"})
    assert r.status == 412 and r.error_code == "precondition_failed"
    r = await put(daemon, key, b"v2", **{"If-Match": '"0123"'})
    assert r.status == 412 and r.error_code == "precondition_failed"
    r = await put(daemon, "cond/missing", b"v", **{"If-Match": etag1})
    assert r.status == 412
    r = await put(daemon, key, b"v2", **{"If-Match": etag1})
    assert r.status == 201
    g = await fetch("GET", obj(daemon, key))
    assert g.body == b"v2" and g.headers["ETag"] == md5q(b"v2")
    # Refused conditional writes left nothing behind.
    assert (await fetch("GET", obj(daemon, "cond/missing"))).status == 404
    assert not part_files(daemon.data_dir)


async def test_replace_never_serves_stale_copy(daemon: DaemonProcess) -> None:
    key = "replace/k"
    for i in range(5):
        data = f"version {i}".encode() * (i + 1)
        assert (await put(daemon, key, data)).status == 201
        g = await fetch("GET", obj(daemon, key))
        assert g.body == data and g.headers["ETag"] == md5q(data)


async def test_listing(daemon: DaemonProcess) -> None:
    keys = [f"list/{i:03d}" for i in range(25)] + ["list/a/b", "list/a"]
    for k in keys:
        assert (await put(daemon, k, k.encode())).status == 201
    seen: list[str] = []
    after = ""
    while True:
        url = f"{daemon.url}/v1/objects?prefix=list/&limit=7"
        if after:
            url += f"&start_after={after}"
        r = await fetch("GET", url)
        assert r.status == 200
        page = r.json()
        assert len(page["objects"]) <= 7
        for o in page["objects"]:
            assert set(o) == {"key", "size", "etag"}
            assert o["size"] == len(o["key"]) and o["etag"] == md5q(o["key"].encode())
        seen += [o["key"] for o in page["objects"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted(keys)
    r = await fetch("GET", f"{daemon.url}/v1/objects?prefix=list/0&limit=10000")
    assert r.status == 200 and len(r.json()["objects"]) == 25
    for bad in ("10001", "0", "-1", "abc", "1e3"):
        r = await fetch("GET", f"{daemon.url}/v1/objects?limit={bad}")
        assert r.status == 400 and r.error_code == "invalid_argument", bad
    r = await fetch("GET", f"{daemon.url}/v1/objects?prefix=%ff")
    assert r.status == 400


BAD_KEYS = ["a/../b", "..", ".", "a/./b", "%2E%2E", "a%2F..%2Fb", "..%2F..%2Fescaped", "a/",
            "a//b", "a%00b", "%ff%fe", "a%zz", "k.part", "x/k.part", "a" * 1025,
            "s/" + "c" * 256, "%2Fabs", "..%2Fescaped2"]


@pytest.mark.parametrize("raw", BAD_KEYS)
async def test_invalid_keys(daemon: DaemonProcess, raw: str) -> None:
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        r = await fetch(method, obj(daemon, raw), data=b"x" if method == "PUT" else None)
        assert r.status == 400, (method, raw, r.status)
        if method != "HEAD":
            assert r.error_code == "invalid_key"
    r = await fetch("DELETE", f"{daemon.url}/v1/cache/objects/{raw}")
    assert r.status == 400 and r.error_code == "invalid_key"
    root = daemon.data_dir.parent
    assert not any(p.name.startswith("escaped") for p in root.parent.rglob("escaped*"))


async def test_percent_2f_is_slash(daemon: DaemonProcess) -> None:
    assert (await put(daemon, "slash%2Fkey", b"s")).status == 201
    g = await fetch("GET", obj(daemon, "slash/key"))
    assert g.status == 200 and g.body == b"s"
    assert (daemon.data_dir / "bucket" / "slash" / "key").read_bytes() == b"s"
    g = await fetch("GET", obj(daemon, "%E2%82%AC%20sign"))
    assert g.status == 404
    assert (await put(daemon, "%E2%82%AC%20sign", b"e")).status == 201
    r = await fetch("GET", f"{daemon.url}/v1/objects?prefix=%E2%82%AC")
    assert [o["key"] for o in r.json()["objects"]] == ["€ sign"]


async def test_unknown_routes_and_methods(daemon: DaemonProcess) -> None:
    for method, path in [("GET", "/"), ("GET", "/v1"), ("GET", "/v2/objects/a"),
                         ("POST", "/v1/objects/a"), ("PATCH", "/v1/cache"),
                         ("GET", "/v1/cache/trim")]:
        r = await fetch(method, daemon.url + path)
        assert r.status == 404 and r.error_code == "not_found", (method, path)


async def test_too_large_by_content_length(daemon: DaemonProcess) -> None:
    # Announce 100 MiB (over the 48 MiB limit) and send nothing: refused at once.
    host, port = daemon.host, daemon.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"PUT /v1/objects/big HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413"), head
    writer.close()
    assert (await fetch("GET", obj(daemon, "big"))).status == 404
    assert not part_files(daemon.data_dir)


async def test_too_large_streamed(small_daemon: DaemonProcess) -> None:
    async def body():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB in all, over the 1 MiB limit

    r = await fetch("PUT", obj(small_daemon, "stream-big"), data=body())
    assert r.status == 413 and r.error_code == "too_large"
    assert (await fetch("GET", obj(small_daemon, "stream-big"))).status == 404
    st = await cache_stats(small_daemon)
    assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
    assert not part_files(small_daemon.data_dir)


async def test_bad_headers(daemon: DaemonProcess) -> None:
    r = await put(daemon, "hdr/k", b"x", **{"X-Deadline-Ms": "soon"})
    assert r.status == 400 and r.error_code == "invalid_argument"
    assert (await fetch("GET", obj(daemon, "hdr/k"))).status == 404
    # An ETag list on PUT is RFC 9110's: 412 only when the current version matches.
    r = await put(daemon, "hdr/k", b"x", **{"If-None-Match": '"abc"'})
    assert r.status == 201
    etag = r.json()["etag"]
    r = await put(daemon, "hdr/k", b"y", **{"If-None-Match": f'"abc", {etag}'})
    assert r.status == 412
    r = await put(daemon, "hdr/k", b"y", **{"If-Match": '"a"', "If-None-Match": "*"})
    assert r.status == 400  # one or the other


async def test_concurrent_misses_share_one_download(daemon: DaemonProcess) -> None:
    data = os.urandom(8 * 1024 * 1024)
    key = "flight/k"
    assert (await put(daemon, key, data)).status == 201
    await fetch("DELETE", f"{daemon.url}/v1/cache/objects/{key}")
    before = await download_bytes(daemon)
    async with aiohttp.ClientSession() as s:
        replies = await asyncio.gather(*(fetch("GET", obj(daemon, key), session=s)
                                         for _ in range(12)))
    assert all(r.status == 200 and r.body == data for r in replies)
    assert sum(r.headers["X-Cache"] == "miss" for r in replies) >= 1
    downloaded = await download_bytes(daemon) - before
    assert downloaded < 3 * len(data), downloaded  # one download, not twelve


async def download_bytes(d: DaemonProcess) -> float:
    r = await fetch("GET", f"{d.url}/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith("cachedaemon_download_bytes_total "):
            return float(line.split()[1])
    return 0.0


async def test_cache_admin(daemon: DaemonProcess) -> None:
    st = await cache_stats(daemon)
    assert set(st) == {"bytes_used", "objects", "bytes_reserved", "objects_reserved",
                       "max_bytes", "max_objects", "hits", "misses", "trims", "shards"}
    assert all(isinstance(v, int) for v in st.values())
    assert st["max_bytes"] == 256 * 1024 * 1024 and st["shards"] == daemon.shards
    files = cache_files(daemon.data_dir)
    assert st["objects"] == len(files)
    assert st["bytes_used"] == sum(p.stat().st_size for p in files)
    r = await fetch("POST", f"{daemon.url}/v1/cache/trim")
    assert r.status == 200 and set(r.json()) == {"bytes_freed", "objects_freed"}
    assert (await cache_stats(daemon))["trims"] >= st["trims"] + 1
    r = await fetch("DELETE", f"{daemon.url}/v1/cache/objects/never/cached")
    assert r.status == 204


async def test_health_metrics_openapi(daemon: DaemonProcess) -> None:
    r = await fetch("GET", f"{daemon.url}/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert (await fetch("GET", f"{daemon.url}/readyz")).status == 200
    await put(daemon, "metrics/some-secret-key-name", b"m")
    await fetch("GET", obj(daemon, "metrics/some-secret-key-name"))
    r = await fetch("GET", f"{daemon.url}/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    for name in ("cachedaemon_cache_bytes", "cachedaemon_cache_objects",
                 "cachedaemon_cache_hits_total", "cachedaemon_cache_misses_total",
                 "cachedaemon_cache_trims_total", "cachedaemon_http_requests_total",
                 "cachedaemon_http_request_duration_seconds_bucket",
                 "cachedaemon_upload_bytes_total", "cachedaemon_download_bytes_total"):
        assert f"\n{name}" in text, name
    assert "some-secret-key-name" not in text
    assert ('cachedaemon_http_requests_total{method="PUT",route="/v1/objects/{key+}",'
            'status="201"}') in text
    assert 'cachedaemon_http_request_duration_seconds_bucket{le="0.001",method="GET",' \
           'route="/v1/objects/{key+}"}' in text or 'route="/v1/objects/{key+}"' in text
    spec = (await fetch("GET", f"{daemon.url}/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert {"put", "get", "head", "delete"} <= set(spec["paths"]["/v1/objects/{key}"])


def test_no_files_outside_data_dir(daemon: DaemonProcess) -> None:
    parent: Path = daemon.data_dir.parent
    assert {p.name for p in parent.iterdir()} <= {"data"}


def test_port_in_use_socket_probe(daemon: DaemonProcess) -> None:
    # Sanity for the port-in-use test: the daemon's port is really taken.
    with socket.socket() as s, pytest.raises(OSError):
        s.bind((daemon.host, daemon.port))


async def test_client_disconnect_mid_put_leaves_nothing(daemon: DaemonProcess) -> None:
    _reader, writer = await asyncio.open_connection(daemon.host, daemon.port)
    writer.write(b"PUT /v1/objects/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n")
    writer.write(os.urandom(1_500_000))
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    st: dict[str, int] = {}
    for _ in range(100):
        st = await cache_stats(daemon)
        if st["bytes_reserved"] == 0 and not part_files(daemon.data_dir):
            break
        await asyncio.sleep(0.05)
    assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
    assert not part_files(daemon.data_dir)
    assert (await fetch("GET", obj(daemon, "gone"))).status == 404
    assert not (daemon.data_dir / "bucket" / "gone").exists()
    # And the daemon still serves.
    assert (await put(daemon, "after-gone", b"ok")).status == 201


async def test_expect_100_continue(daemon: DaemonProcess) -> None:
    reader, writer = await asyncio.open_connection(daemon.host, daemon.port)
    try:
        writer.write(b"PUT /v1/objects/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.9)  # curl waits 1 s
        assert line.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 201")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length:")))
        await reader.readexactly(length)
        # Over the limit: refused at once, no 100 Continue first.
        writer.write(b"PUT /v1/objects/expect2 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(65536), 10)
        assert b"HTTP/1.1 413" in rest and b"100 Continue" not in rest
    finally:
        writer.close()
    assert (await fetch("GET", obj(daemon, "expect"))).body == b"hello"
