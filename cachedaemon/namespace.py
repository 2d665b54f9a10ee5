"""The reserved namespace: where the daemon keeps its own objects, apart from every user key.

API.md reserves every key whose first segment begins with ``.cachedaemon``: object routes
refuse them (``400 invalid_key``), listings never show them, and everything the daemon writes
for itself lives under :data:`BUCKET_ROOT` in the bucket and under :data:`CACHE_ROOT` in the
cache. Because no user key can start there, no object route can read, overwrite or delete the
metastore's SSTs, manifests, logs or registry, nor their cached copies.

Layout (each owner documents its own part):

* ``.cachedaemon/meta/registry/<domain>`` and ``.cachedaemon/meta/domain/<uuid>/…``: the
  metastore (registry, epochs, manifests, SSTs, remote write-ahead log);
* ``.cachedaemon/lsm/…`` (cache keys only): the cached copies of the metastore's SSTs;
* ``.cachedaemon/bucket-id``: the bucket's identity, so a cache never outlives its bucket;
* ``.cachedaemon/hotset/<node-id>``: published hot sets for warm starts;
* ``.cachedaemon/s3/buckets/<name>``: the buckets CreateBucket made on the S3 endpoint in
  ``prefix`` mode (``cachedaemon/server/s3/buckets.py``);
* ``.cachedaemon/s3/uploads/<upload-id>/<part>`` (cache keys only): the parts of the S3
  endpoint's multipart uploads, staged in the cache (``cachedaemon/server/s3/multipart.py``).

Pure constants and functions; any shard may use them.
"""

from __future__ import annotations

import re

#: The first-segment prefix that marks a reserved key.
RESERVED_PREFIX = ".cachedaemon"
#: Everything the daemon writes for itself in the bucket lives under this prefix.
BUCKET_ROOT = ".cachedaemon/"
#: The metastore's part of the bucket.
META_ROOT = BUCKET_ROOT + "meta/"
#: The cache keys of cached metastore SSTs.
CACHE_ROOT = BUCKET_ROOT + "lsm/"
#: The object that names the bucket (see :data:`BUCKET_ROOT`).
BUCKET_ID_KEY = BUCKET_ROOT + "bucket-id"
#: Published hot sets, one object per node.
HOTSET_ROOT = BUCKET_ROOT + "hotset/"
#: The S3 endpoint's buckets (``prefix`` mode), one marker object each.
S3_BUCKETS_ROOT = BUCKET_ROOT + "s3/buckets/"
#: The cache keys of the S3 endpoint's multipart parts.
S3_UPLOADS_ROOT = BUCKET_ROOT + "s3/uploads/"


def is_reserved(key: str) -> bool:
    """True when ``key``'s first ``/``-separated segment begins with ``.cachedaemon``."""
    return key.startswith(RESERVED_PREFIX)


#: A node id (``server.node_id``): one key segment, so ``HOTSET_ROOT + node_id`` is one object.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def validate_node_id(node_id: str) -> str | None:
    """None if ``node_id`` is a valid node id, else what is wrong with it."""
    if NODE_ID.fullmatch(node_id):
        return None
    return ("a node id is 1-63 letters, digits, '.', '_' or '-', starting with a letter or a "
            f"digit; got {node_id!r}")


def hotset_key(node_id: str) -> str:
    """The bucket key of ``node_id``'s published hot set."""
    return HOTSET_ROOT + node_id
