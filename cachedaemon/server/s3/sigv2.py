"""AWS Signature Version 2 for S3 (HMAC-SHA1): the legacy form, still what boto3 puts in a
presigned URL unless told ``signature_version="s3v4"``, so it is accepted beside SigV4.

* Header auth: ``Authorization: AWS <access key>:<base64 signature>`` with ``Date`` (or
  ``x-amz-date``) within 15 minutes of the server's clock (``RequestTimeTooSkewed``).
* Query auth (presigned): ``AWSAccessKeyId``, ``Signature`` and ``Expires`` (epoch seconds;
  past it ``AccessDenied``, "Request has expired").

String to sign: ``METHOD\\nContent-MD5\\nContent-Type\\nDate-or-Expires\\n`` + the ``x-amz-*``
headers (lower-case, sorted, ``name:value`` lines) + the resource: the path as sent,
``/<bucket>`` in front for a virtual-hosted request, and the S3 subresources of the query
(sorted, values decoded). The payload is never signed.

Pure apart from the clock; used by :class:`~cachedaemon.server.s3.sigv4.Verifier`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping

from cachedaemon.server.s3.errors import S3Error

#: Query parameters that are part of a SigV2 resource (botocore's list, S3's documentation).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
    "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
    "uploads", "uploadId", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass",
    "notification", "replication", "analytics", "metrics", "inventory", "select",
    "select-type", "object-lock",
})


def is_v2(headers: Mapping[str, str], raw_query: str) -> bool:
    auth = headers.get("authorization")
    if auth is not None:
        return auth.startswith("AWS ")
    return "Signature=" in raw_query and "AWSAccessKeyId=" in raw_query


def _resource(raw_path: str, raw_query: str, virtual_bucket: str | None) -> str:
    path = f"/{virtual_bucket}{raw_path}" if virtual_bucket else raw_path
    pairs = []
    for part in raw_query.split("&") if raw_query else ():
        name, sep, value = part.partition("=")
        if name in SUBRESOURCES:
            pairs.append((name, f"{name}={urllib.parse.unquote(value)}" if sep else name))
    if pairs:
        pairs.sort()
        path += "?" + "&".join(p for _, p in pairs)
    return path


def string_to_sign(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
                   date: str, virtual_bucket: str | None,
                   query_amz: Mapping[str, str] | None = None) -> str:
    amz: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("x-amz-"):
            amz[name] = ",".join(v.strip() for v in value.split(","))
    for name, value in (query_amz or {}).items():
        amz.setdefault(name, value)
    lines = [method, (headers.get("content-md5") or "").strip(),
             (headers.get("content-type") or "").strip(), date]
    lines += [f"{name}:{amz[name]}" for name in sorted(amz)]
    lines.append(_resource(raw_path, raw_query, virtual_bucket))
    return "\n".join(lines)


def sign(secret: str, text: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), text.encode("utf-8", "surrogateescape"),
                      hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def check(access_key: str, secret: str, given_key: str, provided: str, text: str) -> None:
    if not hmac.compare_digest(given_key.encode("utf-8", "replace"),
                               access_key.encode("utf-8")):
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist "
                      "in our records.", extra={"AWSAccessKeyId": given_key[:128]})
    if not hmac.compare_digest(sign(secret, text).encode(), provided.encode("ascii", "replace")):
        raise S3Error("SignatureDoesNotMatch", "The request signature we calculated does not "
                      "match the signature you provided. Check your key and signing method.",
                      extra={"AWSAccessKeyId": access_key, "StringToSign": text,
                             "SignatureProvided": provided[:128]})
