"""Python client of the cachedaemon HTTP API: :class:`AsyncClient` (asyncio, aiohttp) and
:class:`Client` (blocking, the async one on a private loop thread).

    with Client("http://127.0.0.1:8470", token=None) as c:
        c.put("photos/cat.jpg", Path("cat.jpg"))
        data = c.get("photos/cat.jpg")
        for info in c.list("photos/"):
            ...

Failures raise :mod:`cachedaemon.errors` classes chosen by the response's error code
(``NotFound``, ``PreconditionFailed``, ``TooLarge``, ...); an unreachable daemon raises
``DaemonUnreachable`` (an ``Unavailable``). Used by the CLI, the tests and users' programs.
"""

from cachedaemon.client.async_client import (
    DEFAULT_URL,
    AsyncClient,
    ByteRange,
    ObjectReader,
    Progress,
    PutData,
)
from cachedaemon.client.sync_client import Client, SyncObjectReader
from cachedaemon.client.types import (
    CacheStats,
    DomainInfo,
    Explanation,
    HotSetInfo,
    KvDelete,
    KvOp,
    KvPut,
    LevelInfo,
    MissRatioCurve,
    ObjectInfo,
    ObjectMeta,
    Reservations,
    TrimResult,
    WarmStatus,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "ByteRange",
    "CacheStats",
    "Client",
    "DomainInfo",
    "Explanation",
    "HotSetInfo",
    "KvDelete",
    "KvOp",
    "KvPut",
    "LevelInfo",
    "MissRatioCurve",
    "ObjectInfo",
    "ObjectMeta",
    "ObjectReader",
    "Progress",
    "PutData",
    "Reservations",
    "SyncObjectReader",
    "TrimResult",
    "WarmStatus",
]
