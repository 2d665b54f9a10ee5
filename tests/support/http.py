"""A minimal async HTTP helper for end-to-end tests: ``await fetch(method, url, ...)`` returns a
:class:`Reply` (status, headers, body bytes, parsed JSON when the body is JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return str(self.json()["error"]["code"])
        except Exception:
            return None


async def fetch(
    method: str,
    url: str,
    *,
    data: Any = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 60,
) -> Reply:
    """One request; ``url`` is used as given (``encoded=True``: no re-quoting, no dot-segment
    normalisation), so tests control the raw path exactly."""
    own = session is None
    sess = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
    try:
        async with sess.request(method, URL(url, encoded=True), data=data, headers=headers,
                                allow_redirects=False) as resp:
            body = await resp.read()
            return Reply(resp.status, resp.headers, body)
    finally:
        if own:
            await sess.close()
