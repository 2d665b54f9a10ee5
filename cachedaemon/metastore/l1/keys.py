"""Row keys of the L1 metastore: an order-preserving text encoding, as in Redpanda.

Every L1 row lives in an ordinary metastore domain; its key is ASCII lowercase hex so that byte
order equals the order of the fields it encodes (fixed-width big-endian hex sorts like the
numbers). The layout (``docs/l1-format.md``) is Redpanda's ``metastore/lsm/keys.cc``::

    type (2 hex) ‖ topic uuid (32 hex) ‖ partition BE32 (8 hex) [‖ BE64 (16 hex)]
    00 metadata     tidp
    01 extent       tidp ‖ base offset
    02 term start   tidp ‖ term
    03 compaction   tidp
    04 object       object uuid (32 hex)

So all extents of one partition are one contiguous key range, in offset order; all partitions of
a topic are one contiguous range of metadata rows; and the object rows form one range the GC walks.

The bucket keys of the L1 objects themselves are here too (:func:`object_bucket_key`): each domain's
objects live under their own prefix ``l1/<domain>/objects/``, so one domain's GC can only ever
delete its own objects, whatever ids other domains use.

Pure functions; no state, usable from any shard.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cachedaemon.errors import Corruption

METADATA = b"00"
EXTENT = b"01"
TERM_START = b"02"
COMPACTION = b"03"
OBJECT = b"04"
ROW_TYPES = (METADATA, EXTENT, TERM_START, COMPACTION, OBJECT)

MAX_PARTITION = 2**31 - 1
MAX_U64 = 2**64 - 1

_TIDP_LEN = 2 + 32 + 8
_SUFFIX_LEN = 16


@dataclass(frozen=True, slots=True, order=True)
class TopicIdPartition:
    """A partition: (topic uuid, partition number). Orders as its keys do."""

    topic_id: uuid.UUID
    partition: int

    def __str__(self) -> str:
        return f"{self.topic_id}/{self.partition}"


def _tidp_hex(tidp: TopicIdPartition) -> bytes:
    return f"{tidp.topic_id.hex}{tidp.partition:08x}".encode("ascii")


def metadata_key(tidp: TopicIdPartition) -> bytes:
    return METADATA + _tidp_hex(tidp)


def extent_key(tidp: TopicIdPartition, base_offset: int) -> bytes:
    return EXTENT + _tidp_hex(tidp) + f"{base_offset:016x}".encode("ascii")


def term_key(tidp: TopicIdPartition, term: int) -> bytes:
    return TERM_START + _tidp_hex(tidp) + f"{term:016x}".encode("ascii")


def compaction_key(tidp: TopicIdPartition) -> bytes:
    return COMPACTION + _tidp_hex(tidp)


def object_key(oid: uuid.UUID) -> bytes:
    return OBJECT + oid.hex.encode("ascii")


# --- bucket keys of the objects ---------------------------------------------------------------

#: Where objects registered before per-domain keys lived (shared by every domain).
LEGACY_OBJECTS_PREFIX = "l1/objects/"


def object_bucket_key(domain: str, oid: uuid.UUID) -> str:
    """The bucket key of L1 object ``oid`` of domain ``domain``: ``l1/<domain>/objects/<oid>``
    (the writer uploads it there; the domain's GC deletes it from there)."""
    return f"l1/{domain}/objects/{oid}"


def legacy_object_bucket_key(oid: uuid.UUID) -> str:
    """The key of an object registered under the previous, shared layout."""
    return f"{LEGACY_OBJECTS_PREFIX}{oid}"


# --- ranges ----------------------------------------------------------------------------------


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (hex never ends in 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def extents_range(tidp: TopicIdPartition) -> tuple[bytes, bytes]:
    """``[start, end)`` covering every extent row of ``tidp``."""
    prefix = EXTENT + _tidp_hex(tidp)
    return prefix, prefix_end(prefix)


def terms_range(tidp: TopicIdPartition) -> tuple[bytes, bytes]:
    prefix = TERM_START + _tidp_hex(tidp)
    return prefix, prefix_end(prefix)


def topic_metadata_range(topic_id: uuid.UUID) -> tuple[bytes, bytes]:
    """``[start, end)`` covering the metadata rows of every partition of ``topic_id``."""
    prefix = METADATA + topic_id.hex.encode("ascii")
    return prefix, prefix_end(prefix)


def objects_range() -> tuple[bytes, bytes]:
    return OBJECT, prefix_end(OBJECT)


# --- decoding --------------------------------------------------------------------------------


def _hex_int(text: bytes, what: str) -> int:
    try:
        return int(text, 16)
    except ValueError as exc:
        raise Corruption(f"L1 key: bad {what} {text!r}") from exc


def _uuid(text: bytes) -> uuid.UUID:
    try:
        return uuid.UUID(hex=text.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Corruption(f"L1 key: bad uuid {text!r}") from exc


def decode_tidp(key: bytes) -> TopicIdPartition:
    """The partition of a metadata/extent/term/compaction key."""
    if len(key) < _TIDP_LEN or key[:2] not in (METADATA, EXTENT, TERM_START, COMPACTION):
        raise Corruption(f"L1 key {key!r} is not a partition row key")
    return TopicIdPartition(_uuid(key[2:34]), _hex_int(key[34:42], "partition"))


def decode_suffix(key: bytes) -> int:
    """The BE64 suffix (base offset or term) of an extent or term key."""
    if len(key) != _TIDP_LEN + _SUFFIX_LEN or key[:2] not in (EXTENT, TERM_START):
        raise Corruption(f"L1 key {key!r} has no offset/term suffix")
    return _hex_int(key[_TIDP_LEN:], "offset/term")


def decode_object_key(key: bytes) -> uuid.UUID:
    if len(key) != 34 or key[:2] != OBJECT:
        raise Corruption(f"L1 key {key!r} is not an object key")
    return _uuid(key[2:])
