"""S3's conditional headers on reads and copies: ``If-Match``, ``If-None-Match``,
``If-Modified-Since``, ``If-Unmodified-Since`` (and the ``x-amz-copy-source-if-*`` forms).

S3's order (its GetObject documentation, after RFC 7232): ``If-Match`` false is ``412``; with
no ``If-Match``, ``If-Unmodified-Since`` false is ``412`` (so ``If-Match`` true wins over it);
``If-None-Match`` true (a matching tag) is ``304``; with no ``If-None-Match``,
``If-Modified-Since`` false is ``304`` (so ``If-None-Match`` false wins over it). Dates compare
at one-second resolution; a date that does not parse, or ``If-Modified-Since`` in the future,
is ignored. ETag lists and ``*`` follow :mod:`cachedaemon.server.conditionals`. For a copy
source every failed condition is ``412``.

Pure; any shard.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from cachedaemon.server.conditionals import parse_etag_list, strong_match, weak_match
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.metadata import ObjectRecord, http_date
from cachedaemon.server.s3.sigv4 import parse_http_date

READ_HEADERS = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
COPY_HEADERS = tuple(f"x-amz-copy-source-{h}" for h in READ_HEADERS)


_READ_SET = frozenset(READ_HEADERS)


def has_conditions(headers: Mapping[str, str], names: tuple[str, ...] = READ_HEADERS) -> bool:
    """Whether any of ``names`` is present (``headers`` keys are lower case)."""
    wanted = _READ_SET if names is READ_HEADERS else frozenset(names)
    return not wanted.isdisjoint(headers)


def _failed(condition: str) -> S3Error:
    return S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did "
                   "not hold", extra={"Condition": condition})


def check(headers: Mapping[str, str], record: ObjectRecord, *, copy: bool = False,
          now: float | None = None) -> None:
    """Raise ``412 PreconditionFailed`` or ``304 NotModified`` (an S3Error with status 304 and
    the object's ETag and Last-Modified) as S3 would, or return to serve the object."""
    prefix = "x-amz-copy-source-" if copy else ""
    if_match = headers.get(prefix + "if-match")
    if_none_match = headers.get(prefix + "if-none-match")
    modified = int(record.last_modified)
    now = time.time() if now is None else now
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags is not None and not strong_match(tags, record.etag):
            raise _failed(f"{prefix}If-Match")
    else:
        since = _date(headers.get(prefix + "if-unmodified-since"))
        if since is not None and modified > since:
            raise _failed(f"{prefix}If-Unmodified-Since")
    not_modified = False
    condition = ""
    if if_none_match is not None:
        tags = parse_etag_list(if_none_match)
        if tags is not None and weak_match(tags, record.etag):
            not_modified, condition = True, f"{prefix}If-None-Match"
    else:
        since = _date(headers.get(prefix + "if-modified-since"))
        if since is not None and since <= now and modified <= since:
            not_modified, condition = True, f"{prefix}If-Modified-Since"
    if not_modified:
        if copy:
            raise _failed(condition)
        raise S3Error("NotModified", "Not Modified", 304, headers={
            "ETag": f'"{record.etag}"', "Last-Modified": http_date(record.last_modified)})


def _date(value: str | None) -> int | None:
    if value is None:
        return None
    parsed = parse_http_date(value)
    return None if parsed is None else int(parsed)
