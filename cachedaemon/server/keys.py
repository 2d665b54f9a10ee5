"""Object keys from request paths: strict percent-decoding of the RAW path, then the key rules.

The key is taken from ``request.raw_path`` (never aiohttp's normalised path), so ``a/../b`` is
refused rather than silently becoming ``b``; ``%2F`` decodes to ``/`` and is the same key as a
literal slash. A malformed escape or bytes that are not UTF-8 are ``400 invalid_key``, and so is
anything :func:`validate_key` (the one key validator, shared with the cache) refuses.
Pure; used on every shard.
"""

from __future__ import annotations

import re

from cachedaemon.cache.keys import validate_key as cache_validate_key
from cachedaemon.errors import InvalidArgument, InvalidKey
from cachedaemon.metastore.registry import check_domain_name
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
    """The object key rules of shared/API.md (the cache's one validator); InvalidKey if broken."""
    return cache_validate_key(key)


def decode_key(raw: str) -> str:
    """The object key of a raw (still percent-encoded) path tail."""
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
