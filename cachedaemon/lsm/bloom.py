"""Bloom filter policy ``cachedaemon.BloomV1`` (LevelDB's ``NewBloomFilterPolicy``).

A filter for ``n`` keys is ``max(64, n * bits_per_key)`` bits rounded up to whole bytes,
followed by one byte ``k`` (the number of probes, ``bits_per_key * ln 2`` clamped to 1..30).
Probes use double hashing of one 32-bit hash: ``h = fmix32(crc32(key))`` (zlib's CRC-32 then
MurmurHash3's finaliser, to spread CRC's linear structure), ``delta = rotr32(h, 17)``, probe
``i`` sets bit ``(h + i * delta) mod 2^32 mod bits`` (bit ``b`` is ``byte[b >> 3] & (1 << (b & 7))``).

About 1 % false positives at 10 bits per key. Pure functions; any shard.
"""

from __future__ import annotations

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
    nbytes = (max(64, len(keys) * bits_per_key) + 7) // 8
    bits = nbytes * 8
    # The bit array is built as one Python int (bit b = byte b >> 3, bit b & 7 once written
    # little-endian): filters are small (one per ~2 KiB of data), so OR-ing into an int is
    # cheaper than indexing a bytearray.
    mask = 0
    probes = range(k)
    for key in keys:
        h = _crc32(key)
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & _M32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & _M32
        h ^= h >> 16
        delta = ((h >> 17) | (h << 15)) & _M32
        for _ in probes:
            mask |= 1 << (h % bits)
            h = (h + delta) & _M32
    return mask.to_bytes(nbytes, "little") + bytes((k,))


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
