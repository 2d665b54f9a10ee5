"""The client's key-value methods, against a small in-memory fake of the kv routes
(``tests/support/kv_fake.py``) that records every request, so the exact spelling can be checked:
path and base64 encoding of arbitrary byte keys, the number of pages an auto-paginated scan
fetches in both directions, batches, and error codes the real daemon rarely gives (``fenced``).
The same methods run against the real daemon in ``test_client_daemon.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachedaemon.client import AsyncClient, Client, KvDelete, KvPut
from cachedaemon.errors import Fenced, InvalidArgument, NotFound, TooLarge, Unauthorized
from tests.support.kv_fake import KvFake, running_fake

ODD_KEYS = [b"plain", b"a/b/c", b"\x00\xff\xfe", b"sp ace+plus=eq%pct?q#h", "ünï".encode()]


@pytest.fixture
def fake() -> Iterator[KvFake]:
    yield from running_fake()


async def test_put_get_delete_round_trip_arbitrary_byte_keys(fake: KvFake) -> None:
    async with AsyncClient(fake.url) as c:
        for i, key in enumerate(ODD_KEYS):
            await c.kv_put("dom", key, b"v%d" % i)
        # The fake decodes the raw path, so a wrongly escaped key would land elsewhere.
        assert fake.domains["dom"].items == {k: b"v%d" % i for i, k in enumerate(ODD_KEYS)}
        for i, key in enumerate(ODD_KEYS):
            assert await c.kv_get("dom", key) == b"v%d" % i
        assert await c.kv_get("dom", "plain") == b"v0"  # str keys are UTF-8
        await c.kv_delete("dom", b"a/b/c")
        with pytest.raises(NotFound):
            await c.kv_get("dom", b"a/b/c")
        await c.kv_delete("dom", b"a/b/c")  # absent: still fine
    # "/" inside a kv key is escaped: the key is one path segment.
    assert any(m == "PUT" and p.endswith("/a%2Fb%2Fc") for m, p in fake.requests)


async def test_scan_follows_next_forward_reverse_and_with_prefix(fake: KvFake) -> None:
    keys = [b"k%02d" % i for i in range(25)] + [b"other"]
    fake.domains.clear()
    async with AsyncClient(fake.url) as c:
        await c.kv_batch("dom", [KvPut(k, k.upper()) for k in keys])
        got = [kv async for kv in c.kv_scan("dom", prefix=b"k", page_size=7)]
        assert got == [(k, k.upper()) for k in keys[:25]]
        pages = sum(1 for m, p in fake.requests if m == "GET" and "/scan" in p)
        assert pages == 4  # 7 + 7 + 7 + 4

        rev = [k async for k, _ in c.kv_scan("dom", reverse=True, page_size=4)]
        assert rev == sorted(keys, reverse=True)

        bounded = [k async for k, _ in c.kv_scan("dom", start=b"k05", end=b"k09", page_size=2)]
        assert bounded == [b"k05", b"k06", b"k07", b"k08"]
        rev_bounded = [
            k async for k, _ in c.kv_scan("dom", start=b"k05", end=b"k09", reverse=True,
                                          page_size=3)
        ]
        assert rev_bounded == [b"k08", b"k07", b"k06", b"k05"]

        items, nxt = await c.kv_scan_page("dom", limit=2)
        assert [k for k, _ in items] == [b"k00", b"k01"] and nxt == b"k02"


async def test_scan_query_escapes_base64(fake: KvFake) -> None:
    # b"\xfb\xff" is "+/8=" in base64: every character needs escaping in a query.
    async with AsyncClient(fake.url) as c:
        await c.kv_put("dom", b"\xfb\xff", b"x")
        await c.kv_put("dom", b"\xfb\xfe", b"y")
        got = [kv async for kv in c.kv_scan("dom", start=b"\xfb\xff")]
        assert got == [(b"\xfb\xff", b"x")]
    scan_paths = [p for m, p in fake.requests if "/scan" in p]
    assert "start=%2B%2F8%3D" in scan_paths[-1]


async def test_batch_is_sent_as_base64_ops(fake: KvFake) -> None:
    async with AsyncClient(fake.url) as c:
        await c.kv_put("dom", b"gone", b"1")
        await c.kv_batch("dom", [("put", b"\x00a", b"\xff"), KvDelete(b"gone"),
                                 ("put", "txt", b"t")])
        assert fake.domains["dom"].items == {b"\x00a": b"\xff", b"txt": b"t"}
        with pytest.raises(TypeError):
            await c.kv_batch("dom", [("upsert", b"k")])


async def test_domains_info_flush_compact(fake: KvFake) -> None:
    async with AsyncClient(fake.url) as c:
        with pytest.raises(NotFound):
            await c.domain_info("nope")
        await c.kv_put("alpha", b"k", b"v")
        await c.kv_put("beta", b"k", b"v")
        assert await c.domains() == ["alpha", "beta"]
        info = await c.domain_info("alpha")
        assert (info.name, info.last_seqno, info.persisted_seqno) == ("alpha", 1, 0)
        await c.flush("alpha")
        info = await c.domain_info("alpha")
        assert info.persisted_seqno == info.last_seqno == 1
        assert info.levels[0].files == 1 and info.read_only is False
        await c.compact("alpha")
        assert fake.domains["alpha"].compactions == 1


async def test_error_codes_map_to_exception_classes(fake: KvFake) -> None:
    async with AsyncClient(fake.url) as c:
        with pytest.raises(InvalidArgument) as bad:
            await c.kv_put("Bad Name", b"k", b"v")
        assert "bad domain name" in str(bad.value)
        with pytest.raises(TooLarge):
            await c.kv_put("dom", b"k", b"x" * (4 * 1024 * 1024 + 1))
        fake.fence.add("dom")
        with pytest.raises(Fenced):
            await c.kv_put("dom", b"k", b"v")


def test_token_is_sent_and_required() -> None:
    for fake in running_fake(token="s3cret"):
        with Client(fake.url) as anonymous, pytest.raises(Unauthorized):
            anonymous.kv_put("dom", b"k", b"v")
        with Client(fake.url, token="s3cret") as c:
            c.kv_put("dom", b"k", b"v")
            assert c.kv_get("dom", b"k") == b"v"


def test_blocking_client_kv(fake: KvFake) -> None:
    with Client(fake.url) as c:
        c.kv_batch("dom", [KvPut(b"k%d" % i, b"v") for i in range(10)])
        assert [k for k, _ in c.kv_scan("dom", page_size=3)] == [b"k%d" % i for i in range(10)]
        # Leaving an iterator early closes it; the client keeps working.
        it = c.kv_scan("dom", page_size=2)
        assert next(it)[0] == b"k0"
        it.close()
        assert c.domains() == ["dom"]
        assert c.domain_info("dom").last_seqno == 10
        c.kv_delete("dom", b"k0")
        with pytest.raises(NotFound):
            c.kv_get("dom", b"k0")
