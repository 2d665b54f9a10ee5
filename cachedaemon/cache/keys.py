"""Object keys and where they live on disk: the one key validator and the path encoding.

Every entry point of the cache (``get``, ``get_range``, ``is_cached``, ``put``, ``invalidate``,
``create_staging_file`` and the commit of a staging file) calls :func:`validate_key` first and
:func:`key_relpath` to find the file. Pure functions, no I/O, no state: any shard may call them.

**Key rules** (``shared/API.md``): a ``str``; UTF-8, 1-1024 bytes; each ``/``-separated segment
1-255 bytes; no NUL; no ``.`` or ``..`` segment; no leading or trailing ``/`` (hence no absolute
path and no empty segment, ``a//b``); not ending in ``.part``. Anything else raises
:class:`~cachedaemon.errors.InvalidKey` naming the rule that was broken. Keys are never
normalised: ``a/./b`` is refused, not turned into ``a/b``.

**On-disk encoding.** As in S3, ``a`` and ``a/b`` may both exist, but a file ``a`` and a
directory ``a/`` cannot share a name. So key segments are encoded, with ``%`` as the escape
character:

* ``esc(s)``: ``s`` with every ``%`` written ``%25``. After escaping, a ``%`` is always
  followed by ``25``, so names containing ``%`` followed by anything else are free for the
  cache's own use.
* The **last** segment of a key names the entry's file: ``esc(s)``.
* Every **other** segment names a directory: ``esc(s) + "%d"``.
* A name that would be longer than :data:`MAX_NAME_BYTES` (filesystems allow 255 bytes) is
  shortened to ``<first bytes of esc(s)>%h<sha256(s) in hex, 40 digits>`` (plus ``%d`` for a
  directory). Collisions would need a SHA-256 prefix collision.
* The cache's own files sit in the root and start with ``%`` followed by a letter other than a
  hex digit: the access-time tracker ``%tracker`` and its temporary ``%tracker.tmp``.
* In-flight (staging) files are ``<esc(last segment), cut to 120 bytes>_<shard>_<counter>.part``
  beside their destination. No committed entry ends in ``.part`` (keys may not, hashed names
  end in a hex digit) and no directory does (they end in ``%d``).

So key ``photos/2024/cat.jpg`` is the file ``photos%d/2024%d/cat.jpg``; key ``photos`` is the
file ``photos``; key ``100%`` is ``100%25``. The map is injective (every key has its own file),
files and directories never collide, and the committed entries of the cache are exactly the
regular files under the root other than ``*.part`` and the ``%tracker*`` files, as API.md
promises. The map is reversible (:func:`relpath_key`) except for shortened names.
"""

from __future__ import annotations

import functools
import hashlib

from cachedaemon.errors import InvalidKey

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
#: Longest on-disk name we produce (the usual NAME_MAX is 255; keep room for ``%d``).
MAX_NAME_BYTES = 240
PART_SUFFIX = ".part"
DIR_SUFFIX = "%d"
HASH_MARK = "%h"
#: The tracker's files, in the cache root. Unreachable from any key (see the encoding above).
TRACKER_NAME = "%tracker"
TRACKER_TMP_NAME = "%tracker.tmp"
#: The index's journal (``cachedaemon.cache.index_format``) and the one a compaction prepares.
JOURNAL_NAME = "%tracker.journal"
JOURNAL_TMP_NAME = "%tracker.journal.tmp"
INTERNAL_NAMES = frozenset({TRACKER_NAME, TRACKER_TMP_NAME, JOURNAL_NAME, JOURNAL_TMP_NAME})
#: How much of the destination's name a staging file keeps (its name must stay < 255 bytes).
STAGING_NAME_BYTES = 120


def _show(key: str) -> str:
    return repr(key) if len(key) <= 80 else repr(key[:77] + "...")


def validate_key(key: object) -> str:
    """Return ``key`` if it obeys the key rules, else raise :class:`InvalidKey` saying why."""
    if not isinstance(key, str):
        raise InvalidKey(f"a key must be a string, got {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"key {_show(key)} is not valid UTF-8") from None
    if not raw:
        raise InvalidKey("the key is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(f"the key is {len(raw)} bytes long; at most {MAX_KEY_BYTES} are allowed")
    if "\x00" in key:
        raise InvalidKey(f"key {_show(key)} contains a NUL character")
    if key.startswith("/"):
        raise InvalidKey(f"key {_show(key)} starts with '/' (keys are relative, not absolute paths)")
    if key.endswith("/"):
        raise InvalidKey(f"key {_show(key)} ends with '/'")
    if key.endswith(PART_SUFFIX):
        raise InvalidKey(f"key {_show(key)} ends in {PART_SUFFIX!r}, which is reserved for in-flight files")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"key {_show(key)} has an empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidKey(f"key {_show(key)} has a {segment!r} segment")
        n = len(segment.encode("utf-8"))
        if n > MAX_SEGMENT_BYTES:
            raise InvalidKey(
                f"key {_show(key)} has a segment of {n} bytes; at most {MAX_SEGMENT_BYTES} are allowed"
            )
    return key


def _escape(segment: str) -> str:
    return segment.replace("%", "%25")


def _cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form is at most ``limit`` bytes."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def _encode_segment(segment: str, *, directory: bool) -> str:
    name = _escape(segment)
    suffix = DIR_SUFFIX if directory else ""
    if len(name.encode("utf-8")) + len(suffix) > MAX_NAME_BYTES:
        digest = hashlib.sha256(segment.encode("utf-8")).hexdigest()[:40]
        head = _cut_utf8(name, 120)
        # Never end the head inside a "%25" escape: a dangling "%" could look like a mark.
        while head.endswith(("%", "%2")):
            head = head[:-1]
        name = f"{head}{HASH_MARK}{digest}"
    return name + suffix


def key_relpath(key: str) -> str:
    """The entry's path relative to the cache root (``/``-separated). REQUIRES: a valid key."""
    segments = key.split("/")
    parts = [_encode_segment(s, directory=True) for s in segments[:-1]]
    parts.append(_encode_segment(segments[-1], directory=False))
    return "/".join(parts)


def checked_relpath(key: object) -> str:
    """:func:`validate_key` then :func:`key_relpath`: what every entry point calls. Memoized:
    hot keys (repeated hits) skip the checks and the encoding (pure functions of the key;
    refused keys raise every time)."""
    if type(key) is str:
        return _checked_relpath(key)
    return key_relpath(validate_key(key))


@functools.lru_cache(maxsize=16384)
def _checked_relpath(key: str) -> str:
    return key_relpath(validate_key(key))


def staging_name(relpath: str, shard: int, counter: int) -> str:
    """The file name (no directory) of an in-flight file for the entry at ``relpath``."""
    base = relpath.rsplit("/", 1)[-1]
    return f"{_cut_utf8(base, STAGING_NAME_BYTES)}_{shard}_{counter}{PART_SUFFIX}"


def is_staging_name(name: str) -> bool:
    return name.endswith(PART_SUFFIX)


def relpath_key(relpath: str) -> str | None:
    """The key stored at ``relpath``, or ``None`` if it is not an entry's path or was shortened."""
    names = relpath.split("/")
    if not names or names[-1].endswith(PART_SUFFIX) or relpath in INTERNAL_NAMES:
        return None
    segments: list[str] = []
    for i, name in enumerate(names):
        if i < len(names) - 1:
            if not name.endswith(DIR_SUFFIX):
                return None
            name = name[: -len(DIR_SUFFIX)]
        if HASH_MARK in name or name.replace("%25", "").count("%"):
            return None
        segments.append(name.replace("%25", "%"))
    key = "/".join(segments)
    try:
        validate_key(key)
    except InvalidKey:
        return None
    return key
