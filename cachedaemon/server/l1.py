"""L1 metastore routes: ``/v1/l1/{domain}/...`` (``docs/l1-api.md``).

Each handler decodes and validates its request on the shard that received it — JSON bodies with
msgspec into the Structs of :mod:`cachedaemon.metastore.l1.types` (unknown fields refused, every
error naming the field, e.g. ``$.objects[0].extents[1].len``), path and query parameters by
name — then hops once to the domain's owner shard (``call_domain``), where
:func:`~cachedaemon.metastore.l1.service.l1_call` runs the operation on that domain's
:class:`~cachedaemon.metastore.l1.L1Metastore`. Errors map by class: missing partition 404,
invalid request 400, out of range 416 (code ``invalid_range``), bucket/log failure 502, fenced /
read-only 409.

The JSON schemas of bodies and answers are added to ``/openapi.json`` by :func:`extend_spec`
(generated from the same Structs). Served by every shard; stateless.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from cachedaemon.errors import InvalidArgument, NotFound
from cachedaemon.metastore.l1 import TopicIdPartition
from cachedaemon.metastore.l1 import types as t
from cachedaemon.metastore.l1.service import L1Config, l1_call, l1_collect_garbage, l1_config
from cachedaemon.metastore.service import call_domain
from cachedaemon.server import http as web
from cachedaemon.server.context import Call, metastore_domains
from cachedaemon.server.keys import decode_text, domain_param
from cachedaemon.server.openapi import SPEC_EXTENSIONS
from cachedaemon.server.routes import ROUTES, Handler, Param

MAX_BODY_BYTES = 64 * 1024 * 1024
TAG = "l1"
_BASE = "/v1/l1/{domain}"
_PART = _BASE + "/partitions/{topic_id}/{partition}"


#: (method, template) -> (request Struct or None, 200-answer Struct) for the OpenAPI schemas.
SCHEMAS: dict[tuple[str, str], tuple[type[Any] | None, type[Any]]] = {}


def _route(method: str, template: str, summary: str, body: type[Any] | None, answer: type[Any],
           params: tuple[Param, ...] = (), responses: dict[int, str] | None = None
           ) -> Callable[[Handler], Handler]:
    SCHEMAS[(method, template)] = (body, answer)
    return ROUTES.route(method, template, summary, tag=TAG, params=params,
                        request_body="application/json" if body is not None else None,
                        responses={200: answer.__name__, **(responses or {})})


# --- decoding ------------------------------------------------------------------------------------


def _config(call: Call) -> L1Config:
    return l1_config(call.ctx.settings)


def _tidp(call: Call) -> TopicIdPartition:
    params = call.params
    return TopicIdPartition(_topic_id(params["topic_id"]),
                            _int_text(decode_text(params["partition"], "partition"), "partition",
                                      0, 2**31 - 1))


@functools.lru_cache(maxsize=4096)
def _topic_id(raw: str) -> uuid.UUID:
    """The ``{topic_id}`` path parameter (memoized: a client asks about few topics, often)."""
    raw_topic = decode_text(raw, "topic_id")
    try:
        return uuid.UUID(raw_topic)
    except ValueError as exc:
        raise InvalidArgument(f"topic_id: {raw_topic[:80]!r} is not a UUID") from exc


def _int_text(text: str, name: str, lo: int, hi: int) -> int:
    try:
        value = int(text, 10)
    except ValueError as exc:
        raise InvalidArgument(f"{name}: {text[:40]!r} is not an integer") from exc
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name}: {value} is not within {lo}..{hi}")
    return value


def _query_int(call: Call, name: str, default: int | None = None, *, lo: int = 0,
               hi: int = 2**63 - 1) -> int:
    raw = call.request.query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InvalidArgument(f"{name}: query parameter required")
        return default
    return _int_text(raw, name, lo, hi)


def _query_bool(call: Call, name: str) -> bool:
    raw = call.request.query.get(name, "0")
    if raw not in ("0", "1", "true", "false"):
        raise InvalidArgument(f"{name}: expected 0 or 1, got {raw[:20]!r}")
    return raw in ("1", "true")


async def _body(call: Call, kind: type[Any]) -> Any:
    data = await call.request.content.read_all(MAX_BODY_BYTES)
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"invalid body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"body is not valid JSON: {exc}") from exc


_JSON = b"Content-Type: application/json\r\n"  # encoded once
_encode = msgspec.json.Encoder().encode


def _answer(value: Any) -> web.Response:
    return web.Response(body=_encode(value), raw=_JSON)


async def _op(call: Call, name: str, op: str, *args: Any, **kwargs: Any) -> Any:
    return await call_domain(metastore_domains(call), name, l1_call, _config(call), op, args,
                             kwargs)


def _offsets(d: dict[TopicIdPartition, int]) -> list[t.PartitionOffset]:
    return [t.PartitionOffset(topic_id=k.topic_id, partition=k.partition, next_offset=v)
            for k, v in sorted(d.items())]


def _epochs(d: dict[TopicIdPartition, int]) -> t.EpochsResponse:
    return t.EpochsResponse(compaction_epochs=[
        t.PartitionEpoch(topic_id=k.topic_id, partition=k.partition, compaction_epoch=v)
        for k, v in sorted(d.items())])


# --- writes --------------------------------------------------------------------------------------


@_route("POST", _BASE + "/objects/add", "Register preregistered objects, their extents and "
        "term starts.", t.AddObjectsRequest, t.AddObjectsResponse)
async def add_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.AddObjectsRequest = await _body(call, t.AddObjectsRequest)
    corrected = await _op(call, name, "add_objects", req.objects, req.terms)
    return _answer(t.AddObjectsResponse(corrected_next_offsets=_offsets(corrected)))


@_route("POST", _BASE + "/objects/replace", "Replace extents with new objects (optimistic on "
        "compaction epochs).", t.ReplaceObjectsRequest, t.EpochsResponse)
async def replace_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.ReplaceObjectsRequest = await _body(call, t.ReplaceObjectsRequest)
    epochs: dict[TopicIdPartition, int] = {}
    for i, e in enumerate(req.expected_epochs):
        tidp = TopicIdPartition(e.topic_id, e.partition)
        if tidp in epochs:
            raise InvalidArgument(f"expected_epochs[{i}]: partition {tidp} appears twice")
        epochs[tidp] = e.compaction_epoch
    return _answer(_epochs(await _op(call, name, "replace_objects", req.objects, epochs)))


@_route("POST", _BASE + "/objects/compact", "Replace extents with compacted objects and record "
        "the compaction outcome.", t.CompactObjectsRequest, t.EpochsResponse)
async def compact_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.CompactObjectsRequest = await _body(call, t.CompactObjectsRequest)
    return _answer(_epochs(await _op(call, name, "compact_objects", req.objects, req.updates)))


@_route("POST", _BASE + "/compaction/commit", "Record compaction outcomes without replacing "
        "extents (optimistic on compaction epochs).", t.CommitCompactionRequest,
        t.EpochsResponse)
async def commit_compaction_metadata(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.CommitCompactionRequest = await _body(call, t.CommitCompactionRequest)
    return _answer(_epochs(await _op(call, name, "commit_compaction_metadata", req.updates)))


@_route("POST", _BASE + "/objects/preregister", "Reserve object ids before uploading: `count` "
        "fresh ones, or the caller's `oids`.", t.PreregisterRequest, t.ObjectIds)
async def preregister_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.PreregisterRequest = await _body(call, t.PreregisterRequest)
    oids = await _op(call, name, "preregister_objects", req.count, oids=req.oids)
    return _answer(t.ObjectIds(oids=oids))


@_route("POST", _BASE + "/objects/remove", "Delete the rows of dead objects (not the bucket "
        "objects).", t.ObjectIds, t.CountAnswer)
async def remove_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.ObjectIds = await _body(call, t.ObjectIds)
    return _answer(t.CountAnswer(count=await _op(call, name, "remove_objects", req.oids)))


@_route("POST", _BASE + "/topics/remove", "Remove every partition of the topics.",
        t.RemoveTopicsRequest, t.CountAnswer)
async def remove_topics(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.RemoveTopicsRequest = await _body(call, t.RemoveTopicsRequest)
    return _answer(t.CountAnswer(count=await _op(call, name, "remove_topics", req.topic_ids)))


@_route("POST", _PART + "/start_offset", "Truncate a partition's prefix.", t.StartOffsetBody,
        t.Offsets, responses={404: "no such partition", 416: "past the next offset"})
async def set_start_offset(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    req: t.StartOffsetBody = await _body(call, t.StartOffsetBody)
    return _answer(await _op(call, name, "set_start_offset", tidp, req.start_offset))


@_route("POST", _BASE + "/gc", "Run one object GC round now.", None, t.GcResult)
async def collect_garbage(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    result = await call_domain(metastore_domains(call), name, l1_collect_garbage, _config(call))
    return _answer(result)


# --- queries -------------------------------------------------------------------------------------

_OFFSET = Param("offset", "query", "an offset", {"type": "integer", "minimum": 0})


@_route("GET", _PART, "Partition metadata.", None, t.PartitionInfo,
        responses={404: "no such partition"})
async def get_partition(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    m = await _op(call, name, "get_partition", tidp)
    return _answer(t.PartitionInfo(start_offset=m.start_offset, next_offset=m.next_offset,
                                 compaction_epoch=m.compaction_epoch, size=m.size,
                                 num_extents=m.num_extents))


@_route("GET", _PART + "/offsets", "Start and next offsets.", None, t.Offsets,
        responses={404: "no such partition"})
async def get_offsets(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    return _answer(await _op(call, name, "get_offsets", tidp))


@_route("GET", _PART + "/size", "Bytes of the partition's extents.", None, t.SizeAnswer,
        responses={404: "no such partition"})
async def get_size(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    return _answer(t.SizeAnswer(size=await _op(call, name, "get_size", tidp)))


@_route("GET", _PART + "/first", "The first extent at or after an offset, or with a max "
        "timestamp at or after a timestamp, with its object's footer position and size.", None,
        t.ExtentLocation,
        params=(Param("offset", "query", "find by offset", {"type": "integer", "minimum": 0}),
                Param("timestamp", "query", "find by timestamp (ms)", {"type": "integer"}),
                Param("min_offset", "query", "with timestamp: start here",
                      {"type": "integer", "minimum": 0})),
        responses={404: "no such partition", 416: "nothing there"})
async def get_first(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    q = call.request.query
    if ("offset" in q) == ("timestamp" in q):
        raise InvalidArgument("exactly one of offset and timestamp is required")
    if "offset" in q:
        return _answer(await _op(call, name, "get_first_ge", tidp, _query_int(call, "offset")))
    ts = _query_int(call, "timestamp", lo=-(2**63))
    return _answer(await _op(call, name, "get_first_ge_timestamp", tidp, ts,
                             _query_int(call, "min_offset", 0)))


@_route("GET", _PART + "/first_offset_for_bytes", "The smallest offset from which the "
        "partition holds at most `bytes` bytes.", None, t.OffsetAnswer,
        params=(Param("bytes", "query", "byte budget", {"type": "integer", "minimum": 0},
                      required=True),), responses={404: "no such partition"})
async def get_first_offset_for_bytes(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    offset = await _op(call, name, "get_first_offset_for_bytes", tidp, _query_int(call, "bytes"))
    return _answer(t.OffsetAnswer(offset=offset))


@_route("GET", _PART + "/term", "The term of an offset.", None, t.TermAnswer,
        params=(Param("offset", "query", "an offset", {"type": "integer", "minimum": 0},
                      required=True),),
        responses={404: "no such partition", 416: "offset outside the partition"})
async def get_term_for_offset(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    term = await _op(call, name, "get_term_for_offset", tidp, _query_int(call, "offset"))
    return _answer(t.TermAnswer(term=term))


@_route("GET", _PART + "/term_end", "The offset after the last one of a term.", None,
        t.EndOffsetAnswer,
        params=(Param("term", "query", "a term", {"type": "integer", "minimum": 0},
                      required=True),),
        responses={404: "no such partition", 416: "term before the first known one"})
async def get_end_offset_for_term(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    end = await _op(call, name, "get_end_offset_for_term", tidp, _query_int(call, "term"))
    return _answer(t.EndOffsetAnswer(end_offset=end))


@_route("GET", _PART + "/compaction", "Compaction state.", None, t.CompactionInfo,
        params=(Param("tombstone_removal_upper_bound", "query",
                      "list tombstone ranges cleaned at or before this time (ms) as removable",
                      {"type": "integer"}),), responses={404: "no such partition"})
async def get_compaction_info(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    bound = _query_int(call, "tombstone_removal_upper_bound", -1, lo=-(2**63))
    return _answer(await _op(call, name, "get_compaction_info", tidp, bound))


@_route("POST", _BASE + "/compaction/infos", "Compaction state of many partitions, from one "
        "snapshot.", t.CompactionInfosRequest, t.CompactionInfos)
async def get_compaction_infos(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    req: t.CompactionInfosRequest = await _body(call, t.CompactionInfosRequest)
    tidps = [TopicIdPartition(p.topic_id, p.partition) for p in req.partitions]
    infos = await _op(call, name, "get_compaction_infos", tidps,
                      req.tombstone_removal_upper_bound)
    return _answer(t.CompactionInfos(infos=[
        t.PartitionCompactionInfo(topic_id=k.topic_id, partition=k.partition, info=v)
        for k, v in infos.items()]))


@_route("GET", _PART + "/extents", "Extents overlapping [min_offset, max_offset], forwards or "
        "backwards.", None, t.ExtentList,
        params=(Param("min_offset", "query", "default 0", {"type": "integer", "minimum": 0}),
                Param("max_offset", "query", "default: the last offset",
                      {"type": "integer", "minimum": 0}),
                Param("limit", "query", "1..10000, default 1000",
                      {"type": "integer", "minimum": 1, "maximum": 10000}),
                Param("reverse", "query", "0|1", {"type": "integer"})),
        responses={404: "no such partition"})
async def get_extents(call: Call) -> web.StreamResponse:
    name, tidp = domain_param(call), _tidp(call)
    max_offset = (None if not call.request.query.get("max_offset")
                  else _query_int(call, "max_offset"))
    got = await _op(call, name, "get_extents", tidp, _query_int(call, "min_offset", 0),
                    max_offset, limit=_query_int(call, "limit", 1000, lo=1, hi=10000),
                    reverse=_query_bool(call, "reverse"))
    return _answer(got)


@_route("GET", _BASE + "/objects", "Object rows in id order.", None, t.ObjectList,
        params=(Param("start_after", "query", "an object id"),
                Param("limit", "query", "1..10000, default 1000",
                      {"type": "integer", "minimum": 1, "maximum": 10000})))
async def list_objects(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    raw = call.request.query.get("start_after")
    try:
        start_after = uuid.UUID(raw) if raw else None
    except ValueError as exc:
        raise InvalidArgument(f"start_after: {str(raw)[:80]!r} is not a UUID") from exc
    limit = _query_int(call, "limit", 1000, lo=1, hi=10000)
    objects = await _op(call, name, "list_objects", start_after, limit)
    nxt = objects[-1].oid if len(objects) == limit else None
    return _answer(t.ObjectList(objects=objects, next=nxt))


@_route("GET", _BASE + "/objects/{oid}", "One object row.", None, t.ObjectInfo,
        responses={404: "no such object"})
async def get_object(call: Call) -> web.StreamResponse:
    name = domain_param(call)
    raw = decode_text(call.params["oid"], "oid")
    try:
        oid = uuid.UUID(raw)
    except ValueError as exc:
        raise InvalidArgument(f"oid: {raw[:80]!r} is not a UUID") from exc
    info = await _op(call, name, "get_object", oid)
    if info is None:
        raise NotFound(f"no object {oid} in the L1 metastore of domain {name}")
    return _answer(info)


# --- OpenAPI -------------------------------------------------------------------------------------


def extend_spec(spec: dict[str, Any]) -> None:
    """Put the request and answer schemas of the L1 routes into an OpenAPI document."""
    types = sorted({k for pair in SCHEMAS.values() for k in pair if k is not None},
                   key=lambda k: k.__name__)
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
    by_type = dict(zip(types, refs, strict=True))
    for (method, template), (body, answer) in SCHEMAS.items():
        op = spec.get("paths", {}).get(template, {}).get(method.lower())
        if op is None:
            continue
        if body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": by_type[body]}}}
        op["responses"]["200"] = {"description": answer.__name__, "content": {
            "application/json": {"schema": by_type[answer]}}}


SPEC_EXTENSIONS.append(extend_spec)
