"""Bloom filter policy ``cachedaemon.BloomV1`` (LevelDB's ``NewBloomFilterPolicy``).

A filter for ``n`` keys is ``max(64, n * bits_per_key)`` bits rounded up to whole bytes,
followed by one byte ``k`` (the number of probes, ``bits_per_key * ln 2`` clamped to 1..30).
Probes use double hashing of one 32-bit hash: ``h = fmix32(crc32(key))`` (zlib's CRC-32 then
MurmurHash3's finaliser, to spread CRC's linear structure), ``delta = rotr32(h, 17)``, probe
``i`` sets bit ``(h + i * delta) mod 2^32 mod bits`` (bit ``b`` is ``byte[b >> 3] & (1 << (b & 7))``).

About 1 % false positives at 10 bits per key. Pure functions; any shard.
"""

from __future__ import annotations

import collections
import functools
import itertools
import struct
import zlib

_M32 = 0xFFFFFFFF
_crc32 = zlib.crc32


def bloom_hash(key: bytes) -> int:
    h = _crc32(key)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def num_probes(bits_per_key: int) -> int:
    return max(1, min(30, int(bits_per_key * 0.69)))


def create_filter(keys: list[bytes], bits_per_key: int) -> bytes:
    k = num_probes(bits_per_key)
    n = len(keys)
    nbytes = (max(64, n * bits_per_key) + 7) // 8
    bits = nbytes * 8
    if not n:
        return bytes(nbytes) + bytes((k,))
    flags = bytearray(bits)  # one byte per filter bit: 1 = set
    for i in range(0, n, _CHUNK):
        _scatter(flags, keys[i : i + _CHUNK], k, bits)
    # Read the flags as a base-2 numeral, most significant first.
    mask = int(flags[::-1].translate(_AS_DIGITS), 2)
    return mask.to_bytes(nbytes, "little") + bytes((k,))


def _scatter(flags: bytearray, keys: list[bytes], k: int, bits: int) -> None:
    """Set the ``k`` probe positions of every key in ``flags``.

    The probes of all keys are computed at once, "SIMD within a register": one 32-bit value
    per key sits in each 128-bit lane of one Python int (lane i = bits 128i..), so a step is
    one big-int operation for every key instead of a bytecode sequence per key (which cost
    ~1 us a key). Nothing carries out of a lane: products stay below 2^96, sums below 2^37,
    and a right shift's spill from the lane above lands in bits 32.. (64.. for the >> 64),
    which the lane mask clears. The same hash and probes as :func:`key_may_match`.
    """
    n = len(keys)
    lanes = _lane_mask(n)
    h = _from_bytes(_lanes(n).pack(*map(_crc32, keys)), "little")
    h ^= (h >> 16) & lanes
    h = (h * 0x85EBCA6B) & lanes
    h ^= (h >> 13) & lanes
    h = (h * 0xC2B2AE35) & lanes
    h ^= (h >> 16) & lanes
    delta = ((h >> 17) | (h << 15)) & lanes
    # Probe i of every key, (h + i * delta) mod 2^32, in the lanes after probe i - 1's.
    probes = 0
    width = 128 * n
    for i in range(k):
        probes |= h << (width * i)
        h = (h + delta) & lanes
    # mod bits, by Barrett reduction: with m = ceil(2^64 / bits), (x * m) >> 64 is exactly
    # x // bits for every x < 2^32.
    m = -((-1 << 64) // bits)
    probes -= (((probes * m) >> 64) & _lane_mask(n * k)) * bits
    positions = _lanes(n * k).unpack(probes.to_bytes(16 * n * k, "little"))
    _consume(map(flags.__setitem__, positions, itertools.repeat(1)), 0)


#: Keys hashed together (bounds the cached lane masks and structs: n <= _CHUNK * 30).
_CHUNK = 128
_from_bytes = int.from_bytes
_consume = collections.deque
_AS_DIGITS = bytes.maketrans(b"\x00\x01", b"01")


@functools.lru_cache(maxsize=1024)
def _lane_mask(n: int) -> int:
    """The low 32 bits of each of ``n`` 128-bit lanes."""
    return _from_bytes((b"\xff\xff\xff\xff" + bytes(12)) * n, "little")


@functools.lru_cache(maxsize=1024)
def _lanes(n: int) -> struct.Struct:
    """Packs/unpacks ``n`` lanes of 128 bits, each holding a value below 2^64."""
    return struct.Struct("<" + "Q8x" * n)


def key_may_match(key: bytes, bloom: bytes) -> bool:
    n = len(bloom)
    if n < 2:
        return False
    k = bloom[-1]
    if k > 30:
        return True  # reserved for future encodings: treat as "may match"
    bits = (n - 1) * 8
    h = _crc32(key)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    delta = ((h >> 17) | (h << 15)) & _M32
    for _ in range(k):
        b = h % bits
        if not bloom[b >> 3] & (1 << (b & 7)):
            return False
        h = (h + delta) & _M32
    return True
