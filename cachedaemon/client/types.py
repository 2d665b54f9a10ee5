"""Plain values the client returns: object listings and metadata, cache figures, domain info,
and the key-value batch operations it sends.

Immutable dataclasses built from the daemon's JSON (``shared/API.md``); fields the daemon adds
later are kept in ``raw`` where that matters (cache figures), ignored elsewhere. No I/O, no loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed or as acknowledged by a PUT. ``etag`` is quoted, as in HTTP."""

    key: str
    size: int
    etag: str

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ObjectInfo:
        return cls(key=str(doc["key"]), size=int(doc["size"]), etag=str(doc["etag"]))


@dataclass(frozen=True)
class ObjectMeta:
    """What the headers of a GET or HEAD say about an object.

    ``size`` is the whole object's size; ``content_length`` the bytes in this response (they
    differ for a ranged GET). ``cache`` is ``"hit"``/``"miss"`` (``X-Cache``) when given.
    """

    key: str
    size: int
    etag: str | None
    content_length: int | None
    cache: str | None = None
    content_range: str | None = None


@dataclass(frozen=True)
class CacheStats:
    """``GET /v1/cache``. ``raw`` holds every figure the daemon sent, in its order."""

    bytes_used: int
    objects: int
    bytes_reserved: int
    objects_reserved: int
    max_bytes: int
    max_objects: int
    hits: int
    misses: int
    trims: int
    shards: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CacheStats:
        def num(name: str) -> int:
            value = doc.get(name, 0)
            return int(value) if isinstance(value, int | float) else 0

        return cls(
            bytes_used=num("bytes_used"), objects=num("objects"),
            bytes_reserved=num("bytes_reserved"), objects_reserved=num("objects_reserved"),
            max_bytes=num("max_bytes"), max_objects=num("max_objects"), hits=num("hits"),
            misses=num("misses"), trims=num("trims"), shards=num("shards"), raw=dict(doc),
        )


@dataclass(frozen=True)
class TrimResult:
    """``POST /v1/cache/trim``."""

    bytes_freed: int
    objects_freed: int


@dataclass(frozen=True)
class LevelInfo:
    level: int
    files: int
    bytes: int


@dataclass(frozen=True)
class DomainInfo:
    """``GET /v1/domains/{domain}``."""

    name: str
    uuid: str
    epoch: int
    last_seqno: int
    persisted_seqno: int
    levels: tuple[LevelInfo, ...]
    read_only: bool
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DomainInfo:
        return cls(
            name=str(doc.get("name", "")),
            uuid=str(doc.get("uuid", "")),
            epoch=int(doc.get("epoch", 0)),
            last_seqno=int(doc.get("last_seqno", 0)),
            persisted_seqno=int(doc.get("persisted_seqno", 0)),
            levels=tuple(
                LevelInfo(level=int(lv["level"]), files=int(lv["files"]), bytes=int(lv["bytes"]))
                for lv in doc.get("levels", ())
            ),
            read_only=bool(doc.get("read_only", False)),
            raw=dict(doc),
        )


@dataclass(frozen=True)
class KvPut:
    """A put in a :meth:`~cachedaemon.client.AsyncClient.kv_batch`."""

    key: bytes | str
    value: bytes


@dataclass(frozen=True)
class KvDelete:
    """A delete in a :meth:`~cachedaemon.client.AsyncClient.kv_batch`."""

    key: bytes | str


KvOp = KvPut | KvDelete
