"""Multipart uploads of the S3 endpoint: parts staged in the cache, the object committed on
Complete.

**Where things are.** An upload is a directory ``<data_dir>/s3/uploads/<upload-id>/`` (the id
is 32 hex digits) holding ``upload.json`` (bucket, key, metadata, initiation time) and one
small JSON record per part received (``part-<n>-<token>.json``: size, MD5, the path of its
bytes). A part's bytes are a cache staging file (``.part``) of the reserved cache key
``.cachedaemon/s3/uploads/<upload-id>/<n>``: the shard that received the part holds it open,
with the cache reservation that covers it, until the upload completes or is aborted — parts
take cache space like any write in flight, and a full cache answers ``SlowDown``. The files
are in the shared cache directory, so any shard can read any part; the records are plain
files, so any shard sees every upload. Nothing is in the bucket until Complete.

**Complete** reads the parts the client names (each must be the latest upload of its number
with that ETag; every part but the last at least 5 MiB; numbers ascending) and stores the
object through the one object path (:mod:`.objectpath`) with their sizes as the part
layout, so the bucket computes S3's multipart ETag (``md5(md5(p1)...md5(pN))-N``) and the
object is committed to the cache as any PUT is. The object needs cache space of its own while
the parts still hold theirs (about twice its size at the peak). Then the upload is removed:
its directory first, then every shard closes the staging files it holds for it (releasing
their reservations). A failed Complete leaves the upload as it was, so it can be retried.

**Life time.** A part uploaded again replaces the older one (the shard holding the older one
closes it). An upload untouched for ``s3.upload_expiry`` is aborted by shard 0's sweeper; every
shard also closes staging files whose upload directory is gone. Uploads do not survive a
restart of the daemon: the cache deletes ``.part`` files at start, and the upload directory is
emptied then too (a client sees ``NoSuchUpload`` and starts over).

:class:`Uploads` is one shard's view: the records (shared) and the staging files this shard
holds (its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachedaemon.cache.staging import StagingFile
from cachedaemon.namespace import S3_UPLOADS_ROOT
from cachedaemon.remote.base import ObjectMeta
from cachedaemon.server.s3.errors import S3Error

log = logging.getLogger("cachedaemon.s3")

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10000
READ_CHUNK = 1 << 20
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"part-(\d{5})-(\d+)-(\d+)\.json")


def uploads_dir(data_dir: Path) -> Path:
    return data_dir / "s3" / "uploads"


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID may be "
                   "invalid, or the upload may have been aborted or completed.",
                   extra={"UploadId": upload_id[:64]})


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str  # the S3 key
    object_key: str  # the daemon key
    meta: ObjectMeta
    initiated: float


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str  # md5 hex
    path: str  # the staged bytes
    modified: float
    token: str  # "<shard>-<counter>": which staging file of which shard
    order: tuple[float, int, int]  # newest wins


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


class Uploads:
    """One shard's multipart uploads (see the module doc)."""

    def __init__(self, root: Path, shard: int) -> None:
        self.root = root
        self.shard = shard
        self._counter = itertools.count(1)
        self._staged: dict[tuple[str, int, str], StagingFile] = {}

    # --- uploads ----------------------------------------------------------------------------

    def _dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise no_such_upload(upload_id)
        return self.root / upload_id

    async def create(self, bucket: str, key: str, object_key: str, meta: ObjectMeta) -> Upload:
        upload = Upload(uuid.uuid4().hex, bucket, key, object_key, meta, time.time())
        d = self.root / upload.upload_id

        def job() -> None:
            d.mkdir(parents=True)
            _write_json(d / "upload.json", {
                "bucket": bucket, "key": key, "object_key": object_key,
                "meta": meta.to_json(), "initiated": upload.initiated})

        await asyncio.to_thread(job)
        return upload

    def _load(self, upload_id: str) -> Upload:
        d = self._dir(upload_id)
        try:
            raw = json.loads((d / "upload.json").read_text())
            return Upload(upload_id, str(raw["bucket"]), str(raw["key"]),
                          str(raw["object_key"]), ObjectMeta.from_json(raw.get("meta")),
                          float(raw["initiated"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise no_such_upload(upload_id) from None

    async def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        upload = await asyncio.to_thread(self._load, upload_id)
        if (upload.bucket, upload.key) != (bucket, key):
            raise no_such_upload(upload_id)
        return upload

    def _parts(self, upload_id: str) -> dict[int, Part]:
        d = self._dir(upload_id)
        latest: dict[int, Part] = {}
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            raise no_such_upload(upload_id) from None
        for name in names:
            m = _PART_FILE.fullmatch(name)
            if m is None:
                continue
            try:
                raw = json.loads((d / name).read_text())
                part = Part(int(m.group(1)), int(raw["size"]), str(raw["etag"]),
                            str(raw["path"]), float(raw["modified"]),
                            f"{m.group(2)}-{m.group(3)}",
                            (float(raw["modified"]), int(m.group(2)), int(m.group(3))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            old = latest.get(part.number)
            if old is None or part.order > old.order:
                latest[part.number] = part
        return latest

    async def parts(self, upload_id: str) -> list[Part]:
        found = await asyncio.to_thread(self._parts, upload_id)
        return [found[n] for n in sorted(found)]

    async def list(self, bucket: str) -> list[Upload]:
        def job() -> list[Upload]:
            out = []
            try:
                names = os.listdir(self.root)
            except FileNotFoundError:
                return []
            for name in names:
                if not _UPLOAD_ID.fullmatch(name):
                    continue
                try:
                    upload = self._load(name)
                except S3Error:
                    continue
                if upload.bucket == bucket:
                    out.append(upload)
            return out

        found = await asyncio.to_thread(job)
        found.sort(key=lambda u: (u.key, u.initiated, u.upload_id))
        return found

    async def remove(self, upload_id: str,
                     broadcast: Callable[[str], Awaitable[None]]) -> None:
        """Forget the upload (its directory), then have every shard close its parts."""
        d = self._dir(upload_id)

        def job() -> bool:
            if not d.is_dir():
                return False
            # Renamed aside first, so no UploadPart sees a half-removed upload.
            aside = self.root / f".removed-{upload_id}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(d, aside)
            except FileNotFoundError:
                return False
            shutil.rmtree(aside, ignore_errors=True)
            return True

        if not await asyncio.to_thread(job):
            raise no_such_upload(upload_id)
        await broadcast(upload_id)

    # --- parts ------------------------------------------------------------------------------

    @staticmethod
    def part_key(upload_id: str, number: int) -> str:
        return f"{S3_UPLOADS_ROOT}{upload_id}/{number}"

    async def add_part(self, upload: Upload, number: int, staging: StagingFile, etag: str,
                       broadcast: Callable[[str, int, str], Awaitable[None]]) -> None:
        """Record a fully received part (its staging file is kept open by this shard until
        the upload ends) and have the shard holding an older upload of it close that one."""
        await staging.flush()  # every byte in the file: any shard may read it now
        token = f"{self.shard}-{next(self._counter)}"
        d = self._dir(upload.upload_id)
        record = d / f"part-{number:05d}-{token}.json"
        body = {"size": staging.written, "etag": etag, "path": str(staging.path),
                "modified": time.time()}
        try:
            await asyncio.to_thread(_write_json, record, body)
        except OSError:
            raise no_such_upload(upload.upload_id) from None
        self._staged[(upload.upload_id, number, token)] = staging
        if not d.is_dir():
            # Removed while the part arrived; the removal's broadcast may have missed it.
            await self.release_local(upload.upload_id)
            raise no_such_upload(upload.upload_id)
        await broadcast(upload.upload_id, number, token)

    async def drop_older(self, upload_id: str, number: int, keep: str) -> None:
        """Close this shard's staging files of part ``number`` other than ``keep``."""
        for k in [k for k in self._staged if k[0] == upload_id and k[1] == number
                  and k[2] != keep]:
            staging = self._staged.pop(k)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_unlink_quiet, self._dir(upload_id) /
                                        f"part-{number:05d}-{k[2]}.json")
            await staging.close()

    async def release_local(self, upload_id: str) -> None:
        """Close this shard's staging files of the upload (its reservations are released)."""
        for k in [k for k in self._staged if k[0] == upload_id]:
            await self._staged.pop(k).close()

    async def sweep(self, expiry_s: float, expire: bool,
                    broadcast: Callable[[str], Awaitable[None]]) -> None:
        """Close staging files of uploads that are gone; with ``expire`` (shard 0), abort
        uploads untouched for ``expiry_s``."""
        for upload_id in {k[0] for k in self._staged}:
            if not (self.root / upload_id).is_dir():
                await self.release_local(upload_id)
        if not expire:
            return

        def stale() -> list[str]:
            cutoff = time.time() - expiry_s
            out = []
            try:
                names = os.listdir(self.root)
            except FileNotFoundError:
                return []
            for name in names:
                path = self.root / name
                if name.startswith(".removed-"):
                    shutil.rmtree(path, ignore_errors=True)
                    continue
                if not _UPLOAD_ID.fullmatch(name):
                    continue
                try:
                    latest = max([os.stat(path).st_mtime] +
                                 [e.stat().st_mtime for e in os.scandir(path)])
                except OSError:
                    continue
                if latest < cutoff:
                    out.append(name)
            return out

        for upload_id in await asyncio.to_thread(stale):
            log.info("s3: aborting multipart upload %s, untouched for %.0fs", upload_id,
                     expiry_s)
            with contextlib.suppress(S3Error):
                await self.remove(upload_id, broadcast)

    async def close(self) -> None:
        for k in list(self._staged):
            staging = self._staged.pop(k)
            with contextlib.suppress(Exception):
                await staging.close()


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def wipe(root: Path) -> None:
    """Start-up: uploads of an earlier run are gone (their parts were ``.part`` files)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def check_parts(chosen: list[tuple[int, str]], parts: dict[int, Part], max_bytes: int
                ) -> list[Part]:
    """The parts a CompleteMultipartUpload names, checked as S3 checks them."""
    if not chosen:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema (no parts)")
    out: list[Part] = []
    previous = 0
    for number, etag in chosen:
        if number <= previous:
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.")
        previous = number
        part = parts.get(number)
        if part is None or part.etag != etag.strip().strip('"'):
            raise S3Error("InvalidPart", "One or more of the specified parts could not be "
                          "found. The part may not have been uploaded, or the specified entity "
                          "tag may not match the part's entity tag.",
                          extra={"PartNumber": str(number), "ETag": etag[:80]})
        out.append(part)
    for part in out[:-1]:
        if part.size < MIN_PART_SIZE:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum "
                          "allowed object size.", extra={
                              "ProposedSize": str(part.size), "MinSizeAllowed":
                              str(MIN_PART_SIZE), "PartNumber": str(part.number)})
    total = sum(p.size for p in out)
    if total > max_bytes:
        raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed "
                      f"size ({max_bytes} bytes).", extra={"ProposedSize": str(total),
                                                           "MaxSizeAllowed": str(max_bytes)})
    return out


async def read_parts(parts: list[Part]) -> AsyncIterator[bytes]:
    """The bytes of ``parts`` in order, read off the loop."""
    for part in parts:
        try:
            fd = await asyncio.to_thread(os.open, part.path,
                                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise S3Error("InvalidPart", f"part {part.number} is no longer available",
                          extra={"PartNumber": str(part.number)}) from None
        try:
            offset = 0
            while offset < part.size:
                data = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, part.size - offset),
                                               offset)
                if not data:
                    raise S3Error("InvalidPart", f"part {part.number} is shorter than recorded",
                                  extra={"PartNumber": str(part.number)})
                offset += len(data)
                yield data
        finally:
            os.close(fd)
