"""Objects as S3 describes them: the metadata headers of a request, the headers of an answer,
and the object record kept with a cached entry.

* :func:`meta_from_headers`: the :class:`~cachedaemon.remote.base.ObjectMeta` of a PUT (the
  content headers, ``aws-chunked`` dropped from ``Content-Encoding`` as S3 drops it, and the
  ``x-amz-meta-*`` pairs; more than S3's 2 KB of user metadata is ``MetadataTooLarge``).
* :class:`ObjectRecord`: what an answer about one version needs (size, ETag, Last-Modified,
  metadata). A cached entry carries its record in the extended attribute
  :data:`RECORD_XATTR` (JSON), beside the cache's own ETag attribute; the record counts only
  while its ETag and size are the entry's, so a record can never describe another version
  (it is attached only where its ETag is the entry's, and an entry's ETag never changes).
* :func:`object_headers`: the headers of a GET/HEAD answer, with the ``response-*`` query
  overrides S3 allows on GET.

Pure apart from the extended-attribute calls (on the caller's shard, on the loop: they are
single syscalls on a page-cached inode).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate

from cachedaemon.remote.base import ObjectInfo, ObjectMeta
from cachedaemon.server.s3.errors import S3Error

#: The extended attribute holding a cached entry's :class:`ObjectRecord`.
RECORD_XATTR = "user.cachedaemon.s3"
#: The id of the entry's record (:func:`record_id`), which hits read instead of the record:
#: ``os.getxattr`` reads up to 128 bytes in one call, a longer attribute takes a second call
#: and a 64 KiB buffer, and a record with a Content-Type is longer.
RECORD_ID_XATTR = "user.cachedaemon.s3id"
#: The cache's own ETag attribute (:mod:`cachedaemon.server.objects`).
ETAG_XATTR = "user.cachedaemon.etag"
#: S3's limit on the user-defined metadata of one object (names and values, UTF-8 bytes).
MAX_USER_METADATA = 2048
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
META_PREFIX = "x-amz-meta-"
#: GET's response-* query parameters and the headers they override.
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


def meta_from_headers(headers: Mapping[str, str]) -> ObjectMeta:
    fields: dict[str, str] = {}
    for field, name in ObjectMeta.HEADERS:
        value = headers.get(name.lower())
        if value is None:
            continue
        if field == "content_encoding":
            codings = [c.strip() for c in value.split(",")
                       if c.strip() and c.strip().lower() != "aws-chunked"]
            if not codings:
                continue
            value = ",".join(codings)
        fields[field] = value
    user = {name[len(META_PREFIX):]: value for name, value in headers.items()
            if name.startswith(META_PREFIX) and len(name) > len(META_PREFIX)}
    size = sum(len(k.encode("latin-1", "replace")) + len(v.encode("latin-1", "replace"))
               for k, v in user.items())
    if size > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed "
                      "metadata size.", extra={"MaxSizeAllowed": str(MAX_USER_METADATA)})
    return ObjectMeta.make(user, **fields)


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One version of an object, as S3 answers about it."""

    size: int
    etag: str  # unquoted
    last_modified: float
    meta: ObjectMeta

    @staticmethod
    def from_info(info: ObjectInfo, now: float | None = None) -> ObjectRecord:
        """From the bucket's description (the current time when it has no date: the S3
        backend's answer to a put)."""
        when = info.last_modified if info.last_modified is not None else \
            (time.time() if now is None else now)
        return ObjectRecord(info.size, info.etag, when, info.meta or ObjectMeta())

    def encode(self) -> bytes:
        return json.dumps({"etag": self.etag, "size": self.size, "mtime": self.last_modified,
                           "meta": self.meta.to_json()}, separators=(",", ":")).encode()

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def decode(raw: bytes) -> ObjectRecord | None:
        """The record of an attribute's bytes (memoised: hits read the same bytes again and
        again)."""
        try:
            d = json.loads(raw)
            return ObjectRecord(int(d["size"]), str(d["etag"]), float(d["mtime"]),
                                ObjectMeta.from_json(d.get("meta")))
        except (ValueError, KeyError, TypeError):
            return None


def read_record(path: int | str | os.PathLike[str], size: int) -> ObjectRecord | None:
    """The record of the cached entry at ``path`` (or open as descriptor ``path``) of ``size``
    bytes, if it has a valid one."""
    attrs = _record_attrs(path)
    if attrs is None:
        return None
    record = ObjectRecord.decode(attrs[0])
    if record is None or record.etag != attrs[1].decode() or record.size != size:
        return None
    return record


def record_hit_lines(fd: int, size: int) -> bytes | None:
    """The header lines of a whole cache hit of open entry ``fd`` (``size`` bytes) from its
    record (no overrides; Content-Length aside), or None when it has no valid record or a
    value would break a line. The hot path: one small ``fgetxattr`` (the record's id, see
    :data:`RECORD_ID_XATTR`) and a lookup of the lines memoised by that id; the record itself
    is read when the id is new here (then remembered if the record is the id's) or missing
    (then added: an entry recorded before ids existed).

    :func:`read_record` also compares the record's ETag with the entry's ETag attribute; here
    that holds by construction: a record is attached only to a file whose ETag attribute it
    matches (:func:`write_record` checks on the same open file), and a file's ETag attribute is
    set once, before it becomes an entry (the staging file's publish). The size is checked."""
    try:
        rid = os.getxattr(fd, RECORD_ID_XATTR)
    except OSError:
        rid = b""
    known = _BY_ID.get(rid) if rid else None
    if known is None:
        try:
            raw = os.getxattr(fd, RECORD_XATTR)
        except OSError:
            return None
        known = _hit_lines(raw)
        if known[1] is not None:
            if not rid:  # only if still none: a record written meanwhile sets its own id
                with contextlib.suppress(OSError):
                    os.setxattr(fd, RECORD_ID_XATTR, record_id(raw), os.XATTR_CREATE)
            elif record_id(raw) == rid:  # (else a record being replaced: answer from it)
                if len(_BY_ID) >= 4096:
                    _BY_ID.clear()
                _BY_ID[rid] = known
    return known[1] if known[0] == size else None


#: Header lines (and the size they need) by record id.
_BY_ID: dict[bytes, tuple[int, bytes | None]] = {}


def record_id(raw: bytes) -> bytes:
    """The id of a record's attribute bytes (16 bytes of their BLAKE2b digest)."""
    return hashlib.blake2b(raw, digest_size=16).digest()


def _record_attrs(path: int | str | os.PathLike[str]) -> tuple[bytes, bytes] | None:
    """The record and ETag attributes of an entry (by descriptor or path), if it has both."""
    try:
        if isinstance(path, int):
            return os.getxattr(path, RECORD_XATTR), os.getxattr(path, ETAG_XATTR)
        return (os.getxattr(path, RECORD_XATTR, follow_symlinks=False),
                os.getxattr(path, ETAG_XATTR, follow_symlinks=False))
    except OSError:
        return None


@functools.lru_cache(maxsize=4096)
def _hit_lines(raw: bytes) -> tuple[int, bytes | None]:
    """(size it needs, header lines) of a record's attribute bytes; a record that does not
    decode matches no entry."""
    record = ObjectRecord.decode(raw)
    if record is None:
        return -1, None
    return record.size, hit_header_lines(record)


def write_record(path: str | os.PathLike[str], record: ObjectRecord) -> bool:
    """Attach ``record`` to the entry at ``path`` if that entry is the record's version (its
    ETag attribute and size match, checked on the same open file). Best effort."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != record.size or \
                os.getxattr(fd, ETAG_XATTR).decode() != record.etag:
            return False
        raw = record.encode()
        # An id names exactly its record's bytes (hits trust it): none while the record is
        # replaced, the new one after it, and none if another writer's record won meanwhile
        # (a hit then reads the record and adds its id).
        with contextlib.suppress(OSError):
            os.removexattr(fd, RECORD_ID_XATTR)
        os.setxattr(fd, RECORD_XATTR, raw)
        os.setxattr(fd, RECORD_ID_XATTR, record_id(raw))
        if os.getxattr(fd, RECORD_XATTR) != raw:
            os.removexattr(fd, RECORD_ID_XATTR)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def iso_date(t: float) -> str:
    """S3's ``LastModified`` in listings: ``2009-10-12T17:50:30.000Z``."""
    ms = round((t - int(t)) * 1000)
    if ms == 1000:
        t, ms = int(t) + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{ms:03d}Z"


def object_headers(record: ObjectRecord, overrides: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
    """The headers of a GET or HEAD answer about ``record`` (without Content-Length/Range)."""
    headers = dict(_base_headers(record))
    if overrides:
        for param, name in RESPONSE_OVERRIDES.items():
            value = overrides.get(param)
            if value is not None:
                headers[name] = value
    return headers


def hit_header_lines(record: ObjectRecord) -> bytes | None:
    """The encoded header lines of a whole cache hit of ``record`` (no overrides; Content-Length
    aside), or None if a value would break a line (the general path refuses it)."""
    text = "".join(f"{name}: {value}\r\n" for name, value in _base_headers(record))
    if "\n" in text.replace("\r\n", ""):
        return None
    return (text + "X-Cache: hit\r\n").encode("latin-1", "replace")


@functools.lru_cache(maxsize=4096)
def _base_headers(record: ObjectRecord) -> tuple[tuple[str, str], ...]:
    meta = record.meta
    headers = {
        "ETag": f'"{record.etag}"',
        "Last-Modified": http_date(record.last_modified),
        "Accept-Ranges": "bytes",
        "Content-Type": meta.content_type or DEFAULT_CONTENT_TYPE,
    }
    for field, name in ObjectMeta.HEADERS[1:]:
        value = getattr(meta, field)
        if value is not None:
            headers[name] = value
    for name, value in meta.user:
        headers[META_PREFIX + name] = value
    return tuple(headers.items())
