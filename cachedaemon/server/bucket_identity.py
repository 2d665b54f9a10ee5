"""The bucket's identity, so a cache never outlives its bucket.

Every bucket (or bucket prefix) the daemon serves carries one object,
:data:`~cachedaemon.namespace.BUCKET_ID_KEY` (``.cachedaemon/bucket-id``), holding a random id
that the first daemon to start on it creates with put-if-absent (concurrent first starts agree:
the losers read the winner's id). The data directory records which id its cache belongs to, in
``<data_dir>/bucket-id``. At start-up, before the cache recovers, :func:`check_bucket_identity`
compares the two:

- the same id: the cache is this bucket's; nothing happens;
- a different id — another bucket, or the same name deleted and created again (its id object
  went with it, so a new id is made) — or a cache with no record at all: the cache is dropped
  with a warning instead of being served, and the new id is recorded;
- an empty data directory: the id is recorded.

The drop is crash-safe: ``cache/`` is renamed to ``cache.stale-<random>`` (one atomic step),
the record is written (temporary file, fsync, rename, directory fsync), then the stale tree is
deleted; a leftover ``cache.stale-*`` from an interrupted start is deleted at the next. Only the
cache is dropped: the metastore's local write-ahead logs (``wal/``) are kept, keyed by domain
uuids that a new bucket does not reuse.

A read-only daemon (``server.read_only``) never writes to the bucket, so it does not create the
id: while the bucket has none it keeps a cache that has no record, and drops one whose recorded
bucket has since lost its id.

Runs once, on shard 0, before any shard's cache service starts; the file work runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachedaemon.core.failpoints import failpoint_sync
from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import CacheDaemonError, PreconditionFailed
from cachedaemon.namespace import BUCKET_ID_KEY
from cachedaemon.remote.base import ObjectStore

log = logging.getLogger("cachedaemon.server")

#: The record in the data directory: which bucket id its cache belongs to.
RECORD_NAME = "bucket-id"
CACHE_DIR_NAME = "cache"
STALE_PREFIX = "cache.stale-"


class BucketIdentityError(CacheDaemonError):
    """The bucket's identity object cannot be read or made; start-up stops (exit 1)."""

    code = "upstream_error"
    http_status = 502


@dataclass(frozen=True)
class IdentityCheck:
    """What :func:`reconcile_data_dir` found and did."""

    bucket_id: str | None
    recorded_id: str | None  # the data directory's record before this start
    dropped: bool  # the cache was dropped
    recorded: bool  # the record was (re)written


def _encode(bucket_id: str) -> bytes:
    return json.dumps({"bucket_id": bucket_id, "created": time.time()}).encode() + b"\n"


def _decode(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    value = doc.get("bucket_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None


async def read_or_create_bucket_id(store: ObjectStore, *, create: bool) -> str | None:
    """The bucket's id; made (put-if-absent) when missing and ``create``, else None."""
    body = await store.get_bytes(BUCKET_ID_KEY)
    if body is None:
        if not create:
            return None
        fresh = _encode(uuid.uuid4().hex)
        try:
            await store.put_if_absent(BUCKET_ID_KEY, fresh)
            body = fresh
        except PreconditionFailed:
            # Another daemon made it first (or our own retried put landed): take that one.
            body = await store.get_bytes(BUCKET_ID_KEY)
            if body is None:
                raise BucketIdentityError(
                    f"{BUCKET_ID_KEY} in {store.url} exists and then does not: is another "
                    "process deleting it?") from None
    bucket_id = _decode(body)
    if bucket_id is None:
        raise BucketIdentityError(
            f"{BUCKET_ID_KEY} in {store.url} is not a bucket identity ({body[:64]!r}); delete "
            "that object and start again (every daemon's cache of this bucket is then dropped)")
    return bucket_id


def read_record(data_dir: Path) -> dict[str, Any] | None:
    """The data directory's record (``{"bucket_id", "remote_url"}``), or None if absent or
    unreadable. Blocking."""
    try:
        doc = json.loads((data_dir / RECORD_NAME).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable %s: %s", data_dir / RECORD_NAME, exc)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("bucket_id"), str):
        log.warning("ignoring the malformed %s", data_dir / RECORD_NAME)
        return None
    return doc


def _write_record(data_dir: Path, bucket_id: str, remote_url: str) -> None:
    path = data_dir / RECORD_NAME
    tmp = data_dir / f"{RECORD_NAME}.tmp-{uuid.uuid4().hex}"
    body = json.dumps({"bucket_id": bucket_id, "remote_url": remote_url}).encode() + b"\n"
    try:
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(data_dir)


def _has_entries(directory: Path) -> bool:
    try:
        with os.scandir(directory) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False


def _remove_stale(data_dir: Path) -> None:
    for stale in data_dir.glob(STALE_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


def reconcile_data_dir(data_dir: Path, bucket_id: str | None, remote_url: str) -> IdentityCheck:
    """Compare the data directory's record with ``bucket_id``; drop a cache that is not this
    bucket's and record the id (see the module docstring). Blocking; before the cache starts."""
    _remove_stale(data_dir)  # an interrupted drop of an earlier start
    record = read_record(data_dir)
    recorded_id = record["bucket_id"] if record else None
    cache = data_dir / CACHE_DIR_NAME
    if bucket_id is not None and recorded_id == bucket_id:
        return IdentityCheck(bucket_id, recorded_id, dropped=False, recorded=False)
    if bucket_id is None and record is None:
        log.warning("the bucket %s has no identity object yet (a writer daemon makes %s): this "
                    "read-only daemon cannot tell whether its cache belongs to it", remote_url,
                    BUCKET_ID_KEY)
        return IdentityCheck(None, None, dropped=False, recorded=False)
    dropped = False
    if _has_entries(cache):
        if record is None:
            why = "no record says which bucket it belongs to"
        else:
            was = record.get("remote_url") or "unknown"
            why = (f"it belongs to bucket id {recorded_id} ({was}), and {remote_url} "
                   + (f"has id {bucket_id}" if bucket_id else "has no identity object")
                   + " (another bucket, or the bucket was deleted and created again)")
        log.warning("dropping the cache in %s instead of serving it: %s", cache, why)
        stale = data_dir / f"{STALE_PREFIX}{uuid.uuid4().hex}"
        os.rename(cache, stale)
        fsync_dir(data_dir)
        failpoint_sync("bucket_identity.after_rename")
        dropped = True
    recorded = False
    if bucket_id is not None:
        _write_record(data_dir, bucket_id, remote_url)
        recorded = True
    elif record is not None:
        (data_dir / RECORD_NAME).unlink(missing_ok=True)
        fsync_dir(data_dir)
    failpoint_sync("bucket_identity.after_record")
    _remove_stale(data_dir)
    return IdentityCheck(bucket_id, recorded_id, dropped=dropped, recorded=recorded)


async def check_bucket_identity(store: ObjectStore, data_dir: Path, remote_url: str, *,
                                create: bool) -> IdentityCheck:
    """Read (or make) the bucket's id and reconcile the data directory with it."""
    bucket_id = await read_or_create_bucket_id(store, create=create)
    return await asyncio.to_thread(reconcile_data_dir, data_dir, bucket_id, remote_url)
