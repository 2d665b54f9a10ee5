"""The remote layer: the bucket behind the cache and the metastore.

``ObjectStore`` is the contract (``base``); backends are ``S3ObjectStore`` (``s3``, the only
botocore user), ``LocalObjectStore`` (``local``, ``file://`` URLs, the embedded default) and
``MemoryObjectStore`` (``memory``, tests); wrappers, one per file, stack on any of them:
``RetryingObjectStore``, ``InstrumentedObjectStore``, ``FaultInjectingObjectStore``.
``open_object_store(url)`` (``factory``) builds the configured one.

Depends on ``errors``, ``clock`` and ``core`` only.
"""

from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectStore,
    ObjectStoreBase,
    check_key,
)
from cachedaemon.remote.factory import check_bucket, open_object_store
from cachedaemon.remote.faulty import FaultInjectingObjectStore, FaultRule
from cachedaemon.remote.instrumented import InstrumentedObjectStore, ObjectStoreStats, OpStats
from cachedaemon.remote.local import LocalObjectStore
from cachedaemon.remote.memory import MemoryObjectStore
from cachedaemon.remote.retrying import RetryingObjectStore
from cachedaemon.remote.s3 import S3ObjectStore

__all__ = [
    "Body",
    "ByteRange",
    "FaultInjectingObjectStore",
    "FaultRule",
    "GetResult",
    "InstrumentedObjectStore",
    "ListPage",
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreBase",
    "ObjectStoreStats",
    "OpStats",
    "RetryingObjectStore",
    "S3ObjectStore",
    "check_bucket",
    "check_key",
    "open_object_store",
]
