"""Durable directory entries: :func:`fsync_dir`, the one way every part makes a create, rename
or unlink in a directory survive a crash.

Used by the local object store (``remote.local``), the cache's access-time tracker, the LSM's
local-file backends and the metastore's local log, always inside a worker-thread job together
with the write it makes durable (it blocks). Stateless; any thread.
"""

from __future__ import annotations

import os


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a create, rename or unlink in it) durable. Blocking."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
