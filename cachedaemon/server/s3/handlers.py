"""The S3 operations: one coroutine each, ``(S3Call) -> StreamResponse``, in :data:`HANDLERS`.

Every object operation maps the S3 bucket and key to a daemon key through the bucket mode
(:mod:`.buckets`) and goes to objects only through :mod:`.objectpath`. Keys the daemon
reserves (first segment beginning with ``.cachedaemon``) and keys its rules cannot store
(``a//b``, ``dir/``, a ``..`` segment, more than 1024 bytes, ...) are treated as S3 would treat
keys that cannot exist: reads and deletes answer as for a missing key (``NoSuchKey``, ``204``),
writes are refused (``AccessDenied`` for reserved keys, ``KeyTooLongError`` or
``InvalidArgument`` otherwise). Bodies are decoded (``aws-chunked``) and checked
(:mod:`.checksums`) as they stream into the object path, and a failed check fails the write
before anything is committed.

Runs on the request's shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cachedaemon.cache.keys import validate_key
from cachedaemon.errors import (
    CacheDaemonError,
    CacheFull,
    InvalidKey,
    NotFound,
    PreconditionFailed,
)
from cachedaemon.namespace import is_reserved
from cachedaemon.remote.base import ObjectMeta
from cachedaemon.server import objectops
from cachedaemon.server.http import Request, Response, StreamResponse
from cachedaemon.server.ranges import parse_range
from cachedaemon.server.s3 import conditions, listing
from cachedaemon.server.s3.checksums import BodyChecks
from cachedaemon.server.s3.chunked import AwsChunkedDecoder
from cachedaemon.server.s3.errors import S3Error, error_body, from_daemon_error
from cachedaemon.server.s3.metadata import (
    RESPONSE_OVERRIDES,
    ObjectRecord,
    iso_date,
    meta_from_headers,
    object_headers,
    record_hit_lines,
)
from cachedaemon.server.s3.multipart import (
    MAX_PARTS,
    Uploads,
    check_parts,
    read_parts,
)
from cachedaemon.server.s3.router import Target
from cachedaemon.server.s3.sigv4 import STREAMING_FORMS, Signature
from cachedaemon.server.s3.xmlio import HEADER, E, document, parse

#: Largest XML request body read (DeleteObjects of 1000 keys, Complete of 10000 parts).
MAX_XML_BYTES = 2 * 1024 * 1024
MAX_DELETE_KEYS = 1000
MAX_COPY_BYTES = 5 * 1024**3
DELETE_CONCURRENCY = 16
#: A Complete that takes longer than this sends its 200 and then spaces until it is done, as
#: S3 does, so clients' read timeouts do not fire during a long upload.
COMPLETE_HEAD_START_S = 2.0
COMPLETE_KEEPALIVE_S = 10.0
OWNER_ID = "cachedaemon"
XML = "application/xml"


@dataclass(slots=True)
class S3Call:
    """One S3 request being handled."""

    request: Request
    s3: Any  # the shard's S3Context (app.py)
    target: Target
    operation: str
    signature: Signature
    request_id: str

    @property
    def bucket(self) -> str:
        assert self.target.bucket is not None
        return self.target.bucket

    @property
    def key(self) -> str:
        assert self.target.key is not None
        return self.target.key

    @property
    def query(self) -> Any:
        return self.request.query

    @property
    def headers(self) -> Any:
        return self.request.headers


def xml_response(root: str, children: list[E], status: int = 200,
                 headers: dict[str, str] | None = None) -> Response:
    return Response(status=status, body=document(root, children), content_type=XML,
                    headers=headers)


def owner() -> E:
    return E("Owner", [E("ID", OWNER_ID), E("DisplayName", OWNER_ID)])


def _int_param(call: S3Call, name: str, default: int, maximum: int) -> int:
    raw = call.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer "
                      "range", extra={"ArgumentName": name, "ArgumentValue": raw[:40]})
    return min(int(raw), maximum)


# --- keys -----------------------------------------------------------------------------------


def _daemon_key(call: S3Call, bucket: str, key: str) -> str:
    dkey: str = call.s3.buckets.object_key(bucket, key)
    return dkey


def readable_key(call: S3Call, bucket: str | None = None, key: str | None = None) -> str | None:
    """The daemon key to read, or None if no object can exist under that S3 key."""
    dkey = _daemon_key(call, bucket or call.bucket, call.key if key is None else key)
    if is_reserved(dkey):
        return None
    try:
        return validate_key(dkey)
    except InvalidKey:
        return None


def writable_key(call: S3Call, bucket: str | None = None, key: str | None = None) -> str:
    """The daemon key to write (refused for reserved keys and keys the daemon cannot store)."""
    s3_key = call.key if key is None else key
    dkey = _daemon_key(call, bucket or call.bucket, s3_key)
    if len(s3_key.encode("utf-8")) > 1024 or len(dkey.encode("utf-8")) > 1024:
        raise S3Error("KeyTooLongError", "Your key is too long", extra={
            "MaxSizeAllowed": "1024", "Size": str(len(s3_key.encode("utf-8")))})
    if is_reserved(dkey):
        raise S3Error("AccessDenied", "Access Denied (keys beginning with .cachedaemon are "
                      "reserved for the daemon)")
    try:
        return validate_key(dkey)
    except InvalidKey as exc:
        raise S3Error("InvalidArgument", f"cachedaemon cannot store this key: {exc.message}",
                      extra={"ArgumentName": "key"}) from None


async def _missing(call: S3Call, bucket: str | None = None) -> S3Error:
    """NoSuchBucket if the bucket is gone, else NoSuchKey."""
    return await _no_such_key(call.s3, bucket or call.bucket,
                              call.key if call.target.key else "")


async def _no_such_key(s3: Any, bucket: str, s3_key: str) -> S3Error:
    await s3.buckets.check(bucket)
    return S3Error("NoSuchKey", "The specified key does not exist.", extra={"Key": s3_key})


# --- bodies ---------------------------------------------------------------------------------


def request_payload(call: S3Call, *, want_md5: bool = False
                    ) -> tuple[AsyncIterator[bytes], BodyChecks, int | None]:
    """The request's payload bytes (``aws-chunked`` decoded), checked as they pass; the
    iterator raises the S3 error of a failed check at its end. Also the payload's length."""
    request = call.request
    headers = request.headers
    form = call.signature.payload
    encoding = (headers.get("content-encoding") or "").lower()
    trailer_names = [t for t in (headers.get("x-amz-trailer") or "").split(",") if t.strip()]
    read = request.content.readany
    length: int | None
    if form in STREAMING_FORMS or "aws-chunked" in encoding:
        if form not in STREAMING_FORMS:
            raise S3Error("InvalidArgument", "an aws-chunked body needs a STREAMING-... "
                          "x-amz-content-sha256")
        raw = headers.get("x-amz-decoded-content-length")
        if raw is not None and not raw.isdigit():
            raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a number")
        length = int(raw) if raw is not None else None
        decoder = AwsChunkedDecoder(read, form, call.signature.signer, trailer_names, length)
        source: AsyncIterator[bytes] = decoder.payload()
        trailers: Callable[[], dict[str, str]] = lambda: decoder.trailers  # noqa: E731
    else:
        length = request.content_length
        source = request.content.iter_any()
        trailers = dict
        trailer_names = []
    sha = form if len(form) == 64 and form not in STREAMING_FORMS else None
    checks = BodyChecks(headers, sha, trailer_names, want_md5=want_md5)

    async def checked() -> AsyncIterator[bytes]:
        update = checks.update if checks.active else None
        async for chunk in source:
            if update is not None:
                update(chunk)
            yield chunk
        checks.verify(trailers())

    return checked(), checks, length


async def _read_xml(call: S3Call, root: str) -> Any:
    body, _, _ = request_payload(call)
    parts: list[bytes] = []
    total = 0
    async for chunk in body:
        total += len(chunk)
        if total > MAX_XML_BYTES:
            raise S3Error("MalformedXML", "The XML you provided is too large")
        parts.append(chunk)
    return parse(b"".join(parts), root)


def _checksum_headers(checks: BodyChecks) -> dict[str, str]:
    return {f"x-amz-checksum-{a}": v for a, v in checks.checksums().items()}


# --- service and buckets ----------------------------------------------------------------------


async def list_buckets(call: S3Call) -> StreamResponse:
    found = await call.s3.buckets.list()
    return xml_response("ListAllMyBucketsResult", [owner(), E("Buckets", [
        E("Bucket", [E("Name", name), E("CreationDate", iso_date(created))])
        for name, created in found])])


async def head_bucket(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    return Response(status=200, headers={"x-amz-bucket-region": call.s3.region})


async def get_bucket_location(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    region = call.s3.region
    body = HEADER + (b'<LocationConstraint xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                     + (region.encode() if region != "us-east-1" else b"")
                     + b"</LocationConstraint>")
    return Response(status=200, body=body, content_type=XML)


async def get_bucket_versioning(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    return xml_response("VersioningConfiguration", [])


async def create_bucket(call: S3Call) -> StreamResponse:
    content_length = call.request.content_length
    if content_length is None or content_length > 0:
        config = await _read_xml_optional(call, "CreateBucketConfiguration")
        if config is not None:
            wanted = config.text_of("LocationConstraint") or "us-east-1"
            if wanted != call.s3.region:
                raise S3Error("IllegalLocationConstraintException", "The " + wanted[:64] +
                              " location constraint is incompatible for the region specific "
                              "endpoint this request was sent to.", 400)
    await call.s3.buckets.create(call.bucket)
    return Response(status=200, headers={"Location": "/" + call.bucket})


async def _read_xml_optional(call: S3Call, root: str) -> Any:
    body, _, _ = request_payload(call)
    data = b"".join([chunk async for chunk in body])
    if len(data) > MAX_XML_BYTES:
        raise S3Error("MalformedXML", "The XML you provided is too large")
    return parse(data, root) if data.strip() else None


async def delete_bucket(call: S3Call) -> StreamResponse:
    await call.s3.buckets.delete(call.bucket,
                                 functools.partial(call.s3.everywhere, "forget_bucket"))
    return Response(status=204)


# --- listing ----------------------------------------------------------------------------------


def _encoder(call: S3Call) -> Callable[[str], str]:
    encoding = call.query.get("encoding-type")
    if encoding is None:
        return lambda s: s
    if encoding != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      extra={"ArgumentName": "encoding-type"})
    return lambda s: urllib.parse.quote(s, safe="/")


def _contents(items: list[tuple[str, Any]], enc: Callable[[str], str], with_owner: bool
              ) -> list[E]:
    out = []
    for key, info in items:
        children = [E("Key", enc(key)), E("LastModified", iso_date(info.last_modified or 0.0)),
                    E("ETag", f'"{info.etag}"'), E("Size", str(info.size)),
                    E("StorageClass", "STANDARD")]
        if with_owner:
            children.append(owner())
        out.append(E("Contents", children))
    return out


async def list_objects_v2(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    q = call.query
    enc = _encoder(call)
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    max_keys = _int_param(call, "max-keys", listing.MAX_KEYS, listing.MAX_KEYS)
    token = q.get("continuation-token")
    start_after = q.get("start-after") or None
    after = listing.decode_token(token) if token is not None else start_after
    result = await listing.list_keys(call.s3.objects, call.s3.buckets.key_prefix(call.bucket),
                                     prefix, delimiter, after, max_keys)
    children = [E("Name", call.bucket), E("Prefix", enc(prefix))]
    if delimiter:
        children.append(E("Delimiter", enc(delimiter)))
    children += [E("MaxKeys", str(max_keys))]
    if q.get("encoding-type"):
        children.append(E("EncodingType", "url"))
    children += [E("KeyCount", str(len(result.contents) + len(result.prefixes))),
                 E("IsTruncated", "true" if result.truncated else "false")]
    if token is not None:
        children.append(E("ContinuationToken", token))
    if result.truncated:
        children.append(E("NextContinuationToken", listing.encode_token(result)))
    if start_after is not None:
        children.append(E("StartAfter", enc(start_after)))
    children += _contents(result.contents, enc, q.get("fetch-owner") == "true")
    children += [E("CommonPrefixes", [E("Prefix", enc(p))]) for p in result.prefixes]
    return xml_response("ListBucketResult", children)


async def list_objects(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    q = call.query
    enc = _encoder(call)
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    marker = q.get("marker", "")
    max_keys = _int_param(call, "max-keys", listing.MAX_KEYS, listing.MAX_KEYS)
    result = await listing.list_keys(call.s3.objects, call.s3.buckets.key_prefix(call.bucket),
                                     prefix, delimiter, marker or None, max_keys)
    children = [E("Name", call.bucket), E("Prefix", enc(prefix)), E("Marker", enc(marker))]
    if result.truncated and delimiter and result.last is not None:
        children.append(E("NextMarker", enc(result.last)))
    children.append(E("MaxKeys", str(max_keys)))
    if delimiter:
        children.append(E("Delimiter", enc(delimiter)))
    if q.get("encoding-type"):
        children.append(E("EncodingType", "url"))
    children.append(E("IsTruncated", "true" if result.truncated else "false"))
    children += _contents(result.contents, enc, True)
    children += [E("CommonPrefixes", [E("Prefix", enc(p))]) for p in result.prefixes]
    return xml_response("ListBucketResult", children)


# --- objects: reads -------------------------------------------------------------------------


def _overrides(call: S3Call) -> dict[str, str]:
    return {name: value for name, value in call.query.items() if name in RESPONSE_OVERRIDES}


async def get_object(call: S3Call) -> StreamResponse:
    return await read_object(call.s3, call.request, call.bucket, call.key, call.request_id,
                             _overrides(call))


async def read_object(s3: Any, request: Request, bucket: str, s3_key: str, request_id: str,
                      overrides: dict[str, str] | None = None) -> StreamResponse:
    """GetObject of ``s3_key`` in ``bucket``, ``overrides`` its ``response-*`` parameters.
    Also the whole of a GET with no query string on an endpoint without credentials (the
    operation is then GetObject and the signature check a no-op: ``app.py`` skips both)."""
    key = s3.buckets.object_key(bucket, s3_key)
    if is_reserved(key):
        raise await _no_such_key(s3, bucket, s3_key)  # (the object path checks the other rules)
    headers = request.headers
    objects = s3.objects
    conditional = conditions.has_conditions(headers)
    range_header = dict.get(headers, "range")
    opened: int | None = objectops.NOT_OPENED
    if not conditional and not overrides and range_header is None:
        # The hot path: a whole small hit answers here, with no object path's coroutine.
        try:
            first = objectops.whole_small_hit(objects.ctx, key, record_hit_lines)
        except InvalidKey:
            raise await _no_such_key(s3, bucket, s3_key) from None
        if first is not None and not isinstance(first, int):
            return first  # (the request id lines are added by the app, as to every answer)
        opened = first
    try:
        if conditional and objects.cached(key) is None:
            # Decide before downloading anything: a 304 needs no bytes.
            record = await objects.stat(key)
            if record is None:
                raise NotFound(key)
            conditions.check(headers, record)
    except (NotFound, InvalidKey):
        raise await _no_such_key(s3, bucket, s3_key) from None

    def headers_for(record: ObjectRecord) -> dict[str, str]:
        if conditional:
            conditions.check(headers, record)
        out = object_headers(record, overrides)
        out["x-amz-request-id"] = out["x-amz-id-2"] = request_id
        return out

    try:
        resp: StreamResponse = await objects.get(request, key, range_header, headers_for,
                                                 plain=not conditional and not overrides,
                                                 opened=opened)
    except (NotFound, InvalidKey):
        raise await _no_such_key(s3, bucket, s3_key) from None
    return resp


async def head_object(call: S3Call) -> StreamResponse:
    key = readable_key(call)
    record = None if key is None else await call.s3.objects.stat(key)
    if record is None:
        raise await _missing(call)
    conditions.check(call.headers, record)
    headers = object_headers(record, _overrides(call))
    byte_range = parse_range(call.headers.get("range"), record.size)
    if byte_range is not None:
        first, last = byte_range
        headers["Content-Range"] = f"bytes {first}-{last}/{record.size}"
        headers["Content-Length"] = str(last - first + 1)
        return Response(status=206, headers=headers)
    headers["Content-Length"] = str(record.size)
    return Response(status=200, headers=headers)


# --- objects: writes ------------------------------------------------------------------------


def _write_conditions(call: S3Call) -> tuple[bool, str | None]:
    inm = call.headers.get("if-none-match")
    im = call.headers.get("if-match")
    if inm is not None and inm.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on a write supports only '*'")
    if_match = im.strip().strip('"') if im is not None else None
    return inm is not None, if_match


async def _put(call: S3Call, key: str, body: AsyncIterator[bytes], length: int | None,
               meta: ObjectMeta, part_sizes: list[int] | None = None) -> ObjectRecord:
    if length is not None and length > call.s3.ctx.max_object_bytes:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                      extra={"ProposedSize": str(length),
                             "MaxSizeAllowed": str(call.s3.ctx.max_object_bytes)})
    if_none_match, if_match = _write_conditions(call)
    try:
        record: ObjectRecord = await call.s3.objects.put(
            key, body, length, meta=meta, if_none_match=if_none_match, if_match=if_match,
            part_sizes=part_sizes)
    except PreconditionFailed:
        if if_match is not None and await call.s3.objects.stat(key) is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.",
                          extra={"Key": call.key}) from None
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified "
                      "did not hold", extra={"Condition": "If-None-Match" if if_none_match
                                             else "If-Match"}) from None
    return record


async def put_object(call: S3Call) -> StreamResponse:
    key = writable_key(call)
    await call.s3.buckets.check(call.bucket)
    meta = meta_from_headers(call.headers)
    body, checks, length = request_payload(call)
    record = await _put(call, key, body, length, meta)
    return Response(status=200, headers={"ETag": f'"{record.etag}"', **_checksum_headers(checks)})


async def delete_object(call: S3Call) -> StreamResponse:
    dkey = _daemon_key(call, call.bucket, call.key)
    if is_reserved(dkey):
        raise S3Error("AccessDenied", "Access Denied (keys beginning with .cachedaemon are "
                      "reserved for the daemon)")
    await call.s3.buckets.check(call.bucket)
    key = readable_key(call)
    if key is not None:
        await call.s3.objects.delete(key)
    return Response(status=204)


async def delete_objects(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    doc = await _read_xml(call, "Delete")
    quiet = (doc.text_of("Quiet") or "").lower() == "true"
    keys = [o.text_of("Key") for o in doc.findall("Object")]
    if not keys or len(keys) > MAX_DELETE_KEYS or any(k is None for k in keys):
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      f"validate against our published schema (1 to {MAX_DELETE_KEYS} keys)")
    semaphore = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def one(s3_key: str) -> E | None:
        dkey = _daemon_key(call, call.bucket, s3_key)
        if is_reserved(dkey):
            return E("Error", [E("Key", s3_key), E("Code", "AccessDenied"),
                               E("Message", "Access Denied")])
        try:
            key = validate_key(dkey)
        except InvalidKey:
            key = None
        async with semaphore:
            try:
                if key is not None:
                    await call.s3.objects.delete(key)
            except S3Error as exc:
                return E("Error", [E("Key", s3_key), E("Code", exc.code),
                                   E("Message", exc.message)])
            except CacheDaemonError as exc:
                err = from_daemon_error(exc)
                return E("Error", [E("Key", s3_key), E("Code", err.code),
                                   E("Message", err.message)])
        return None if quiet else E("Deleted", [E("Key", s3_key)])

    results = await asyncio.gather(*(one(k) for k in keys if k is not None))
    return xml_response("DeleteResult", [r for r in results if r is not None])


def _copy_source(call: S3Call) -> tuple[str, str]:
    raw = call.headers.get("x-amz-copy-source") or ""
    path, _, query = raw.partition("?")
    if query and query not in ("versionId=null",):
        raise S3Error("NotImplemented", "copying a specific version is not implemented")
    text = urllib.parse.unquote(path).lstrip("/")
    bucket, slash, key = text.partition("/")
    if not bucket or not slash or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey", extra={"ArgumentName": "x-amz-copy-source"})
    return bucket, key


async def _open_source(call: S3Call, byte_range: tuple[int, int] | None
                       ) -> tuple[ObjectRecord, int, AsyncIterator[bytes]]:
    bucket, s3_key = _copy_source(call)
    await call.s3.buckets.check(bucket)
    key = readable_key(call, bucket, s3_key)
    opened = None if key is None else await call.s3.objects.open(key, byte_range)
    if opened is None:
        raise S3Error("NoSuchKey", "The specified key does not exist.", extra={"Key": s3_key})
    record, length, chunks = opened
    try:
        conditions.check(call.headers, record, copy=True)
        if byte_range is None and record.size > MAX_COPY_BYTES:
            raise S3Error("InvalidRequest", "The specified copy source is larger than the "
                          f"maximum allowable size for a copy source: {MAX_COPY_BYTES}")
    except BaseException:
        with contextlib.suppress(Exception):
            await chunks.aclose()
        raise
    return record, length, chunks


async def copy_object(call: S3Call) -> StreamResponse:
    key = writable_key(call)
    await call.s3.buckets.check(call.bucket)
    directive = (call.headers.get("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.",
                      extra={"ArgumentName": "x-amz-metadata-directive"})
    src_bucket, src_key = _copy_source(call)
    if directive == "COPY" and (src_bucket, src_key) == (call.bucket, call.key):
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to "
                      "copy an object to itself without changing the object's metadata, storage "
                      "class, website redirect location or encryption attributes.")
    record, length, chunks = await _open_source(call, None)
    meta = record.meta if directive == "COPY" else meta_from_headers(call.headers)
    new = await _put(call, key, chunks, length, meta)
    return xml_response("CopyObjectResult", [E("LastModified", iso_date(new.last_modified)),
                                             E("ETag", f'"{new.etag}"')])


# --- multipart ------------------------------------------------------------------------------


def _uploads(call: S3Call) -> Uploads:
    uploads: Uploads = call.s3.uploads
    return uploads


async def create_multipart_upload(call: S3Call) -> StreamResponse:
    key = writable_key(call)
    await call.s3.buckets.check(call.bucket)
    upload = await _uploads(call).create(call.bucket, call.key, key,
                                         meta_from_headers(call.headers))
    return xml_response("InitiateMultipartUploadResult", [
        E("Bucket", call.bucket), E("Key", call.key), E("UploadId", upload.upload_id)])


def _part_number(call: S3Call) -> int:
    raw = call.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                      f"{MAX_PARTS}, inclusive", extra={"ArgumentName": "partNumber"})
    return int(raw)


async def _stage_part(call: S3Call, number: int, body: AsyncIterator[bytes],
                      length: int | None, checks: BodyChecks | None) -> str:
    """Stage a part's bytes in the cache; returns its ETag (the MD5)."""
    uploads = _uploads(call)
    upload = await uploads.get(call.query.get("uploadId", ""), call.bucket, call.key)
    ctx = call.s3.ctx
    limit = ctx.max_object_bytes
    if length is not None and length > limit:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                      extra={"ProposedSize": str(length), "MaxSizeAllowed": str(limit)})
    cache = ctx.cache.local()
    deadline = cache.default_deadline()
    try:
        staging = await cache.create_staging_file(
            Uploads.part_key(upload.upload_id, number), deadline,
            None if length is None else max(length, 1), klass="write",
            owner=f"S3 UploadPart {upload.upload_id} #{number}")
    except CacheFull as exc:
        raise from_daemon_error(exc) from None
    kept = False
    try:
        md5 = hashlib.md5() if checks is None else None
        async for chunk in body:
            if md5 is not None:
                md5.update(chunk)
            await staging.append(chunk, deadline)
        if length is not None and staging.written != length:
            raise S3Error("IncompleteBody", "You did not provide the number of bytes specified "
                          "by the Content-Length HTTP header")
        etag = md5.hexdigest() if md5 is not None else checks.md5_hex()  # type: ignore[union-attr]

        await uploads.add_part(upload, number, staging, etag,
                               functools.partial(call.s3.everywhere, "drop_older_part"))
        kept = True
        return etag
    finally:
        if not kept:
            await staging.close()


async def upload_part(call: S3Call) -> StreamResponse:
    number = _part_number(call)
    body, checks, length = request_payload(call, want_md5=True)
    etag = await _stage_part(call, number, body, length, checks)
    return Response(status=200, headers={"ETag": f'"{etag}"', **_checksum_headers(checks)})


async def upload_part_copy(call: S3Call) -> StreamResponse:
    number = _part_number(call)
    byte_range: tuple[int, int] | None = None
    raw = call.headers.get("x-amz-copy-source-range")
    if raw is not None:
        spec = raw.strip().lower().removeprefix("bytes=")
        first, _, last = spec.partition("-")
        if not first.isdigit() or not last.isdigit() or int(last) < int(first):
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the "
                          "form bytes=first-last where first and last are the zero-based offsets "
                          "of the first and last bytes to copy",
                          extra={"ArgumentName": "x-amz-copy-source-range"})
        byte_range = (int(first), int(last))
    await _uploads(call).get(call.query.get("uploadId", ""), call.bucket, call.key)
    _, length, chunks = await _open_source(call, byte_range)
    etag = await _stage_part(call, number, chunks, length, None)
    return xml_response("CopyPartResult", [E("LastModified", iso_date(time.time())),
                                           E("ETag", f'"{etag}"')])


async def complete_multipart_upload(call: S3Call) -> StreamResponse:
    uploads = _uploads(call)
    upload_id = call.query.get("uploadId", "")
    upload = await uploads.get(upload_id, call.bucket, call.key)
    doc = await _read_xml(call, "CompleteMultipartUpload")
    chosen: list[tuple[int, str]] = []
    for part in doc.findall("Part"):
        number, etag = part.text_of("PartNumber"), part.text_of("ETag")
        if number is None or not number.isdigit() or etag is None:
            raise S3Error("MalformedXML", "each Part needs a PartNumber and an ETag")
        chosen.append((int(number), etag))
    ctx = call.s3.ctx
    recorded = {p.number: p for p in await uploads.parts(upload.upload_id)}
    parts = check_parts(chosen, recorded, ctx.max_object_bytes)
    key = upload.object_key

    async def complete() -> ObjectRecord:
        record = await _put(call, key, read_parts(parts), sum(p.size for p in parts),
                            upload.meta, [p.size for p in parts])

        with contextlib.suppress(S3Error):  # completed twice at once: one of them removes it
            await uploads.remove(upload.upload_id,
                                 functools.partial(call.s3.everywhere, "release_upload"))
        return record

    def result(record: ObjectRecord) -> list[E]:
        host = call.headers.get("host") or "localhost"
        location = f"http://{host}/{urllib.parse.quote(call.bucket)}/" \
                   f"{urllib.parse.quote(call.key)}"
        return [E("Location", location), E("Bucket", call.bucket), E("Key", call.key),
                E("ETag", f'"{record.etag}"')]

    task = asyncio.ensure_future(complete())
    try:
        done, _ = await asyncio.wait({task}, timeout=COMPLETE_HEAD_START_S)
        if done:
            return xml_response("CompleteMultipartUploadResult", result(task.result()))
        # Long: send the 200 now and spaces until the result (or an error) can follow.
        resp = StreamResponse(status=200, headers={"Content-Type": XML})
        await resp.prepare(call.request)
        await resp.write(HEADER)
        while True:
            done, _ = await asyncio.wait({task}, timeout=COMPLETE_KEEPALIVE_S)
            if done:
                break
            await resp.write(b" ")
        try:
            body = document("CompleteMultipartUploadResult", result(task.result()))
        except S3Error as exc:
            body = error_body(exc, call.request.path, call.request_id)
        except CacheDaemonError as exc:
            body = error_body(from_daemon_error(exc), call.request.path, call.request_id)
        await resp.write(body[len(HEADER):])
        await resp.write_eof()
        return resp
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def abort_multipart_upload(call: S3Call) -> StreamResponse:
    uploads = _uploads(call)
    upload = await uploads.get(call.query.get("uploadId", ""), call.bucket, call.key)
    await uploads.remove(upload.upload_id,
                         functools.partial(call.s3.everywhere, "release_upload"))
    return Response(status=204)


async def list_parts(call: S3Call) -> StreamResponse:
    uploads = _uploads(call)
    upload = await uploads.get(call.query.get("uploadId", ""), call.bucket, call.key)
    marker = _int_param(call, "part-number-marker", 0, MAX_PARTS)
    max_parts = _int_param(call, "max-parts", 1000, 1000)
    parts = [p for p in await uploads.parts(upload.upload_id) if p.number > marker]
    page, truncated = parts[:max_parts], len(parts) > max_parts
    children = [E("Bucket", call.bucket), E("Key", call.key), E("UploadId", upload.upload_id),
                E("Initiator", [E("ID", OWNER_ID), E("DisplayName", OWNER_ID)]), owner(),
                E("StorageClass", "STANDARD"), E("PartNumberMarker", str(marker)),
                E("NextPartNumberMarker", str(page[-1].number if page else marker)),
                E("MaxParts", str(max_parts)), E("IsTruncated", "true" if truncated else "false")]
    children += [E("Part", [E("PartNumber", str(p.number)),
                            E("LastModified", iso_date(p.modified)), E("ETag", f'"{p.etag}"'),
                            E("Size", str(p.size))]) for p in page]
    return xml_response("ListPartsResult", children)


async def list_multipart_uploads(call: S3Call) -> StreamResponse:
    await call.s3.buckets.check(call.bucket)
    q = call.query
    prefix = q.get("prefix", "")
    delimiter = q.get("delimiter", "")
    key_marker = q.get("key-marker", "")
    id_marker = q.get("upload-id-marker", "")
    max_uploads = _int_param(call, "max-uploads", 1000, 1000)
    found = [u for u in await _uploads(call).list(call.bucket) if u.key.startswith(prefix)
             and (u.key > key_marker or (u.key == key_marker and id_marker and
                                         u.upload_id > id_marker))]
    entries: list[E] = []
    prefixes: list[str] = []
    truncated = False
    last_key = last_id = ""
    for u in found:
        if delimiter:
            i = u.key.find(delimiter, len(prefix))
            if i >= 0:
                common = u.key[: i + len(delimiter)]
                if common not in prefixes:
                    if len(entries) + len(prefixes) >= max_uploads:
                        truncated = True
                        break
                    prefixes.append(common)
                continue
        if len(entries) + len(prefixes) >= max_uploads:
            truncated = True
            break
        entries.append(E("Upload", [E("Key", u.key), E("UploadId", u.upload_id),
                                    E("Initiator", [E("ID", OWNER_ID),
                                                    E("DisplayName", OWNER_ID)]),
                                    owner(), E("StorageClass", "STANDARD"),
                                    E("Initiated", iso_date(u.initiated))]))
        last_key, last_id = u.key, u.upload_id
    children = [E("Bucket", call.bucket), E("KeyMarker", key_marker),
                E("UploadIdMarker", id_marker)]
    if truncated:
        children += [E("NextKeyMarker", last_key), E("NextUploadIdMarker", last_id)]
    children += [E("MaxUploads", str(max_uploads)), E("IsTruncated",
                                                      "true" if truncated else "false")]
    if prefix:
        children.append(E("Prefix", prefix))
    if delimiter:
        children.append(E("Delimiter", delimiter))
    children += entries
    children += [E("CommonPrefixes", [E("Prefix", p)]) for p in prefixes]
    return xml_response("ListMultipartUploadsResult", children)


HANDLERS: dict[str, Callable[[S3Call], Awaitable[StreamResponse]]] = {
    "ListBuckets": list_buckets,
    "HeadBucket": head_bucket,
    "GetBucketLocation": get_bucket_location,
    "GetBucketVersioning": get_bucket_versioning,
    "CreateBucket": create_bucket,
    "DeleteBucket": delete_bucket,
    "ListObjects": list_objects,
    "ListObjectsV2": list_objects_v2,
    "GetObject": get_object,
    "HeadObject": head_object,
    "PutObject": put_object,
    "CopyObject": copy_object,
    "DeleteObject": delete_object,
    "DeleteObjects": delete_objects,
    "CreateMultipartUpload": create_multipart_upload,
    "UploadPart": upload_part,
    "UploadPartCopy": upload_part_copy,
    "CompleteMultipartUpload": complete_multipart_upload,
    "AbortMultipartUpload": abort_multipart_upload,
    "ListParts": list_parts,
    "ListMultipartUploads": list_multipart_uploads,
}
