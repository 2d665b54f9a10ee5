"""The L1 metastore: the catalogue of objects holding tiered partitions' offset ranges, with
object GC (Redpanda's cloud-topics ``level_one/metastore``), on the rows of a metastore domain.

Start at :class:`L1Metastore` (operations and queries; the request checks are in
:mod:`~cachedaemon.metastore.l1.validate`), :class:`DatabaseRowStore` (run it on an
``lsm.Database``) and :class:`ObjectGC` (expire preregistrations, delete objects whose data is
all dead). Objects live in the bucket at :func:`object_bucket_key` (``l1/<domain>/objects/<oid>``).
Row layouts and the validation rules are in ``docs/l1-format.md``; the HTTP API in
``docs/l1-api.md``.
"""

from cachedaemon.metastore.l1.errors import (
    InvalidRequest,
    MissingPartition,
    OutOfRange,
    TransportError,
)
from cachedaemon.metastore.l1.gc import ObjectGC
from cachedaemon.metastore.l1.keys import TopicIdPartition, object_bucket_key
from cachedaemon.metastore.l1.metastore import L1Metastore
from cachedaemon.metastore.l1.store import DatabaseRowStore, RowReader, RowStore

__all__ = [
    "DatabaseRowStore",
    "InvalidRequest",
    "L1Metastore",
    "MissingPartition",
    "ObjectGC",
    "OutOfRange",
    "RowReader",
    "RowStore",
    "TopicIdPartition",
    "TransportError",
    "object_bucket_key",
]
