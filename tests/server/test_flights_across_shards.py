"""One download per key for the whole daemon (issue 14): concurrent misses of one key arriving
on different shards share a single download from the bucket, and every one of them gets the
object."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from tests.support.daemon import start_daemon
from tests.support.http import fetch

SIZE = 8 * 1024 * 1024


def download_bytes(text: str) -> float:
    m = re.search(r"^cachedaemon_download_bytes_total ([\d.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_concurrent_misses_on_both_shards_share_one_download(tmp_path: Path) -> None:
    env = {"CACHEDAEMON_FAILPOINTS": "server.get.before_fill_commit=delay:0.5"}
    body = os.urandom(SIZE)
    with start_daemon(tmp_path / "d", "--cache-max-bytes", "256MiB", shards=2, env=env) as d:
        async def scenario() -> None:
            for round_ in range(3):
                key = f"flight/{round_}"
                assert (await fetch("PUT", f"{d.url}/v1/objects/{key}", data=body)).status \
                    == 201
                assert (await fetch("DELETE", f"{d.url}/v1/cache/objects/{key}")).status == 204
                before = download_bytes((await fetch("GET", f"{d.url}/metrics")).body.decode())
                # Fresh connections: SO_REUSEPORT spreads them over both shards.
                replies = await asyncio.gather(*(fetch("GET", f"{d.url}/v1/objects/{key}")
                                                 for _ in range(12)))
                assert all(r.status == 200 and r.body == body for r in replies)
                after = download_bytes((await fetch("GET", f"{d.url}/metrics")).body.decode())
                assert after - before == SIZE, f"downloaded {(after - before) / SIZE:g} times"
        asyncio.run(scenario())
