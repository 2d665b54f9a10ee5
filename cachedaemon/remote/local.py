"""``LocalObjectStore``: a local directory that behaves like a bucket (``file:///path`` URLs).

The embedded default remote: ``cachedaemon serve`` with no configuration keeps its "bucket" in
``<data-dir>/bucket``. Each object's bytes are one plain file under the root.

On-disk layout
--------------
- An object ``k`` with segments ``s1/s2/.../sn`` lives at ``<root>/e(s1)/.../e(sn)`` — so for
  ordinary keys the file is exactly ``<root>/<key>``. ``e`` escapes only the segments that could
  collide with our reserved names: a segment starting with ``.cachedaemon-`` is stored as
  ``.cachedaemon-x`` + segment. Every other name beginning with ``.cachedaemon-`` is ours.
- ``a`` and ``a/b`` can both exist (as in S3) although a path cannot be a file and a directory at
  once: when a directory is needed where an object file ``<root>/a`` sits, the file is moved to
  ``<root>/a/.cachedaemon-obj`` and ``<root>/a`` becomes a directory. The move is atomic: the
  directory is prepared aside with a hard link to the object, then swapped in with
  ``renameat2(RENAME_EXCHANGE)``, so a concurrent reader or a crash sees either the file or the
  directory holding it, never neither. (Where the kernel or filesystem lacks the exchange, a
  plain unlink + rename is used and a crash inside that window can lose the moved object; said
  here so nobody is surprised.) Once converted, the object stays in the directory form; every
  object is still a plain regular file under the root. Empty directories are pruned on delete.
- ``<root>/.cachedaemon-tmp/``: in-flight uploads. A put writes a temp file there (computing
  the md5 as the bytes pass), fsyncs it and moves it into place. Leftovers older than an hour
  are deleted when a store opens the root.
- ``<root>/.cachedaemon-meta/<h[:2]>/<h>`` with ``h = sha256(key)``: a sidecar JSON
  ``{"etag", "size", "ino", "mtime_ns", "meta"}`` (``meta``: the object's metadata, see
  :class:`~cachedaemon.remote.base.ObjectMeta`, left out when empty). Sidecar names are hashes,
  so they can never collide with keys. The sidecar is trusted only while its
  ``ino``/``size``/``mtime_ns`` match the data file; otherwise (crash between the two renames, a
  file edited by hand) the etag is recomputed from the bytes and the sidecar rewritten, without
  metadata (the file is all that is left to trust). Etags are md5 hex, as S3 gives for
  single-part puts, or S3's multipart etag for a put with ``part_sizes``.

Symbolic links
--------------
The bucket never follows a symbolic link inside its directory (API.md). Every path is walked
one component at a time from a descriptor of the root: each directory is opened with
``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's descriptor (``dir_fd``), the object file
with ``O_NOFOLLOW``, and writes, links, renames and unlinks name their last component relative to
the parent's descriptor. So no component can be swapped for a link between a check and its use.
A key whose path meets a link is **absent** for reads (``get``, ``head``, and listings skip it)
and **refused** for writes and deletes (:class:`InvalidKey` naming the link): nothing outside
the bucket, nor elsewhere inside it, is read, written or deleted through a link. (The root
itself may be a link: it is the operator's configuration.)

Synchronisation
---------------
All mutations of one root (the final move of a put, deletes, directory conversion and pruning)
run under one lock per root path: a ``threading.Lock`` shared by every store instance, task and
thread of the process, and an exclusive ``flock`` on ``.cachedaemon-tmp/lock`` that excludes the
other processes (the daemon's shards). So put-if-absent, put-if-match and the directory work are
atomic across processes too (create-only puts also use ``os.link``, which fails with EEXIST). Reads and listings take no lock: every state they can observe is consistent.

Blocking work runs in a thread, one hop per operation: a put of bytes or a file, a head, a delete
and a list are one hop each; a get opens, stats and reads its first window (4 MiB) in one hop,
and larger objects read each further 4 MiB window in a hop; a streamed put writes in 4 MiB
batches.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

from cachedaemon.core.fsync import fsync_dir
from cachedaemon.errors import InvalidKey, PreconditionFailed, UpstreamError
from cachedaemon.remote.base import (
    Body,
    ByteRange,
    GetResult,
    ListPage,
    ObjectInfo,
    ObjectMeta,
    ObjectStoreBase,
    PartHasher,
    check_key,
    check_list_args,
    check_part_sizes,
    check_total,
    resolve_range,
)

RESERVED_PREFIX = ".cachedaemon-"
ESCAPE_PREFIX = ".cachedaemon-x"
OBJECT_IN_DIR = ".cachedaemon-obj"
TMP_DIR = ".cachedaemon-tmp"
META_DIR = ".cachedaemon-meta"

READ_WINDOW = 4 * 1024 * 1024
WRITE_BATCH = 4 * 1024 * 1024
COPY_CHUNK = 1024 * 1024
STALE_TMP_S = 3600.0

T = TypeVar("T")

class _RootLock:
    """The lock of a bucket root: a ``threading.Lock`` for the threads of this process, and an
    exclusive ``flock`` on ``<root>/.cachedaemon-tmp/lock`` for the other processes (the
    daemon's shards are processes; tests run several stores in one). Not re-entrant."""

    def __init__(self, lock_path: str) -> None:
        self._thread_lock = threading.Lock()
        self._path = lock_path
        self._pid = os.getpid()
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __enter__(self) -> _RootLock:
        self._thread_lock.acquire()
        try:
            if self._pid != os.getpid():
                # A forked child shares the parent's open file description, and flock locks
                # belong to that: open our own.
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_ROOT_LOCKS: dict[str, _RootLock] = {}
_ROOT_LOCKS_GUARD = threading.Lock()


def _root_lock(root: str, tmp_dir: str) -> _RootLock:
    """The lock of a bucket root (every store instance of this process on it shares it)."""
    with _ROOT_LOCKS_GUARD:
        lock = _ROOT_LOCKS.get(root)
        if lock is None:
            lock = _ROOT_LOCKS[root] = _RootLock(os.path.join(tmp_dir, "lock"))
        return lock


# --- atomic exchange (Linux renameat2) -------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _renameat2 = getattr(_libc, "renameat2", None)
except OSError:  # pragma: no cover - no libc (not Linux)
    _renameat2 = None


def _exchange(a: str, b: str, *, dst_dir_fd: int = _AT_FDCWD) -> bool:
    """Atomically swap path ``a`` and ``b`` (relative to ``dst_dir_fd``). False if the
    platform cannot; OSError on real failures."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), dst_dir_fd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a)


# --- names -----------------------------------------------------------------------------------


def escape_segment(segment: str) -> str:
    """The on-disk name of a key segment (see the module docstring)."""
    if segment.startswith(RESERVED_PREFIX):
        return ESCAPE_PREFIX + segment
    return segment


def unescape_name(name: str) -> str | None:
    """The key segment an on-disk name stands for, or None for one of our own files."""
    if name.startswith(RESERVED_PREFIX):
        if name.startswith(ESCAPE_PREFIX + RESERVED_PREFIX):
            return name[len(ESCAPE_PREFIX) :]
        return None
    return name


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Link(Exception):
    """A path component is a symbolic link (internal: reads treat the key as absent, writes
    and deletes refuse it)."""


def _open_dir(dir_fd: int, name: str) -> int | None:
    """A descriptor of the real directory ``name`` in ``dir_fd``; None if there is none (or a
    non-directory is there). Raises :class:`_Link` if ``name`` is a symbolic link."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    if _is_link(dir_fd, name):
        raise _Link(name)
    return None


def _open_file(dir_fd: int, name: str) -> int | None:
    """A descriptor of ``name`` in ``dir_fd`` (file or directory), never through a link: None
    if missing; :class:`_Link` if it is a link."""
    try:
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Link(name) from None
        raise


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_link(dir_fd: int, name: str) -> bool:
    st = _lstat(dir_fd, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@dataclass(frozen=True, slots=True)
class _Meta:
    etag: str
    size: int
    ino: int
    mtime_ns: int
    meta: ObjectMeta


class _TempFile:
    """A temp file in ``<root>/.cachedaemon-tmp`` with a running etag. Thread-side only."""

    def __init__(self, tmp_dir: str, part_sizes: tuple[int, ...] | None = None) -> None:
        self.path = os.path.join(tmp_dir, f"{uuid.uuid4().hex}.tmp")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.hasher = PartHasher(part_sizes)
        self.part_sizes = part_sizes
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.hasher.update(view)
        self.size += view.nbytes
        while view.nbytes:
            written = os.write(self.fd, view)
            view = view[written:]

    def finish(self) -> os.stat_result:
        """fsync and close; returns the file's stat (inode and mtime survive the move)."""
        os.fsync(self.fd)
        st = os.fstat(self.fd)
        os.close(self.fd)
        self.fd = -1
        return st

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _unlink_quiet(self.path)


class LocalObjectStore(ObjectStoreBase):
    """A bucket in a local directory. ``url`` is ``file://<root>``; the root is created if missing.

    Safe to use from several shards at once (each with its own instance or sharing one).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = f"file://{self.root}"
        self._tmp_dir = os.path.join(self.root, TMP_DIR)
        self._meta_dir = os.path.join(self.root, META_DIR)
        try:
            os.makedirs(self._tmp_dir, exist_ok=True)
            os.makedirs(self._meta_dir, exist_ok=True)
        except OSError as exc:
            raise UpstreamError(f"cannot create bucket directory {self.root}: {exc}") from exc
        self._lock = _root_lock(os.path.realpath(self.root), self._tmp_dir)
        self._remove_stale_temps()

    # --- paths (thread-side) -----------------------------------------------------------------

    @staticmethod
    def _segments(key: str) -> list[str]:
        return [escape_segment(s) for s in key.split("/")]

    def _open_root(self) -> int:
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @staticmethod
    def _link_refused(key: str, segments: list[str], depth: int) -> InvalidKey:
        where = "/".join(segments[: depth + 1])
        return InvalidKey(
            f"invalid key {key!r} for the file:// bucket: its path meets a symbolic link "
            f"({where}); the bucket never reads, writes or deletes through links")

    def _meta_path(self, key: str) -> str:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return os.path.join(self._meta_dir, h[:2], h)

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        try:
            with os.scandir(self._tmp_dir) as it:
                for entry in it:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            if entry.is_dir(follow_symlinks=False):
                                for name in os.listdir(entry.path):
                                    _unlink_quiet(os.path.join(entry.path, name))
                                os.rmdir(entry.path)
                            else:
                                os.unlink(entry.path)
                    except OSError:
                        continue
        except OSError:
            return

    def _open_object(self, key: str) -> int | None:
        """An fd for the object's bytes, or None if it does not exist (or its path meets a
        symbolic link). Walks from the root without following links."""
        segments = self._segments(key)
        fds = [self._open_root()]
        try:
            try:
                for segment in segments[:-1]:
                    fd = _open_dir(fds[-1], segment)
                    if fd is None:
                        return None
                    fds.append(fd)
                leaf = _open_file(fds[-1], segments[-1])
                if leaf is None:
                    return None
                st = os.fstat(leaf)
                if stat.S_ISDIR(st.st_mode):
                    fds.append(leaf)
                    leaf = _open_file(leaf, OBJECT_IN_DIR)
                    if leaf is None:
                        return None
                    st = os.fstat(leaf)
                if not stat.S_ISREG(st.st_mode):
                    os.close(leaf)
                    return None
                return leaf
            except _Link:
                return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(f"invalid key {key!r}: a segment is too long") from exc
            raise
        finally:
            _close_all(fds)

    def _read_meta(self, key: str, st: os.stat_result) -> _Meta | None:
        try:
            fd = os.open(self._meta_path(key), _FILE_FLAGS)
            with os.fdopen(fd, "rb") as f:
                raw = json.loads(f.read())
            meta = _Meta(str(raw["etag"]), int(raw["size"]), int(raw["ino"]), int(raw["mtime_ns"]),
                         ObjectMeta.from_json(raw.get("meta")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if (meta.ino, meta.size, meta.mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return meta

    def _write_meta(self, key: str, etag: str, st: os.stat_result,
                    meta: ObjectMeta | None = None) -> None:
        path = self._meta_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(self._tmp_dir, f"{uuid.uuid4().hex}.meta")
        body: dict[str, object] = {"etag": etag, "size": st.st_size, "ino": st.st_ino,
                                   "mtime_ns": st.st_mtime_ns}
        if meta is not None and meta != ObjectMeta():
            body["meta"] = meta.to_json()
        with open(tmp, "w") as f:
            f.write(json.dumps(body))
        os.replace(tmp, path)

    def _info_from_fd(self, key: str, fd: int) -> ObjectInfo:
        st = os.fstat(fd)
        meta = self._read_meta(key, st)
        obj_meta = ObjectMeta()
        if meta is not None:
            etag = meta.etag
            obj_meta = meta.meta
        else:
            md5 = hashlib.md5()
            offset = 0
            while chunk := os.pread(fd, COPY_CHUNK, offset):
                md5.update(chunk)
                offset += len(chunk)
            etag = md5.hexdigest()
            try:
                self._write_meta(key, etag, st)
            except OSError:
                pass  # the sidecar is a cache of the etag; recomputed next time
        return ObjectInfo(key, st.st_size, etag, st.st_mtime, obj_meta)

    # --- get -----------------------------------------------------------------------------------

    def _open_for_get(
        self, key: str, byte_range: ByteRange | None
    ) -> tuple[int, ObjectInfo, ByteRange | None, bytes] | None:
        fd = self._open_object(key)
        if fd is None:
            return None
        try:
            info = self._info_from_fd(key, fd)
            served = resolve_range(byte_range, info.size)
            start = 0 if served is None else served[0]
            end = info.size if served is None else served[1] + 1
            first = os.pread(fd, min(READ_WINDOW, end - start), start) if end > start else b""
        except BaseException:
            os.close(fd)
            raise
        return fd, info, served, first

    async def get(self, key: str, *, byte_range: ByteRange | None = None) -> GetResult | None:
        check_key(key)
        try:
            opened = await _in_thread(self._open_for_get, key, byte_range, drop=_close_opened)
        except OSError as exc:
            raise UpstreamError(f"local bucket get {key!r}: {exc}") from exc
        if opened is None:
            return None
        fd, info, served, first = opened
        start = 0 if served is None else served[0]
        end = info.size if served is None else served[1] + 1
        closed = False

        async def chunks() -> AsyncIterator[bytes]:
            yield first
            offset = start + len(first)
            while offset < end and not closed:
                try:
                    data = await _in_thread(os.pread, fd, min(READ_WINDOW, end - offset), offset)
                except OSError as exc:
                    raise UpstreamError(f"local bucket read {key!r}: {exc}") from exc
                if not data:
                    raise UpstreamError(f"local bucket read {key!r}: object shrank while read")
                offset += len(data)
                yield data

        async def close() -> None:
            nonlocal closed
            closed = True
            os.close(fd)

        return GetResult(info, end - start, served, chunks(), close)

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            return await _in_thread(self._head, key)
        except OSError as exc:
            raise UpstreamError(f"local bucket head {key!r}: {exc}") from exc

    def _head(self, key: str) -> ObjectInfo | None:
        fd = self._open_object(key)
        if fd is None:
            return None
        try:
            return self._info_from_fd(key, fd)
        finally:
            os.close(fd)

    # --- put -----------------------------------------------------------------------------------

    async def put(
        self,
        key: str,
        body: Body,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        meta: ObjectMeta | None = None,
        part_sizes: Sequence[int] | None = None,
        single_part: bool = False,
    ) -> ObjectInfo:
        check_key(key)
        sizes = check_part_sizes(part_sizes, single_part)
        if_match = None if if_match is None else if_match.strip('"')
        cond = _Condition(if_none_match, if_match, meta or ObjectMeta())
        try:
            if isinstance(body, bytes | bytearray | memoryview | pathlib.Path):
                return await _in_thread(self._put_whole, key, body, cond, sizes)
            return await self._put_stream(key, body, cond, sizes)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKey(f"invalid key {key!r}: a segment is too long") from exc
            raise UpstreamError(f"local bucket put {key!r}: {exc}") from exc

    def _put_whole(
        self,
        key: str,
        body: bytes | bytearray | memoryview | pathlib.Path,
        cond: _Condition,
        sizes: tuple[int, ...] | None,
    ) -> ObjectInfo:
        tmp = _TempFile(self._tmp_dir, sizes)
        try:
            if isinstance(body, pathlib.Path):
                with open(body, "rb") as src:
                    while chunk := src.read(COPY_CHUNK):
                        tmp.write(chunk)
            else:
                tmp.write(body)
            return self._commit(key, tmp, cond)
        finally:
            tmp.discard()

    async def _put_stream(
        self, key: str, body: AsyncIterable[bytes], cond: _Condition,
        sizes: tuple[int, ...] | None,
    ) -> ObjectInfo:
        tmp = await _in_thread(_TempFile, self._tmp_dir, sizes, drop=_TempFile.discard)
        try:
            batch: list[bytes] = []
            batched = 0
            async for chunk in body:
                batch.append(bytes(chunk))
                batched += len(chunk)
                if batched >= WRITE_BATCH:
                    await _in_thread(_write_all, tmp, batch)
                    batch, batched = [], 0
            return await _in_thread(self._write_and_commit, key, tmp, batch, cond)
        finally:
            # Synchronous on purpose: it must run even when the task is being cancelled.
            tmp.discard()

    def _write_and_commit(
        self, key: str, tmp: _TempFile, batch: list[bytes], cond: _Condition
    ) -> ObjectInfo:
        _write_all(tmp, batch)
        return self._commit(key, tmp, cond)

    def _commit(self, key: str, tmp: _TempFile, cond: _Condition) -> ObjectInfo:
        """Move a finished temp file into place, honouring the condition. Thread-side."""
        check_total(tmp.part_sizes, tmp.size)
        etag = tmp.hasher.etag()
        if_none_match, if_match, meta = cond
        st = tmp.finish()
        with self._lock:
            fds: list[int] = []
            try:
                parent, name = self._prepare_target(key, fds)
                if if_match is not None:
                    fd = self._open_object(key)
                    if fd is None:
                        raise PreconditionFailed(f"put-if-match of {key!r}: no such object")
                    try:
                        current = self._info_from_fd(key, fd)
                    finally:
                        os.close(fd)
                    if current.etag != if_match:
                        raise PreconditionFailed(f"put-if-match of {key!r}: etag differs")
                if if_none_match:
                    if _lstat(parent, name) is not None:
                        raise PreconditionFailed(f"put-if-absent of {key!r}: the object exists")
                    self._write_meta(key, etag, st, meta)
                    try:
                        # link, not rename: EEXIST makes create-only atomic even across
                        # processes.
                        os.link(tmp.path, name, dst_dir_fd=parent, follow_symlinks=False)
                    except FileExistsError as exc:
                        _unlink_quiet(self._meta_path(key))  # the winner's etag is recomputed
                        raise PreconditionFailed(
                            f"put-if-absent of {key!r}: the object exists"
                        ) from exc
                else:
                    self._write_meta(key, etag, st, meta)
                    os.replace(tmp.path, name, dst_dir_fd=parent)
                os.fsync(parent)
            finally:
                _close_all(fds)
        return ObjectInfo(key, st.st_size, etag, st.st_mtime, meta)

    def _prepare_target(self, key: str, fds: list[int]) -> tuple[int, str]:
        """(directory fd, name) where the object's file must go, creating and converting
        parent directories; every fd opened is appended to ``fds`` (the caller closes them).
        InvalidKey if the path meets a symbolic link. Under the lock."""
        segments = self._segments(key)
        fds.append(self._open_root())
        depth = 0
        try:
            for depth, segment in enumerate(segments[:-1]):  # noqa: B007 (read by the except)
                parent = fds[-1]
                st = _lstat(parent, segment)
                if st is None:
                    try:
                        os.mkdir(segment, dir_fd=parent)
                    except FileExistsError:
                        # Made meanwhile by another process (a shard) writing beside us: the
                        # lock is per process. Judge what is there now.
                        st = _lstat(parent, segment)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    raise _Link(segment)
                if st is not None and not _is_dir(st.st_mode):
                    self._convert_to_dir(parent, segment)
                fd = _open_dir(parent, segment)
                if fd is None:
                    raise UpstreamError(f"local bucket put {key!r}: {segment} vanished")
                fds.append(fd)
            depth = len(segments) - 1
            parent, leaf = fds[-1], segments[-1]
            st = _lstat(parent, leaf)
            if st is None or stat.S_ISREG(st.st_mode):
                return parent, leaf
            if stat.S_ISLNK(st.st_mode):
                raise _Link(leaf)
            if _is_dir(st.st_mode):
                fd = _open_dir(parent, leaf)
                if fd is None:
                    raise UpstreamError(f"local bucket put {key!r}: {leaf} vanished")
                fds.append(fd)
                own = _lstat(fd, OBJECT_IN_DIR)
                if own is not None and stat.S_ISLNK(own.st_mode):
                    segments, depth = [*segments, OBJECT_IN_DIR], len(segments)
                    raise _Link(OBJECT_IN_DIR)
                return fd, OBJECT_IN_DIR
            raise UpstreamError(f"local bucket put {key!r}: {leaf} is not a regular file")
        except _Link:
            raise self._link_refused(key, segments, depth) from None

    def _convert_to_dir(self, parent: int, name: str) -> None:
        """Turn the object file ``name`` in ``parent`` into a directory holding it. Under
        lock."""
        staging = os.path.join(self._tmp_dir, f"{uuid.uuid4().hex}.dir")
        os.mkdir(staging)
        os.link(name, os.path.join(staging, OBJECT_IN_DIR), src_dir_fd=parent,
                follow_symlinks=False)
        fsync_dir(staging)
        if _exchange(staging, name, dst_dir_fd=parent):
            # ``staging`` is now the old file (a second link to the object): drop it.
            os.unlink(staging)
        else:
            os.unlink(name, dir_fd=parent)
            os.rename(staging, name, dst_dir_fd=parent)
        os.fsync(parent)

    # --- delete ----------------------------------------------------------------------------

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await _in_thread(self._delete_keys, [key])
        except OSError as exc:
            raise UpstreamError(f"local bucket delete {key!r}: {exc}") from exc

    async def delete_many(self, keys: Iterable[str]) -> None:
        batch = [check_key(k) for k in keys]
        if not batch:
            return
        try:
            await _in_thread(self._delete_keys, batch)
        except OSError as exc:
            raise UpstreamError(f"local bucket delete of {len(batch)} keys: {exc}") from exc

    def _delete_keys(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._delete_one(key)

    def _delete_one(self, key: str) -> None:
        segments = self._segments(key)
        fds = [self._open_root()]
        try:
            for depth, segment in enumerate(segments[:-1]):
                try:
                    fd = _open_dir(fds[-1], segment)
                except _Link:
                    raise self._link_refused(key, segments, depth) from None
                if fd is None:
                    return
                fds.append(fd)
            parent, leaf = fds[-1], segments[-1]
            st = _lstat(parent, leaf)
            if st is None:
                return
            if stat.S_ISLNK(st.st_mode):
                raise self._link_refused(key, segments, len(segments) - 1)
            if _is_dir(st.st_mode):
                fd = _open_dir(parent, leaf)
                if fd is None:
                    return
                fds.append(fd)
                own = _lstat(fd, OBJECT_IN_DIR)
                if own is None:
                    return
                if stat.S_ISLNK(own.st_mode):
                    raise self._link_refused(key + "/" + OBJECT_IN_DIR,
                                             [*segments, OBJECT_IN_DIR], len(segments))
                os.unlink(OBJECT_IN_DIR, dir_fd=fd)
                names = segments  # the key's own directory may be empty now
            else:
                os.unlink(leaf, dir_fd=parent)
                names = segments[:-1]
            _unlink_quiet(self._meta_path(key))
            # Remove directories left empty, deepest first, up to (not including) the root:
            # the directory names[i] sits in fds[i].
            for i in reversed(range(len(names))):
                try:
                    os.rmdir(names[i], dir_fd=fds[i])
                except OSError:
                    break
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return
            raise
        finally:
            _close_all(fds)

    # --- list --------------------------------------------------------------------------------

    async def list(
        self, prefix: str = "", start_after: str | None = None, limit: int = 1000
    ) -> ListPage:
        check_list_args(prefix, limit)
        try:
            return await _in_thread(self._list, prefix, start_after, limit)
        except OSError as exc:
            raise UpstreamError(f"local bucket list {prefix!r}: {exc}") from exc

    def _list(self, prefix: str, start_after: str | None, limit: int) -> ListPage:
        objects: list[ObjectInfo] = []
        root = self._open_root()
        try:
            for key, dir_fd, name in self._walk(root, "", prefix, start_after or ""):
                info = self._info_at(key, dir_fd, name)
                if info is None:
                    continue  # deleted while we walked, or not a plain file
                objects.append(replace(info, meta=None))
                if len(objects) > limit:
                    return ListPage(objects[:limit], objects[limit - 1].key)
        finally:
            os.close(root)
        return ListPage(objects, None)

    def _info_at(self, key: str, dir_fd: int, name: str) -> ObjectInfo | None:
        try:
            fd = _open_file(dir_fd, name)
        except _Link:
            return None
        if fd is None:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return self._info_from_fd(key, fd)
        finally:
            os.close(fd)

    def _walk(
        self, dir_fd: int, key_prefix: str, prefix: str, start_after: str
    ) -> Iterator[tuple[str, int, str]]:
        """(key, directory fd, file name) of the objects under ``dir_fd`` in key order, pruned
        to the range. Symbolic links are skipped, and directories are entered by descriptor
        without following links.

        A directory ``d`` contributes its own object (``d/.cachedaemon-obj``, key ``d``) and a
        subtree of keys starting with ``d/``; the two sort apart (``d`` < ``d-x`` < ``d/y``),
        so they are separate items of the parent's listing.
        """
        items: list[tuple[str, int, str]] = []  # (sort key, 0 file / 1 own / 2 subtree, name)
        try:
            entries = list(os.scandir(dir_fd))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            segment = unescape_name(entry.name)
            if segment is None:
                continue
            key = key_prefix + segment
            try:
                if entry.is_symlink():
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                sub = key + "/"
                if (sub.startswith(prefix) or prefix.startswith(sub)) and not (
                    sub < start_after and not start_after.startswith(sub)
                ):
                    items.append((sub, 2, entry.name))
                if key.startswith(prefix) and key > start_after:
                    items.append((key, 1, entry.name))
            elif is_file and key.startswith(prefix) and key > start_after:
                items.append((key, 0, entry.name))
        items.sort()
        for sort_key, kind, name in items:
            if kind == 0:
                yield sort_key, dir_fd, name
                continue
            try:
                sub_fd = _open_dir(dir_fd, name)
            except _Link:
                continue
            if sub_fd is None:
                continue
            try:
                if kind == 1:
                    yield sort_key, sub_fd, OBJECT_IN_DIR
                else:
                    yield from self._walk(sub_fd, sort_key, prefix, start_after)
            finally:
                os.close(sub_fd)


class _Condition(NamedTuple):
    """What a put commits with."""

    if_none_match: bool
    if_match: str | None
    meta: ObjectMeta


def _is_dir(mode: int) -> bool:
    return stat.S_ISDIR(mode)


async def _in_thread(
    fn: Callable[..., T], *args: Any, drop: Callable[[T], None] | None = None
) -> T:
    """Run ``fn`` in a thread; if cancelled, wait for the thread before re-raising.

    A thread cannot be stopped, so cleanup that follows a cancellation (closing the fd,
    unlinking the temp file) must not race the job still running on it. ``drop`` releases
    a result nobody will receive (an opened fd).
    """
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait({job})
        if drop is not None and not job.cancelled() and job.exception() is None:
            drop(job.result())
        raise


def _close_opened(opened: tuple[int, ObjectInfo, ByteRange | None, bytes] | None) -> None:
    if opened is not None:
        os.close(opened[0])


def _write_all(tmp: _TempFile, batch: list[bytes]) -> None:
    for chunk in batch:
        tmp.write(chunk)
