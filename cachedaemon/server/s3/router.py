"""Which S3 operation a request is: addressing (bucket and key) and the operation's name.

:func:`address` finds the bucket and key of a request in either style S3 clients use:

* **virtual-hosted**: a ``Host`` of ``<bucket>.<domain>`` for one of the configured
  ``s3.domain`` domains names the bucket; the whole path is the key;
* **path-style** (any other ``Host``): ``/<bucket>/<key>``.

The key is taken from the RAW path and percent-decoded strictly (a malformed escape or bytes
that are not UTF-8 are ``InvalidURI``); it is not normalised (``a/../b`` stays what it is and
the bucket mode decides whether it can exist).

:func:`operation` names the S3 operation from the method, whether there is a bucket and a key,
the query's subresources and ``x-amz-copy-source``, e.g. ``GetObject``, ``UploadPart``,
``ListObjectsV2``. A subresource we do not implement (``?acl``, ``?tagging``, ``?versions``,
...) is ``NotImplemented``, as are methods S3 has no operation for; a request on the service
root other than ``GET`` is ``MethodNotAllowed``.

Pure; any shard.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from cachedaemon.server.routes import MEMO_SIZE
from cachedaemon.server.s3.errors import S3Error, not_implemented

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")

#: S3's subresources: query parameters that name another operation on the same path.
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
    "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "location", "logging",
    "metrics", "notification", "object-lock", "ownershipControls", "partNumber", "policy",
    "policyStatus", "publicAccessBlock", "replication", "requestPayment", "restore",
    "retention", "select", "session", "tagging", "torrent", "uploadId", "uploads", "versionId",
    "versioning", "versions", "website", "list-type", "renameObject",
})


class Target(NamedTuple):
    """Where a request points (a tuple: built on every request, and cheaper so than a frozen
    dataclass)."""

    bucket: str | None
    key: str | None  # decoded; None when the request names no object
    virtual: bool


def valid_bucket_name(name: str) -> bool:
    """S3's bucket naming rules (the ones that matter for addressing and creation)."""
    if not _BUCKET.fullmatch(name) or ".." in name or ".-" in name or "-." in name:
        return False
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return False
    return not name.startswith(("xn--", "sthree-")) and not name.endswith(("-s3alias", "--ol-s3"))


def decode_path(raw: str) -> str:
    """Strict percent-decoding of a raw path piece to UTF-8 text (``InvalidURI`` else)."""
    if "%" not in raw and raw.isascii():
        return raw
    data = raw.encode("utf-8", "surrogateescape")
    if b"%" in data:
        if b"%" in _ESCAPE.sub(b"", data):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI (a malformed "
                          "percent-escape).")
        data = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "Couldn't parse the specified URI (not UTF-8).") from None


def address(host: str | None, raw_path: str, domains: tuple[str, ...]) -> Target:
    if not raw_path.startswith("/"):
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
    # A bare host name (or none) is path-style, as is any host when no domain is configured.
    bucket = _virtual_bucket(host, domains) if domains and host and "." in host else None
    if bucket is not None:
        rest = raw_path[1:]
        return Target(bucket, decode_path(rest) if rest else None, True)
    return _path_style(raw_path)


def _virtual_bucket(host: str, domains: tuple[str, ...]) -> str | None:
    """The bucket a ``Host`` of ``<bucket>.<domain>`` names, else None."""
    name = host.strip().lower()
    # An IPv6 literal is never a bucket; else drop the port.
    name = name[: name.find("]") + 1] if name.startswith("[") else name.rsplit(":", 1)[0]
    for domain in domains:
        if name.endswith("." + domain):
            bucket = name[: -len(domain) - 1]
            if valid_bucket_name(bucket):
                return bucket
    return None


class Addressing:
    """:func:`address` for one endpoint's domains, remembered for the most recent (host, path)
    pairs, as ``/v1`` remembers its routes: hot keys are addressed once."""

    __slots__ = ("_memo", "domains")

    def __init__(self, domains: tuple[str, ...]) -> None:
        self.domains = domains
        self._memo: dict[tuple[str | None, str], Target] = {}

    def __call__(self, host: str | None, raw_path: str) -> Target:
        key = (host, raw_path)
        found = self._memo.get(key)
        if found is None:
            found = address(host, raw_path, self.domains)  # (an error is not remembered)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return found


def _path_style(raw_path: str) -> Target:
    rest = raw_path[1:]
    if not rest:
        return Target(None, None, False)
    bucket_raw, slash, key_raw = rest.partition("/")
    if "%" not in rest and rest.isascii():  # nothing to decode (decode_path's own shortcut)
        return Target(bucket_raw, key_raw or None, False)
    bucket = decode_path(bucket_raw)
    return Target(bucket, decode_path(key_raw) if slash and key_raw else None, False)


def operation(method: str, target: Target, query: Mapping[str, str],
              headers: Mapping[str, str]) -> str:
    """The S3 operation of a request (raises NotImplemented / MethodNotAllowed)."""
    if not query and target.key is not None and method == "GET":
        return "GetObject"  # the hot path
    subs = {name for name in query if name in SUBRESOURCES}
    if query.get("versionId") == "null":
        subs.discard("versionId")  # the only version of an object in an unversioned bucket

    def only(*allowed: str) -> None:
        extra = subs - set(allowed)
        if extra:
            raise not_implemented(f"{method} with ?{sorted(extra)[0]}")

    if target.bucket is None:
        if method != "GET":
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against "
                          "this resource.", extra={"Method": method, "ResourceType": "SERVICE"})
        only()
        return "ListBuckets"
    if target.key is None:
        if method == "HEAD":
            only()
            return "HeadBucket"
        if method == "GET":
            if "location" in subs:
                only("location")
                return "GetBucketLocation"
            if "versioning" in subs:
                only("versioning")
                return "GetBucketVersioning"
            if "uploads" in subs:
                only("uploads")
                return "ListMultipartUploads"
            if "list-type" in subs:
                only("list-type")
                if query.get("list-type") != "2":
                    raise S3Error("InvalidArgument", "Invalid List Type specified",
                                  extra={"ArgumentName": "list-type"})
                return "ListObjectsV2"
            only()
            return "ListObjects"
        if method == "PUT":
            only()
            return "CreateBucket"
        if method == "DELETE":
            only()
            return "DeleteBucket"
        if method == "POST" and "delete" in subs:
            only("delete")
            return "DeleteObjects"
        raise not_implemented(f"{method} on a bucket" + (f" with ?{sorted(subs)[0]}"
                                                         if subs else ""))
    copy = "x-amz-copy-source" in headers
    if method in ("GET", "HEAD"):
        if method == "GET" and "uploadId" in subs:
            only("uploadId")
            return "ListParts"
        only()
        return "GetObject" if method == "GET" else "HeadObject"
    if method == "PUT":
        if "uploadId" in subs or "partNumber" in subs:
            only("uploadId", "partNumber")
            if not {"uploadId", "partNumber"} <= subs:
                raise S3Error("InvalidRequest", "UploadPart needs both partNumber and uploadId")
            return "UploadPartCopy" if copy else "UploadPart"
        only()
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in subs:
            only("uploads")
            return "CreateMultipartUpload"
        if "uploadId" in subs:
            only("uploadId")
            return "CompleteMultipartUpload"
        raise not_implemented("POST on an object" + (f" with ?{sorted(subs)[0]}"
                                                      if subs else " (browser form uploads)"))
    if method == "DELETE":
        if "uploadId" in subs:
            only("uploadId")
            return "AbortMultipartUpload"
        only()
        return "DeleteObject"
    raise not_implemented(f"the {method[:16]} method")
