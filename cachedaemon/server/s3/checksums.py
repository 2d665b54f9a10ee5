"""Integrity checks of an uploaded body: ``Content-MD5``, ``x-amz-checksum-*`` and the SigV4
payload hash, computed as the bytes stream past and compared at the end, as S3 does.

:class:`BodyChecks` is built from the request's headers (and, for a trailer-carrying
``aws-chunked`` body, the names announced in ``x-amz-trailer``). :meth:`BodyChecks.update`
sees every payload byte; :meth:`BodyChecks.verify` (given the trailers, if any) raises
``InvalidDigest`` for a malformed value, ``BadDigest`` for a mismatch and
``XAmzContentSHA256Mismatch`` when the signed payload hash differs. Supported algorithms: MD5
(``Content-MD5``), CRC32, CRC32C, SHA1, SHA256, and CRC64NVME where ``awscrt`` is installed
(a client that can compute it has it); another algorithm is ``InvalidRequest``.
:meth:`BodyChecks.md5_hex` gives the body's MD5 (a part's ETag) without hashing twice.

Runs on the request's shard; the hashing happens on its loop (hashlib releases the GIL on
large buffers, but the time is the shard's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import google_crc32c

from cachedaemon.server.s3.errors import S3Error


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


class _Crc32c:
    __slots__ = ("_crc",)

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes) -> None:
        self._crc = int(google_crc32c.extend(self._crc, data))

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


def _crc64nvme_factory() -> Callable[[], _Hash] | None:
    try:
        from awscrt import checksums  # type: ignore[import-not-found]
    except ImportError:
        return None

    class _Crc64:
        __slots__ = ("_crc",)

        def __init__(self) -> None:
            self._crc = 0

        def update(self, data: bytes) -> None:
            self._crc = checksums.crc64nvme(data, self._crc)

        def digest(self) -> bytes:
            return int(self._crc).to_bytes(8, "big")

    return _Crc64


ALGORITHMS: dict[str, Callable[[], _Hash]] = {
    "crc32": _Crc32,
    "crc32c": _Crc32c,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}
_crc64 = _crc64nvme_factory()
if _crc64 is not None:
    ALGORITHMS["crc64nvme"] = _crc64
KNOWN = frozenset({*ALGORITHMS, "crc64nvme"})
_PREFIX = "x-amz-checksum-"


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", f"The {what} you specified was invalid.") from None


class BodyChecks:
    """The checks one upload's body must pass (see the module doc)."""

    def __init__(self, headers: Mapping[str, str], payload_sha256: str | None,
                 trailer_names: list[str], *, want_md5: bool = False) -> None:
        self._expected: dict[str, bytes | None] = {}  # algorithm -> digest (None: trailer)
        self._hashes: dict[str, Any] = {}
        md5 = headers.get("content-md5")
        self._md5 = hashlib.md5() if want_md5 or md5 is not None else None
        self._expected_md5: bytes | None = None
        if md5 is not None:
            digest = _b64(md5, "Content-MD5")
            if len(digest) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
            self._expected_md5 = digest
        for name, value in headers.items():
            if name.startswith(_PREFIX) and name not in ("x-amz-checksum-type",
                                                         "x-amz-checksum-mode"):
                self._want(name[len(_PREFIX):], _b64(value, name))
        for name in trailer_names:
            name = name.strip().lower()
            if name.startswith(_PREFIX):
                self._want(name[len(_PREFIX):], None)
        self._sha256_expected = payload_sha256
        if payload_sha256 is not None and "sha256" not in self._hashes:
            self._hashes["sha256"] = hashlib.sha256()

    def _want(self, algorithm: str, digest: bytes | None) -> None:
        if algorithm not in KNOWN:
            raise S3Error("InvalidRequest", f"x-amz-checksum-{algorithm[:32]} is not a "
                          "supported checksum algorithm")
        factory = ALGORITHMS.get(algorithm)
        if factory is None:
            raise S3Error("NotImplemented", f"the {algorithm.upper()} checksum needs awscrt, "
                          "which this daemon does not have")
        if len(self._expected) >= 1 and algorithm not in self._expected:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                          "Multiple checksum Types are not allowed.")
        self._expected[algorithm] = digest
        self._hashes.setdefault(algorithm, factory())

    @property
    def active(self) -> bool:
        """False when there is nothing to compute."""
        return self._md5 is not None or bool(self._hashes)

    def update(self, data: bytes) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        for h in self._hashes.values():
            h.update(data)

    def md5_hex(self) -> str:
        """REQUIRES: built with ``want_md5``."""
        assert self._md5 is not None
        return self._md5.hexdigest()

    def checksums(self) -> dict[str, str]:
        """The verified ``x-amz-checksum-*`` values (base64), by algorithm, after verify()."""
        return {a: base64.b64encode(self._hashes[a].digest()).decode() for a in self._expected}

    def verify(self, trailers: Mapping[str, str] | None = None) -> None:
        if self._sha256_expected is not None:
            got = self._hashes["sha256"].hexdigest()
            if got != self._sha256_expected:
                raise S3Error("XAmzContentSHA256Mismatch", "The provided "
                              "'x-amz-content-sha256' header does not match what was computed.",
                              extra={"ClientComputedContentSHA256": self._sha256_expected,
                                     "S3ComputedContentSHA256": got})
        if self._expected_md5 is not None and self._md5 is not None \
                and self._md5.digest() != self._expected_md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                          "received.")
        for algorithm, expected in self._expected.items():
            if expected is None:
                value = (trailers or {}).get(_PREFIX + algorithm)
                if value is None:
                    raise S3Error("IncompleteBody", f"the trailer {_PREFIX}{algorithm} is "
                                  "missing")
                expected = _b64(value, _PREFIX + algorithm)
            if self._hashes[algorithm].digest() != expected:
                raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not "
                              "match the calculated checksum.")
