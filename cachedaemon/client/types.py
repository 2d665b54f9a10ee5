"""Plain values the client returns: object listings and metadata, cache figures, domain info,
and the key-value batch operations it sends.

Immutable dataclasses built from the daemon's JSON (``shared/API.md``); fields the daemon adds
later are kept in ``raw`` where that matters (cache figures), ignored elsewhere. No I/O, no loop.
"""

from __future__ import annotations

import itertools
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


@dataclass(frozen=True)
class MissRatioCurve:
    """``GET /v1/cache/mrc``: the byte-weighted hit ratio the cache would have at each size
    (``sizes[i]`` bytes -> ``hit_ratios[i]``), estimated from ``samples`` sampled reads of
    ``reads``; ``max_bytes`` is the cache's size now. ``enabled`` is false when the curve is
    off (``cache.mrc_sample_rate`` 0)."""

    enabled: bool
    max_bytes: int
    sizes: tuple[int, ...]
    hit_ratios: tuple[float, ...]
    sample_rate: float
    samples: int
    reads: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MissRatioCurve:
        return cls(
            enabled=bool(doc.get("enabled", False)), max_bytes=int(doc.get("max_bytes", 0)),
            sizes=tuple(int(s) for s in doc.get("sizes", ())),
            hit_ratios=tuple(float(r) for r in doc.get("hit_ratios", ())),
            sample_rate=float(doc.get("sample_rate", 0.0)), samples=int(doc.get("samples", 0)),
            reads=int(doc.get("reads", 0)), raw=dict(doc))

    def hit_ratio_at(self, size: int) -> float:
        """The curve at ``size`` bytes, interpolated between its points."""
        pts = list(zip(self.sizes, self.hit_ratios, strict=True))
        if not pts:
            return 0.0
        if size <= pts[0][0]:
            return pts[0][1]
        for (s0, r0), (s1, r1) in itertools.pairwise(pts):
            if size <= s1:
                return r0 + (r1 - r0) * (size - s0) / max(1, s1 - s0)
        return pts[-1][1]


@dataclass(frozen=True)
class Explanation:
    """``GET /v1/cache/explain/{key}``: ``state`` is ``cached``, ``in_progress`` or
    ``absent``; ``raw`` has the details (see ``docs/api.md``)."""

    key: str
    state: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Explanation:
        return cls(key=str(doc.get("key", "")), state=str(doc.get("state", "")), raw=dict(doc))


@dataclass(frozen=True)
class Reservations:
    """``GET /v1/cache/reservations``: live reservations and queued requests, as dicts."""

    reservations: tuple[Mapping[str, Any], ...]
    waiters: tuple[Mapping[str, Any], ...]
    stale: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Reservations:
        return cls(reservations=tuple(doc.get("reservations", ())),
                   waiters=tuple(doc.get("waiters", ())), stale=int(doc.get("stale", 0)),
                   raw=dict(doc))


@dataclass(frozen=True)
class WarmStatus:
    """``GET``/``POST /v1/cache/warm``: a warm-up's progress. ``state`` is ``idle``,
    ``running``, ``done``, ``failed`` or ``cancelled``."""

    state: str
    source: str | None
    keys_total: int
    keys_done: int
    bytes_total: int
    bytes_done: int
    error: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WarmStatus:
        src = doc.get("source")
        err = doc.get("error")
        return cls(state=str(doc.get("state", "")), source=None if src is None else str(src),
                   keys_total=int(doc.get("keys_total", 0)),
                   keys_done=int(doc.get("keys_done", 0)),
                   bytes_total=int(doc.get("bytes_total", 0)),
                   bytes_done=int(doc.get("bytes_done", 0)),
                   error=None if err is None else str(err), raw=dict(doc))


@dataclass(frozen=True)
class HotSetInfo:
    """One published hot set (``GET /v1/cache/hotsets``, ``POST /v1/cache/hotset``)."""

    node: str
    published: float
    entries: int
    bytes: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HotSetInfo:
        return cls(node=str(doc.get("node", "")), published=float(doc.get("published", 0.0)),
                   entries=int(doc.get("entries", 0)), bytes=int(doc.get("bytes", 0)),
                   raw=dict(doc))
