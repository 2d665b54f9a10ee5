"""Object keys from request paths: strict percent-decoding of the RAW path, then the key rules.

The key is taken from ``request.raw_path`` (never aiohttp's normalised path), so ``a/../b`` is
refused rather than silently becoming ``b``; ``%2F`` decodes to ``/`` and is the same key as a
literal slash. A malformed escape or bytes that are not UTF-8 are ``400 invalid_key``, and so is
anything :func:`validate_key` (the one key validator, shared with the cache) refuses, and any
key whose first segment begins with ``.cachedaemon``: those are reserved for the daemon's own
objects (:mod:`cachedaemon.namespace`), so no object route reads, writes or deletes them or
their cached copies. The check is made on the decoded key, so ``%2Ecachedaemon/x`` is refused
too. (The cache itself accepts reserved keys: the metastore keeps its SSTs there.)
Pure; used on every shard.
"""

from __future__ import annotations

import functools
import re

from cachedaemon.cache.keys import validate_key as cache_validate_key
from cachedaemon.errors import InvalidArgument, InvalidKey
from cachedaemon.metastore.registry import check_domain_name
from cachedaemon.namespace import RESERVED_PREFIX, is_reserved
from cachedaemon.server.context import Call

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def percent_decode(raw: str, *, what: str = "key") -> bytes:
    """Strictly percent-decode ``raw`` to bytes; a stray ``%`` raises InvalidKey."""
    data = raw.encode("utf-8", "surrogateescape")
    if b"%" not in data:
        return data
    out = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    # Any '%' left in the output that did not come from an escape is malformed.
    stripped = _ESCAPE.sub(b"", data)
    if b"%" in stripped:
        raise InvalidKey(f"invalid {what} {raw[:80]!r}: malformed percent-escape")
    return out


def validate_key(key: str) -> str:
    """The object key rules of shared/API.md (the cache's one validator) plus the reserved
    prefix; InvalidKey if broken."""
    cache_validate_key(key)
    check_not_reserved(key, "key")
    return key


def check_not_reserved(text: str, what: str) -> None:
    """InvalidKey if ``text`` (a key, or a listing prefix) begins with the reserved prefix."""
    if is_reserved(text):
        raise InvalidKey(
            f"{what} {text[:80]!r} is reserved: keys whose first segment begins with "
            f"{RESERVED_PREFIX!r} hold the daemon's own objects")


@functools.lru_cache(maxsize=16384)
def decode_key(raw: str) -> str:
    """The object key of a raw (still percent-encoded) path tail. Memoized (pure; hot keys
    are decoded and checked once; refused ones raise every time)."""
    data = percent_decode(raw)
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidKey(f"invalid key {raw[:80]!r}: not UTF-8") from exc
    return validate_key(key)


def decode_text(raw: str, what: str) -> str:
    """A percent-encoded UTF-8 path parameter other than an object key (InvalidArgument)."""
    try:
        return percent_decode(raw, what=what).decode("utf-8")
    except (UnicodeDecodeError, InvalidKey) as exc:
        raise InvalidArgument(f"invalid {what} {raw[:80]!r}: not percent-encoded UTF-8") from exc


def domain_param(call: Call) -> str:
    """The ``{domain}`` path parameter of a metastore route: decoded, then checked against the
    domain name rules (InvalidArgument)."""
    return check_domain_name(decode_text(call.params["domain"], "domain name"))
