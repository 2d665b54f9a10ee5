"""Space pressure on a small cache, and fuzzed keys/ranges/headers that must never yield a 500.

Both run against module-scoped daemons (fuzzing a fresh process per example would be slow)."""

from __future__ import annotations

import asyncio
import os
import urllib.parse

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import cache_files, part_files
from tests.support.daemon import DaemonProcess
from tests.support.http import fetch


async def test_concurrent_puts_to_a_small_cache(small_daemon: DaemonProcess) -> None:
    d = small_daemon
    url = d.url

    async def one(i: int, s: aiohttp.ClientSession) -> tuple[int, str | None]:
        r = await fetch("PUT", f"{url}/v1/objects/p/{i}", data=os.urandom(700_000),
                        headers={"X-Deadline-Ms": "300"}, session=s)
        if r.status == 503:
            assert int(r.headers["Retry-After"]) >= 1
        return r.status, r.error_code

    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(one(i, s) for i in range(16)))
    statuses = {st_ for st_, _ in results}
    assert statuses <= {201, 503}, results
    assert any(st_ == 201 for st_, _ in results)
    for status, code in results:
        if status == 503:
            assert code == "cache_full"
    st = (await fetch("GET", f"{url}/v1/cache")).json()
    assert st["bytes_reserved"] == 0 and st["objects_reserved"] == 0
    assert st["bytes_used"] <= st["max_bytes"]
    files = cache_files(d.data_dir)
    assert st["objects"] == len(files)
    assert st["bytes_used"] == sum(p.stat().st_size for p in files)
    assert not part_files(d.data_dir)
    # Every acknowledged object is in the bucket whatever the cache kept.
    for i, (status, _) in enumerate(results):
        if status == 201:
            r = await fetch("GET", f"{url}/v1/objects/p/{i}")
            assert r.status == 200 and len(r.body) == 700_000


async def test_sequential_puts_evict_old_entries(small_daemon: DaemonProcess) -> None:
    # A full cache whose entries can be evicted takes new writes without waiting.
    for i in range(8):
        r = await fetch("PUT", f"{small_daemon.url}/v1/objects/seq/{i}",
                        data=os.urandom(600_000), headers={"X-Deadline-Ms": "2000"})
        assert r.status == 201, r.body
    r = await fetch("GET", f"{small_daemon.url}/v1/objects/seq/0")
    assert r.status == 200 and r.headers["X-Cache"] == "miss"  # evicted, read from the bucket


async def test_object_too_big_for_the_cache_streams_through(small_daemon: DaemonProcess) -> None:
    # Put a 1.9 MiB object in the bucket behind the daemon's back (over max_object_bytes, so
    # it cannot be PUT through it); a GET streams it without caching.
    data = os.urandom(1_900_000)
    path = small_daemon.data_dir / "bucket" / "huge"
    path.write_bytes(data)
    for _ in range(2):
        r = await fetch("GET", f"{small_daemon.url}/v1/objects/huge")
        assert r.status == 200 and r.body == data and r.headers["X-Cache"] == "miss"
    st = (await fetch("GET", f"{small_daemon.url}/v1/cache")).json()
    assert st["bytes_reserved"] == 0


_key_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40)
_raw_paths = st.one_of(
    _key_text.map(lambda t: urllib.parse.quote(t, safe="/")),
    st.text(alphabet="ab/.%2Ffx0-_~", max_size=30),
    st.lists(st.sampled_from(["a", ".", "..", "", "%2e", "%2F", "%00", "%ff", "b.part",
                              "%", "x" * 300]), max_size=5).map("/".join),
)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=_raw_paths, method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))
def test_fuzzed_keys_never_500(daemon: DaemonProcess, raw: str, method: str) -> None:
    r = asyncio.run(fetch(method, f"{daemon.url}/v1/objects/{raw}",
                          data=b"f" if method == "PUT" else None))
    assert r.status < 500, (raw, r.status, r.body)
    if r.status == 400 and method != "HEAD":
        assert r.error_code == "invalid_key"
    outside = daemon.data_dir.parent
    assert {p.name for p in outside.iterdir()} <= {"data"}


_range_obj_stored: set[str] = set()  # daemons (urls) that hold the object


@FUZZ
@given(header=st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, b: f"bytes={a}-{b}",
              st.one_of(st.just(""), st.integers(0, 2**70).map(str)),
              st.one_of(st.just(""), st.integers(0, 2**70).map(str))),
))
def test_fuzzed_ranges_never_500(daemon: DaemonProcess, header: str) -> None:
    async def go() -> None:
        if daemon.url not in _range_obj_stored:
            r = await fetch("PUT", f"{daemon.url}/v1/objects/fuzz/range", data=b"0123456789")
            assert r.status == 201
            _range_obj_stored.add(daemon.url)
        for cached in (True, False):
            if not cached:
                await fetch("DELETE", f"{daemon.url}/v1/cache/objects/fuzz/range")
            else:
                await fetch("GET", f"{daemon.url}/v1/objects/fuzz/range")  # fill
            try:
                r = await fetch("GET", f"{daemon.url}/v1/objects/fuzz/range",
                                headers={"Range": header})
            except ValueError:
                return  # the client refuses to send this header (newline etc.)
            assert r.status in (200, 206, 416), (header, r.status, r.body)
            if r.status == 206:
                a, b = map(int, r.headers["Content-Range"].split()[1].split("/")[0].split("-"))
                assert r.body == b"0123456789"[a:b + 1]

    asyncio.run(go())


_header_names = st.sampled_from(["If-None-Match", "If-Match", "X-Deadline-Ms", "Range",
                                 "Content-Type", "Authorization", "Accept-Encoding",
                                 "Transfer-Encoding", "Expect"])
_header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                         max_size=30)


@FUZZ
@given(headers=st.dictionaries(_header_names, _header_values, max_size=4),
       method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]))
def test_fuzzed_headers_never_500(daemon: DaemonProcess, headers: dict[str, str],
                                  method: str) -> None:
    async def go() -> None:
        try:
            r = await fetch(method, f"{daemon.url}/v1/objects/fuzz/hdr", headers=headers,
                            data=b"payload" if method == "PUT" else None)
        except (aiohttp.ClientError, ValueError):
            return  # a header the client or server refuses at the HTTP level
        assert r.status < 500, (headers, r.status, r.body)

    asyncio.run(go())
