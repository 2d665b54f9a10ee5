"""Domain requests on several shards: whichever shard accepts the connection, a kv or L1
request runs on the domain's owner shard (forwarded whole), answers exactly as it would there,
and is counted once in the metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import aiohttp

from cachedaemon.metastore.registry import owner_shard
from tests.support.daemon import start_daemon
from tests.support.http import fetch


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_domain_requests_answer_the_same_from_every_shard(tmp_path: Path) -> None:
    names = [f"fw{i}" for i in range(8)]
    assert {owner_shard(n, 2) for n in names} == {0, 1}
    with start_daemon(tmp_path / "d", shards=2) as d:
        async def scenario() -> None:
            # A new connection per request: SO_REUSEPORT spreads them over both shards.
            for name in names:
                assert (await fetch("PUT", f"{d.url}/v1/kv/{name}/k%2F1", data=b"v1")).status \
                    == 204
                batch = {"ops": [{"op": "put", "key": b64(b"b"), "value": b64(b"2")},
                                 {"op": "delete", "key": b64(b"k/1")}]}
                r = await fetch("POST", f"{d.url}/v1/domains/{name}/batch",
                                data=json.dumps(batch).encode())
                assert r.status == 204
            for _ in range(3):
                for name in names:
                    assert (await fetch("GET", f"{d.url}/v1/kv/{name}/k%2F1")).status == 404
                    got = await fetch("GET", f"{d.url}/v1/kv/{name}/b")
                    assert got.status == 200 and got.body == b"2"
                    assert got.headers["Content-Type"] == "application/octet-stream"
                    l1 = await fetch("GET", f"{d.url}/v1/l1/{name}/objects")
                    assert l1.status == 200 and l1.json() is not None
                    assert l1.headers["Content-Type"] == "application/json"
                    scan = (await fetch("GET", f"{d.url}/v1/domains/{name}/scan")).json()
                    assert [i["key"] for i in scan["items"]] == [b64(b"b")]
                    info = await fetch("GET", f"{d.url}/v1/domains/{name}")
                    assert info.json()["name"] == name
            bad = await fetch("GET", f"{d.url}/v1/kv/Bad!/k")
            assert bad.status == 400 and bad.error_code == "invalid_argument"
            missing = await fetch("GET", f"{d.url}/v1/kv/never-written/k")
            assert missing.status == 404
            listed = (await fetch("GET", f"{d.url}/v1/domains")).json()["domains"]
            assert set(names) <= set(listed)
            async with aiohttp.ClientSession() as s, s.get(f"{d.url}/metrics") as resp:
                text = await resp.text()
            count = sum(float(v) for v in re.findall(
                r'cachedaemon_http_requests_total\{method="GET",route="/v1/kv/\{domain\}/\{key\+\}",'
                r'status="200"\} ([\d.e+]+)', text))
            assert count == 3 * len(names)  # each GET counted once, by the accepting shard
            forwarded = float(re.search(r"cachedaemon_http_forwarded_requests_total ([\d.e+]+)",
                                        text).group(1))  # type: ignore[union-attr]
            assert forwarded > 0  # some requests reached the shard that does not own them
        asyncio.run(scenario())
