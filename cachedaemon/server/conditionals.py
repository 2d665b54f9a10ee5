"""Conditional requests (RFC 9110 §13): entity-tag lists and what a precondition decides.

The object routes call :func:`evaluate` with the request's headers and the object's current
ETag (``None`` when absent) before they serve or replace it. It follows §13.2.2's order:

1. ``If-Match`` (strong comparison: a weak tag ``W/"x"`` never matches; ``*`` matches any
   existing object): false -> ``412``.
2. ``If-None-Match`` (weak comparison; ``*`` matches any existing object): true -> ``304``
   for GET and HEAD, ``412`` for other methods.
3. ``If-Range`` (GET with a ``Range`` only): an ETag that matches strongly keeps the range; a
   weak tag, another tag or an HTTP date (we keep no modification dates for ``/v1``) makes the
   answer the whole object (``200``).

Header values are lists: several tags separated by commas (a tag's quotes may hold commas), and
a header sent twice is one list. An unparseable list never matches (for ``If-Match`` that means
``412``, for ``If-None-Match`` it means "no match", as most servers do). Pure; any shard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cachedaemon.errors import PreconditionFailed


@dataclass(frozen=True, slots=True)
class EntityTag:
    opaque: str  # without quotes
    weak: bool = False

    def header(self) -> str:
        return f'W/"{self.opaque}"' if self.weak else f'"{self.opaque}"'


ANY = "*"


def parse_etag_list(value: str | None) -> list[EntityTag] | str | None:
    """``None`` if absent; ``"*"``; else the list of tags (empty if nothing parsed)."""
    if value is None:
        return None
    text = value.strip()
    if text == ANY:
        return ANY
    tags: list[EntityTag] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        weak = False
        if text.startswith("W/", i):
            weak = True
            i += 2
        if i >= n or text[i] != '"':
            # A bare token (some clients omit the quotes): up to the next comma.
            end = text.find(",", i)
            end = n if end < 0 else end
            token = text[i:end].strip()
            if token and '"' not in token:
                tags.append(EntityTag(token, weak))
            i = end
            continue
        end = text.find('"', i + 1)
        if end < 0:
            return []  # unterminated: nothing matches
        tags.append(EntityTag(text[i + 1:end], weak))
        i = end + 1
    return tags


def strong_match(tags: list[EntityTag] | str, etag: str | None) -> bool:
    if etag is None:
        return False
    if tags == ANY:
        return True
    assert not isinstance(tags, str)
    return any(not t.weak and t.opaque == etag for t in tags)


def weak_match(tags: list[EntityTag] | str, etag: str | None) -> bool:
    if etag is None:
        return False
    if tags == ANY:
        return True
    assert not isinstance(tags, str)
    return any(t.opaque == etag for t in tags)


class Outcome(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"  # 304 (GET/HEAD)


def evaluate(method: str, if_match: str | None, if_none_match: str | None,
             etag: str | None) -> Outcome:
    """RFC 9110 §13.2.2 steps 1 and 3 for an object whose current ETag (unquoted) is ``etag``
    (``None``: no object). Raises :class:`PreconditionFailed` for ``412``."""
    im = parse_etag_list(if_match)
    if im is not None and not strong_match(im, etag):
        if etag is None:
            raise PreconditionFailed("If-Match: the object does not exist")
        raise PreconditionFailed(f'If-Match: the object\'s ETag is "{etag}"')
    inm = parse_etag_list(if_none_match)
    if inm is not None and weak_match(inm, etag):
        if method in ("GET", "HEAD"):
            return Outcome.NOT_MODIFIED
        raise PreconditionFailed(f'If-None-Match: the object exists with ETag "{etag}"')
    return Outcome.PROCEED


def range_applies(if_range: str | None, etag: str | None) -> bool:
    """Whether a ``Range`` is honoured given ``If-Range`` (step 5): only a strong match of an
    entity tag keeps it; anything else (a date, a weak or other tag) means the whole object."""
    if if_range is None:
        return True
    tags = parse_etag_list(if_range)
    if not isinstance(tags, list) or len(tags) != 1:
        return False
    tag = tags[0]
    return not tag.weak and etag is not None and tag.opaque == etag and \
        if_range.strip().startswith('"')
