"""Hot sets: what a node's cache holds, most recently used first, published for warm starts.

Shard 0 publishes its cache's hot set to ``.cachedaemon/hotset/<node-id>`` in the bucket
(:data:`cachedaemon.namespace.HOTSET_ROOT`) every ``cache.hotset_interval`` and at shutdown;
a node started with ``--warm-from NODE-ID|any`` (or ``cachedaemon warm``) reads one and fetches
its objects, most valuable first, into its own cache. This module is the format and the pure
choices around it; the publishing and the fetching are the server's
(:mod:`cachedaemon.server.warm`).

**Format** (one object), written by :func:`encode` and read by :func:`decode`::

    magic     8 bytes   b"CDHOTSET"
    version   u32 LE    1
    crc32c    u32 LE    CRC32C (Castagnoli) of the compressed body
    length    u64 LE    byte length of the compressed body
    body      zstd      msgpack map {"node": str, "published": float (unix seconds),
                                     "max_bytes": int, "entries": [[key, size, rank], ...]}

Entries are cache keys, most recently used first; ``rank`` is that order (0 = the most
recent). Keys are the object keys users read, plus the metastore's cached SSTs
(``.cachedaemon/lsm/<object key>``, fetched from ``<object key>``); nothing else of the
reserved namespace (multipart parts are not bucket objects). An entry whose on-disk name was
shortened (a segment over 240 bytes) has no key to recover and is left out. A damaged object
raises :class:`~cachedaemon.errors.Corruption`; a body that inflates past
:data:`MAX_BODY_BYTES` is refused the same way.

**Node ids** (``server.node_id``, checked by
:func:`cachedaemon.namespace.validate_node_id`): 1-63 characters of ``[A-Za-z0-9._-]``,
starting with a letter or digit, so a node id is always one key segment.

Pure functions; any shard may call them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

import google_crc32c
import msgspec
import zstandard

from cachedaemon.cache.keys import relpath_key
from cachedaemon.errors import Corruption
from cachedaemon.namespace import (
    CACHE_ROOT,
    HOTSET_ROOT,
    hotset_key,
    is_reserved,
    validate_node_id,
)

__all__ = ["HotEntry", "HotSet", "decode", "encode", "entries_from_lru", "hotset_key",
           "node_of", "plan", "validate_node_id", "warmable"]

MAGIC = b"CDHOTSET"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
#: Largest body :func:`decode` inflates (a million entries of 200-byte keys fit).
MAX_BODY_BYTES = 256 * 1024 * 1024


def node_of(key: str) -> str | None:
    """The node id a hot set's bucket key names, or ``None`` if it is not one."""
    if not key.startswith(HOTSET_ROOT):
        return None
    node = key[len(HOTSET_ROOT):]
    return node if validate_node_id(node) is None else None


@dataclass(frozen=True)
class HotEntry:
    key: str  # the cache key (a user key, or .cachedaemon/lsm/<object key>)
    size: int
    rank: int  # 0 = the most recently used

    @property
    def object_key(self) -> str:
        """The bucket object this entry is a copy of."""
        if self.key.startswith(CACHE_ROOT):
            return self.key[len(CACHE_ROOT):]
        return self.key

    @property
    def is_sst(self) -> bool:
        return self.key.startswith(CACHE_ROOT)


@dataclass(frozen=True)
class HotSet:
    node: str
    published: float
    max_bytes: int
    entries: tuple[HotEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def warmable(key: str) -> bool:
    """True for the keys a hot set carries: user keys and cached SSTs."""
    return not is_reserved(key) or key.startswith(CACHE_ROOT)


def entries_from_lru(items: Iterable[tuple[str, int]], limit: int) -> tuple[HotEntry, ...]:
    """Hot set entries from entry paths and sizes, most recently used first (as the cache
    index gives them reversed), at most ``limit`` of them."""
    out: list[HotEntry] = []
    for rel, size in items:
        if len(out) >= limit:
            break
        key = relpath_key(rel)
        if key is None or not warmable(key):
            continue
        out.append(HotEntry(key, size, len(out)))
    return tuple(out)


def encode(hotset: HotSet) -> bytes:
    body = msgspec.msgpack.encode({
        "node": hotset.node,
        "published": hotset.published,
        "max_bytes": hotset.max_bytes,
        "entries": [[e.key, e.size, e.rank] for e in hotset.entries],
    })
    packed = zstandard.ZstdCompressor(level=3).compress(body)
    return _HEADER.pack(MAGIC, VERSION, google_crc32c.value(packed), len(packed)) + packed


class _Body(msgspec.Struct):
    node: str
    published: float
    max_bytes: int
    entries: list[tuple[str, int, int]]


def decode(data: bytes) -> HotSet:
    if len(data) < _HEADER.size:
        raise Corruption(f"hot set is {len(data)} bytes, shorter than its header")
    magic, version, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Corruption("hot set has a bad magic number")
    if version != VERSION:
        raise Corruption(f"hot set has unknown version {version}")
    packed = data[_HEADER.size:]
    if len(packed) != length:
        raise Corruption(f"hot set body is {len(packed)} bytes, header says {length}")
    if google_crc32c.value(packed) != crc:
        raise Corruption("hot set checksum mismatch")
    try:
        body = zstandard.ZstdDecompressor().decompress(packed, max_output_size=MAX_BODY_BYTES)
        raw = msgspec.msgpack.decode(body, type=_Body)
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise Corruption(f"hot set body does not decode: {exc}") from exc
    if validate_node_id(raw.node) is not None:
        raise Corruption(f"hot set names a bad node id {raw.node!r}")
    entries = tuple(HotEntry(k, s, r) for k, s, r in raw.entries if s >= 0 and warmable(k))
    return HotSet(raw.node, raw.published, raw.max_bytes, entries)


def plan(hotset: HotSet, budget: int, max_object_bytes: int) -> list[HotEntry]:
    """What to fetch, in order: the most recently used first (the ones a cache of any size
    would keep), each that fits in what is left of ``budget`` bytes and in
    ``max_object_bytes``; an entry too big to fit is skipped, not a stop."""
    out: list[HotEntry] = []
    left = budget
    for entry in sorted(hotset.entries, key=lambda e: e.rank):
        if entry.size > max_object_bytes or entry.size > left:
            continue
        out.append(entry)
        left -= entry.size
        if left <= 0:
            break
    return out
