"""Key-value domain routes (shared/API.md "Key-value domains"): ``/v1/kv/{domain}/{key}`` and
``/v1/domains/...``.

Handlers decode and check the request on the shard that received it (domain name, the key from
the RAW path with strict percent-decoding, base64 in JSON and queries: standard alphabet,
padded, nothing else), then hop once to the domain's owner shard with
:func:`~cachedaemon.metastore.service.call_domain`, where the
:class:`~cachedaemon.metastore.service.DomainService` does the work. ``PUT``/``DELETE``/batch
answer ``204`` only once the write is durable in the domain's log.

The ``Sharded[DomainService]`` is ``ctx.extensions["metastore"]``, set by the daemon's start-up;
without it the routes answer ``503 unavailable``. Served by every shard.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from typing import Any

import msgspec

from cachedaemon.core.semaphore import Semaphore
from cachedaemon.errors import InvalidArgument, InvalidKey, NotFound, TooLarge
from cachedaemon.lsm.write_batch import WriteBatch
from cachedaemon.metastore.domain import MAX_KEY_BYTES, MAX_VALUE_BYTES
from cachedaemon.metastore.service import DomainService, call_domain
from cachedaemon.server import http as web
from cachedaemon.server.context import Call, metastore_domains
from cachedaemon.server.keys import domain_param, percent_decode
from cachedaemon.server.routes import ROUTES, Param

SCAN_DEFAULT = 1000
SCAN_MAX = 10000
_B64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def _key(call: Call) -> bytes:
    key = percent_decode(call.params["key"])
    if not 1 <= len(key) <= MAX_KEY_BYTES:
        raise InvalidKey(f"kv keys are 1-{MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def b64decode(value: Any, what: str) -> bytes:
    """Strict standard, padded base64 (InvalidArgument otherwise)."""
    if not isinstance(value, str) or not _B64.match(value):
        raise InvalidArgument(f"{what} must be standard padded base64, got {str(value)[:40]!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"{what} is not valid base64: {exc}") from exc


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json(payload: object) -> web.Response:
    return web.Response(text=json.dumps(payload), content_type="application/json")


async def _read_body(call: Call, limit: int) -> bytes:
    return await call.request.content.read_all(limit)


# --- single keys ---------------------------------------------------------------------------------

_KV = "/v1/kv/{domain}/{key+}"


@ROUTES.route("PUT", _KV, "Put a value (204 once durable).", tag="kv",
              request_body="application/octet-stream",
              responses={204: "durable", 409: "fenced or read_only", 413: "value over 4 MiB"})
async def kv_put(call: Call) -> web.StreamResponse:
    name, key = domain_param(call), _key(call)
    value = await _read_body(call, MAX_VALUE_BYTES)
    await call_domain(metastore_domains(call), name, DomainService.put, key, value)
    return web.Response(status=204)


@ROUTES.route("GET", _KV, "Get a value.", tag="kv", responses={200: "the raw value",
                                                              404: "no such key or domain"})
async def kv_get(call: Call) -> web.StreamResponse:
    name, key = domain_param(call), _key(call)
    value = await call_domain(metastore_domains(call), name, DomainService.get, key)
    if value is None:
        raise NotFound(f"no key {call.params['key'][:80]!r} in domain {name}")
    return web.Response(body=value, raw=_OCTET_STREAM)


_OCTET_STREAM = b"Content-Type: application/octet-stream\r\n"  # encoded once


@ROUTES.route("DELETE", _KV, "Delete a key (204, also when absent).", tag="kv",
              responses={204: "durable"})
async def kv_delete(call: Call) -> web.StreamResponse:
    name, key = domain_param(call), _key(call)
    await call_domain(metastore_domains(call), name, DomainService.delete, key)
    return web.Response(status=204)


async def _empty_key(call: Call) -> web.StreamResponse:
    domain_param(call)
    raise InvalidKey("kv keys are 1-4096 bytes: the key is missing")


for _method in ("PUT", "GET", "DELETE"):
    ROUTES.route(_method, "/v1/kv/{domain}", "A kv path without a key (400 invalid_key).",
                 tag="kv", responses={400: "empty key"})(_empty_key)


# --- domains -------------------------------------------------------------------------------------


class _Op(msgspec.Struct):
    op: str
    key: bytes  # msgspec decodes strict standard padded base64 into bytes, in C
    value: bytes | None = None


class _Batch(msgspec.Struct):
    ops: list[_Op]


_BATCH = msgspec.json.Decoder(_Batch)
#: Operations turned into the batch between two yields to the loop.
BATCH_STEP = 4096


def decode_batch(body: bytes) -> list[_Op]:
    """The operations of a batch body; InvalidArgument for anything malformed (never a 500)."""
    try:
        return _BATCH.decode(body).ops
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid batch body: {exc} (expected "
                              '{"ops": [{"op": "put"|"delete", "key": b64, "value": b64}]})'
                              ) from exc
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"batch body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidArgument("batch body is nested too deeply") from exc


async def build_batch(ops: list[_Op]) -> WriteBatch:
    """The WriteBatch of decoded operations, checked op by op; yields to the loop every
    :data:`BATCH_STEP` operations so a huge batch never stalls the shard."""
    batch = WriteBatch()
    for i, op in enumerate(ops):
        if i and i % BATCH_STEP == 0:
            await asyncio.sleep(0)
        key = op.key
        if not 1 <= len(key) <= MAX_KEY_BYTES:
            raise InvalidArgument(f"ops[{i}].key must be 1-{MAX_KEY_BYTES} bytes")
        if op.op == "put":
            if op.value is None:
                raise InvalidArgument(f"ops[{i}].value is required for a put")
            if len(op.value) > MAX_VALUE_BYTES:
                raise TooLarge(f"ops[{i}].value is over {MAX_VALUE_BYTES} bytes")
            batch.put(key, op.value)
        elif op.op == "delete":
            batch.delete(key)
        else:
            raise InvalidArgument(f'ops[{i}].op must be "put" or "delete", got {op.op[:20]!r}')
    return batch


def _batch_budget(call: Call) -> Semaphore:
    """This shard's budget of batch-body bytes in flight (two maximal batches, at least
    64 MiB): bounds the memory that concurrent large batches can take."""
    budget: Semaphore | None = call.ctx.extensions.get("kv.batch_budget")
    if budget is None:
        limit = call.ctx.settings.metastore.max_batch_bytes
        budget = Semaphore(max(2 * limit, 64 << 20), "kv batch bytes")
        call.ctx.extensions["kv.batch_budget"] = budget
    return budget


@ROUTES.route("POST", "/v1/domains/{domain}/batch", "Apply puts and deletes atomically.",
              tag="kv", request_body="application/json",
              responses={204: "durable", 400: "bad body",
                         413: "body over metastore.max_batch_bytes"})
async def domain_batch(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    limit = call.ctx.settings.metastore.max_batch_bytes
    length = call.request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"batch body of {length} bytes is over metastore.max_batch_bytes "
                       f"({limit} bytes)")
    units = limit if length is None else max(length, 1)
    deadline = time.monotonic() + call.ctx.settings.cache.reserve_deadline
    async with await _batch_budget(call).get_units(units, deadline):
        body = await call.request.content.read_all(limit, "batch body")
        ops = decode_batch(body)
        del body
        batch = await build_batch(ops)
        del ops
        if batch.ops:
            await call_domain(metastore_domains(call), name, DomainService.write, batch)
    return web.Response(status=204)


def _query_b64(call: Call, name: str) -> bytes | None:
    raw = call.request.query.get(name)
    if raw is None or raw == "":
        return None
    return b64decode(raw, name)


@ROUTES.route(
    "GET", "/v1/domains/{domain}/scan", "Scan a key range at one snapshot.", tag="kv",
    params=(
        Param("start", "query", "inclusive start key (base64)"),
        Param("end", "query", "exclusive end key (base64)"),
        Param("prefix", "query", "key prefix (base64)"),
        Param("limit", "query", "items per page (default 1000, max 10000)",
              {"type": "integer"}),
        Param("reverse", "query", "0 or 1"),
    ),
    responses={200: '{"items": [{"key", "value"}], "next": b64|null}'},
)
async def domain_scan(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    query = call.request.query
    start, end, prefix = (_query_b64(call, "start"), _query_b64(call, "end"),
                          _query_b64(call, "prefix"))
    raw_limit = query.get("limit")
    limit = SCAN_DEFAULT
    if raw_limit is not None:
        if not re.fullmatch(r"\d{1,9}", raw_limit) or not 1 <= int(raw_limit) <= SCAN_MAX:
            raise InvalidArgument(f"limit must be an integer from 1 to {SCAN_MAX}")
        limit = int(raw_limit)
    raw_reverse = query.get("reverse", "0")
    if raw_reverse not in ("0", "1"):
        raise InvalidArgument("reverse must be 0 or 1")
    items, nxt = await call_domain(metastore_domains(call), name, DomainService.scan, start, end,
                                   prefix, limit, raw_reverse == "1")
    return _json({
        "items": [{"key": b64encode(k), "value": b64encode(v)} for k, v in items],
        "next": None if nxt is None else b64encode(nxt),
    })


@ROUTES.route("POST", "/v1/domains/{domain}/flush",
              "Memtable to SSTs in the bucket, manifest written (a replica refreshes).",
              tag="kv", responses={204: "flushed"})
async def domain_flush(call: Call) -> web.StreamResponse:
    await call_domain(metastore_domains(call), domain_param(call), DomainService.flush)
    return web.Response(status=204)


@ROUTES.route("POST", "/v1/domains/{domain}/compact", "Full compaction.", tag="kv",
              responses={204: "compacted"})
async def domain_compact(call: Call) -> web.StreamResponse:
    await call_domain(metastore_domains(call), domain_param(call), DomainService.compact)
    return web.Response(status=204)


@ROUTES.route("GET", "/v1/domains/{domain}", "A domain's state.", tag="kv",
              responses={200: '{"name", "uuid", "epoch", "last_seqno", "persisted_seqno", '
                              '"levels": [{"level", "files", "bytes"}], "read_only"}'})
async def domain_info(call: Call) -> web.StreamResponse:
    return _json(await call_domain(metastore_domains(call), domain_param(call), DomainService.info))


@ROUTES.route("GET", "/v1/domains", "Every domain in the bucket.", tag="kv",
              responses={200: '{"domains": [names]}'})
async def domain_list(call: Call) -> web.StreamResponse:
    domains = metastore_domains(call)
    names = await domains.invoke_on(0, DomainService.list_names)
    return _json({"domains": names})
