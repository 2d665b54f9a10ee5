"""HTTP ``Range`` header parsing for object GETs (RFC 9110 §14, single byte ranges).

The range unit is matched case-insensitively (RFC 9110 §14.1: ``BYTES=0-1`` is a byte range).
``parse_range(header, size)`` returns the inclusive ``(first, last)`` to serve, ``None`` to
serve the whole object (no header, or a header we ignore as RFC 9110 allows: another unit,
several ranges), or raises :class:`InvalidRange` (-> ``416`` with ``Content-Range: bytes */SIZE``)
when the range is syntactically a byte range but cannot be satisfied. A malformed ``bytes=``
value is ignored (whole object), as HTTP caches and S3 do. Pure; used on every shard.
"""

from __future__ import annotations

import re

from cachedaemon.errors import InvalidRange

_SPEC = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII | re.IGNORECASE)
MAX_DIGITS = 19


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    if header is None:
        return None
    m = _SPEC.fullmatch(header)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if len(a) > MAX_DIGITS or len(b) > MAX_DIGITS:
        # Absurdly large numbers: treat as "past the end" / "all of it".
        a = a if len(a) <= MAX_DIGITS else str(2**63)
        b = b if len(b) <= MAX_DIGITS else str(2**63)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)  # suffix: the last n bytes
        if n == 0 or size == 0:
            raise InvalidRange(f"unsatisfiable range {header.strip()!r}: object has {size} bytes",
                               size)
        return max(0, size - n), size - 1
    first = int(a)
    if b != "":
        last = int(b)
        if last < first:
            return None  # invalid syntax per RFC 9110: ignore the header
    else:
        last = size - 1
    if first >= size:
        raise InvalidRange(f"unsatisfiable range {header.strip()!r}: object has {size} bytes",
                           size)
    return first, min(last, size - 1)
