"""The S3-compatible endpoint: a second listener that speaks the S3 REST API over the cache.

Every S3 tool (boto3, the AWS CLI, rclone, s3fs, the MinIO client, ...) pointed at
``server.s3_listen`` becomes a client of the daemon's cache. One concept per module:

* :mod:`.app` — the per-shard front: addressing, auth, dispatch, errors, metrics;
  :mod:`.router` picks the operation; :mod:`.handlers` implement them.
* :mod:`.sigv4`, :mod:`.chunked`, :mod:`.checksums` — Signature Version 4 (headers, presigned
  URLs, streaming chunk signatures), ``aws-chunked`` bodies, body checksums.
* :mod:`.errors`, :mod:`.xmlio` — S3's XML errors and bodies.
* :mod:`.buckets` — the bucket modes (``single``, ``prefix``); :mod:`.listing` — ListObjects;
  :mod:`.multipart` — multipart uploads; :mod:`.metadata` — headers and the object record.
* :mod:`.objectpath` — S3's side of the object path: every read and write of an object runs
  :mod:`cachedaemon.server.objectops`, the code ``/v1`` runs (one coherence rule, the same
  reservations and reserved keys), with S3's metadata and headers around it.

Documented for users in ``docs/s3-endpoint.md``.
"""
