"""ListObjects (v1) and ListObjectsV2: a bucket's keys in S3's order and shape, from the
daemon's own listing.

:func:`list_keys` walks the bucket's listing (``ObjectStore.list`` in key order) under
``<bucket's key prefix><prefix>``, rolls keys up into common prefixes at the first
``delimiter`` after the prefix, and stops after ``max_keys`` entries (keys and common
prefixes together, as S3 counts them), knowing whether more follow. A common prefix is
skipped past in the listing (the next call starts after all of its keys), so a bucket with a
million keys under ``photos/`` lists ``photos/`` in one call. The reserved ``.cachedaemon``
keys are skipped the same way: no listing shows them.

Where to resume: :func:`encode_token`/:func:`decode_token` make V2's opaque continuation
token from the last entry (after a common prefix, the next page starts past all of its keys);
v1's ``NextMarker`` is the last entry itself, and a marker (or ``start-after``) that is a
common prefix, or lies inside one, never brings that prefix back.

Runs on the request's shard.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from cachedaemon.namespace import RESERVED_PREFIX, is_reserved
from cachedaemon.remote.base import ObjectInfo
from cachedaemon.server.s3.errors import S3Error

#: Appended to a prefix: a string after every key that starts with it.
AFTER_ALL = "\U0010ffff"
MAX_KEYS = 1000


@dataclass
class Listing:
    contents: list[tuple[str, ObjectInfo]] = field(default_factory=list)  # (S3 key, info)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str | None = None  # the last key or common prefix returned
    last_is_prefix: bool = False


async def list_keys(objects: Any, key_prefix: str, prefix: str, delimiter: str,
                    start_after: str | None, max_keys: int) -> Listing:
    """One page (see the module doc). ``objects`` lists daemon keys (``list(prefix,
    start_after, limit)``); ``key_prefix`` is the bucket's part of them."""
    out = Listing()
    if max_keys <= 0:
        return out
    cut = len(key_prefix)
    base = key_prefix + prefix
    cursor: str | None = key_prefix + start_after if start_after else None
    count = 0
    while True:
        limit = 100 if delimiter else min(MAX_KEYS, max_keys - count + 1)
        page = await objects.list(base, cursor, limit)
        jump: str | None = None
        for info in page.objects:
            if not key_prefix and is_reserved(info.key):
                jump = RESERVED_PREFIX + AFTER_ALL
                break
            key = info.key[cut:]
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    common = key[: i + len(delimiter)]
                    jump = key_prefix + common + AFTER_ALL
                    if start_after is not None and common <= start_after:
                        break  # returned before, or passed by the marker
                    if count == max_keys:
                        out.truncated = True
                        return out
                    out.prefixes.append(common)
                    out.last, out.last_is_prefix = common, True
                    count += 1
                    break
            if count == max_keys:
                out.truncated = True
                return out
            out.contents.append((key, info))
            out.last, out.last_is_prefix = key, False
            count += 1
            cursor = info.key
        if jump is not None:
            cursor = jump
        elif page.next is None:
            return out
        else:
            cursor = page.next


def encode_token(listing: Listing) -> str:
    """V2's continuation token for the page after ``listing`` (REQUIRES: truncated)."""
    assert listing.last is not None
    after = listing.last + AFTER_ALL if listing.last_is_prefix else listing.last
    return base64.urlsafe_b64encode(("1:" + after).encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    """The ``start_after`` a continuation token stands for (``InvalidArgument`` if it is not
    one of ours)."""
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith("1:"):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      extra={"ArgumentName": "continuation-token"})
    return text[2:]
