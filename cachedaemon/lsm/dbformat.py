"""Internal keys: how the engine orders every version of every user key (LevelDB's dbformat).

An *internal key* is the byte string::

    escape(user_key) ‖ 0x00 0x00 ‖ BE64(~(seqno << 8 | kind))

where ``escape`` doubles every ``0x00`` of the user key into ``0x00 0xFF``, ``kind`` is
:data:`KIND_VALUE` (0) or :data:`KIND_DELETE` (1) and ``~`` is the 64-bit complement.

Why not Redpanda's ``user ‖ 0x00 ‖ BE64(...)``: under plain byte comparison it misorders user
keys that are prefixes of each other when the longer one continues with ``0x00`` (``b"a"``
encodes as ``a 00 FF..`` and ``b"a\\x00"`` as ``a 00 00 ..``, so ``b"a\\x00"`` would sort
first). LevelDB avoids that with a comparator that splits off the trailer on every comparison;
in Python a custom comparator costs a function call per comparison, so instead the encoding is
made *order-preserving*: the escape keeps ``0x00`` inside a user key greater than the
``0x00 0x00`` terminator, so plain ``bytes`` comparison (C speed, usable by ``bisect``,
``heapq`` and ``sorted``) yields: user key ascending, then seqno descending (newest first),
then tombstone before value at an equal seqno. Unescaping is one ``bytes.replace`` because every
``0x00`` of the escaped form is immediately followed by its ``0xFF``.

Pure functions; used from any shard.
"""

from __future__ import annotations

import struct

from cachedaemon.errors import Corruption

KIND_VALUE = 0
KIND_DELETE = 1
#: The kind used in seek targets: the smallest trailer for a seqno, so a seek lands on the
#: newest version whose seqno is <= the target seqno.
KIND_SEEK = 0xFF

MAX_SEQNO = (1 << 56) - 1
_MASK64 = (1 << 64) - 1
TRAILER_LEN = 10  # 0x00 0x00 terminator + 8-byte trailer
TERMINATOR = b"\x00\x00"

_BE64 = struct.Struct(">Q")
_pack64 = _BE64.pack
_unpack64 = _BE64.unpack_from


def escape(user_key: bytes) -> bytes:
    """The order-preserving form of a user key (without the terminator)."""
    return user_key.replace(b"\x00", b"\x00\xff")


def unescape(escaped: bytes) -> bytes:
    return escaped.replace(b"\x00\xff", b"\x00")


def user_prefix(user_key: bytes) -> bytes:
    """``escape(user_key) ‖ terminator``: every internal key of ``user_key`` starts with it."""
    return user_key.replace(b"\x00", b"\x00\xff") + TERMINATOR


def trailer(seqno: int, kind: int) -> bytes:
    return _pack64(_MASK64 ^ ((seqno << 8) | kind))


def make_internal_key(user_key: bytes, seqno: int, kind: int) -> bytes:
    return user_key.replace(b"\x00", b"\x00\xff") + TERMINATOR + _pack64(
        _MASK64 ^ ((seqno << 8) | kind)
    )


def seek_key(user_key: bytes, seqno: int = MAX_SEQNO) -> bytes:
    """The internal key that sorts before every version of ``user_key`` with seqno <= ``seqno``."""
    return make_internal_key(user_key, seqno, KIND_SEEK)


def user_key(ikey: bytes) -> bytes:
    return ikey[:-TRAILER_LEN].replace(b"\x00\xff", b"\x00")


def seqno_kind(ikey: bytes) -> tuple[int, int]:
    tag = _MASK64 ^ _unpack64(ikey, len(ikey) - 8)[0]
    return tag >> 8, tag & 0xFF


def parse_internal_key(ikey: bytes) -> tuple[bytes, int, int]:
    """``(user_key, seqno, kind)``; raises :class:`Corruption` for a malformed key."""
    if len(ikey) < TRAILER_LEN or ikey[-TRAILER_LEN : -8] != TERMINATOR:
        raise Corruption(f"malformed internal key {ikey[:32]!r}")
    tag = _MASK64 ^ _unpack64(ikey, len(ikey) - 8)[0]
    kind = tag & 0xFF
    if kind not in (KIND_VALUE, KIND_DELETE):
        raise Corruption(f"internal key with unknown kind {kind}")
    return ikey[:-TRAILER_LEN].replace(b"\x00\xff", b"\x00"), tag >> 8, kind


def user_part(ikey: bytes) -> bytes:
    """The escaped user key plus terminator: equal for all versions of one user key, and
    ordered like the user keys themselves."""
    return ikey[:-8]


def first_ikey_after_user_key(user_key: bytes) -> bytes:
    """An internal key greater than every version of ``user_key`` and no greater than any
    version of a larger user key (the smallest version of ``user_key`` is seqno 0 / value)."""
    return make_internal_key(user_key, 0, KIND_VALUE) + b"\x00"
