"""A small in-memory stand-in for the daemon's key-value routes (``shared/API.md`` "Key-value
domains") that records every request, to check how the client spells them.

It follows the contract strictly where the client could get it wrong: keys are read from the
raw (still percent-encoded) path, base64 is decoded with validation, ``limit`` pages the scan and
``next`` continues it, the bearer token is checked. It runs on its own loop in a thread so that
both the async and the blocking client can talk to it. Test-only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote_to_bytes

from aiohttp import web

DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_VALUE = 4 * 1024 * 1024


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class FakeDomain:
    items: dict[bytes, bytes] = field(default_factory=dict)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    seqno: int = 0
    persisted: int = 0
    compactions: int = 0


class KvFake:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.domains: dict[str, FakeDomain] = {}
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query)
        self.fence: set[str] = set()  # domains whose writes answer 409 fenced
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> KvFake:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # --- the routes --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: object) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "a bearer token is required")
        try:
            return await self._dispatch(request)
        except (binascii.Error, ValueError) as exc:
            return _error(400, "invalid_argument", str(exc))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        parts = raw_path.split("/")
        m = request.method
        if parts[:3] == ["", "v1", "kv"] and len(parts) == 5:
            domain = unquote_to_bytes(parts[3]).decode()
            key = unquote_to_bytes(parts[4])
            return await self._kv(request, m, domain, key)
        if raw_path == "/v1/domains" and m == "GET":
            return web.json_response({"domains": sorted(self.domains)})
        if parts[:3] == ["", "v1", "domains"] and len(parts) in (4, 5):
            domain = unquote_to_bytes(parts[3]).decode()
            action = parts[4] if len(parts) == 5 else ""
            return await self._domain(request, m, domain, action, query)
        return _error(404, "not_found", f"no route {m} {raw_path}")

    def _check_domain(self, domain: str) -> web.Response | None:
        if not DOMAIN_RE.fullmatch(domain):
            return _error(400, "invalid_argument", f"bad domain name {domain!r}")
        return None

    def _write(self, domain: str) -> FakeDomain | web.Response:
        if domain in self.fence:
            return _error(409, "fenced", f"domain {domain} is owned by a newer writer")
        return self.domains.setdefault(domain, FakeDomain())

    async def _kv(self, request: web.Request, m: str, domain: str, key: bytes) -> web.StreamResponse:
        if (bad := self._check_domain(domain)) is not None:
            return bad
        if not 1 <= len(key) <= 4096:
            return _error(400, "invalid_argument", "key must be 1-4096 bytes")
        if m == "PUT":
            value = await request.read()
            if len(value) > MAX_VALUE:
                return _error(413, "too_large", "value over 4 MiB")
            d = self._write(domain)
            if isinstance(d, web.Response):
                return d
            d.items[key] = value
            d.seqno += 1
            return web.Response(status=204)
        if m == "GET":
            d0 = self.domains.get(domain)
            if d0 is None or key not in d0.items:
                return _error(404, "not_found", f"no key {key!r} in {domain}")
            return web.Response(body=d0.items[key])
        if m == "DELETE":
            d = self._write(domain)
            if isinstance(d, web.Response):
                return d
            d.items.pop(key, None)
            d.seqno += 1
            return web.Response(status=204)
        return _error(404, "not_found", "no such route")

    async def _domain(
        self, request: web.Request, m: str, domain: str, action: str, query: dict[str, str]
    ) -> web.StreamResponse:
        if (bad := self._check_domain(domain)) is not None:
            return bad
        if action == "batch" and m == "POST":
            doc = await request.json()
            staged: list[tuple[str, bytes, bytes]] = []
            for op in doc["ops"]:
                if op["op"] == "put":
                    staged.append(("put", _b64d(op["key"]), _b64d(op["value"])))
                elif op["op"] == "delete":
                    staged.append(("delete", _b64d(op["key"]), b""))
                else:
                    return _error(400, "invalid_argument", f"bad op {op!r}")
            d = self._write(domain)
            if isinstance(d, web.Response):
                return d
            for kind, key, value in staged:
                if kind == "put":
                    d.items[key] = value
                else:
                    d.items.pop(key, None)
                d.seqno += 1
            return web.Response(status=204)
        d0 = self.domains.get(domain)
        if d0 is None:
            return _error(404, "not_found", f"no domain {domain}")
        if action == "scan" and m == "GET":
            return self._scan(d0, query)
        if action == "flush" and m == "POST":
            d0.persisted = d0.seqno
            return web.Response(status=204)
        if action == "compact" and m == "POST":
            d0.compactions += 1
            return web.Response(status=204)
        if action == "" and m == "GET":
            return web.json_response({
                "name": domain, "uuid": d0.uuid, "epoch": 1, "last_seqno": d0.seqno,
                "persisted_seqno": d0.persisted,
                "levels": [{"level": 0, "files": 1 if d0.persisted else 0, "bytes": 100}],
                "read_only": False,
            })
        return _error(404, "not_found", "no such route")

    def _scan(self, d: FakeDomain, query: dict[str, str]) -> web.Response:
        limit = int(query.get("limit", "1000"))
        if not 1 <= limit <= 10000:
            return _error(400, "invalid_argument", "limit out of range")
        start = _b64d(query["start"]) if "start" in query else None
        end = _b64d(query["end"]) if "end" in query else None
        prefix = _b64d(query["prefix"]) if "prefix" in query else b""
        reverse = query.get("reverse", "0") == "1"
        keys = sorted(
            k for k in d.items
            if k.startswith(prefix) and (start is None or k >= start) and (end is None or k < end)
        )
        if reverse:
            keys.reverse()
        page, rest = keys[:limit], keys[limit:]
        nxt: str | None = None
        if rest:
            # forward: the next start (inclusive) is the first key not returned;
            # reverse: the next end (exclusive) is the last key returned.
            nxt = _b64e(rest[0] if not reverse else page[-1])
        return web.json_response({
            "items": [{"key": _b64e(k), "value": _b64e(d.items[k])} for k in page],
            "next": nxt,
        })


def running_fake(token: str | None = None) -> Iterator[KvFake]:
    fake = KvFake(token).start()
    try:
        yield fake
    finally:
        fake.stop()
