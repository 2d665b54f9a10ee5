"""The descriptor budget: how many client connections fit beside the daemon's own files.

A daemon that lets clients take every descriptor can no longer open its cache entries, SSTs,
logs or bucket connections (seen: 19,990 idle connections under a 20,000 limit and background
GC failing with ``EMFILE``). At start-up, on the main process, :func:`connection_budget` raises
the soft ``RLIMIT_NOFILE`` to the hard one, keeps room for the daemon's own files, and answers
how many connections the whole daemon may hold (``server.max_connections``, or as many as fit).
A configured limit that cannot fit refuses the start (exit 1) with a message saying what to
change. Each shard then admits its share (:func:`per_shard`); past it new connections are closed
at once (:class:`~cachedaemon.server.http.HttpServer`).
"""

from __future__ import annotations

import resource

from cachedaemon.config import Settings

#: Descriptors one connection may hold at once: its socket, the cached file being sent (or
#: the staging file being written), and the duplicate used to wait for writability.
PER_CONNECTION_FDS = 3
#: Room kept for the daemon's own files besides the bucket connections of each shard
#: (cache entries being filled or trimmed, SSTs, logs, the index, listening sockets).
OWN_FILES = 1024
#: Per shard besides its bucket connection pool (its loop, pipes, listening socket, ...).
PER_SHARD_FDS = 32


class BudgetError(Exception):
    """``server.max_connections`` cannot fit in the descriptor limit; the message says why."""


def raise_nofile_limit() -> int:
    """Raise the soft descriptor limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return soft


def own_files(settings: Settings, limit: int) -> int:
    """Descriptors kept for the daemon itself (at most half of ``limit``)."""
    want = OWN_FILES + settings.server.shards * (settings.remote.max_connections + PER_SHARD_FDS)
    return min(want, limit // 2)


def connection_budget(settings: Settings, limit: int | None = None) -> int:
    """The daemon-wide connection limit (see the module doc); :class:`BudgetError` if the
    configured one does not fit."""
    if limit is None:
        limit = raise_nofile_limit()
    room = limit - own_files(settings, limit)
    fits = max(1, room // PER_CONNECTION_FDS)
    wanted = settings.server.max_connections
    if wanted is None:
        return fits
    if wanted > fits:
        raise BudgetError(
            f"server.max_connections = {wanted} needs about "
            f"{wanted * PER_CONNECTION_FDS + own_files(settings, limit)} file descriptors, but "
            f"the limit is {limit}: lower server.max_connections to at most {fits}, or raise "
            f"the limit (ulimit -n, or LimitNOFILE= in the systemd unit)")
    return wanted


def per_shard(total: int, shards: int) -> int:
    """One shard's share of the daemon-wide connection limit (at least 1)."""
    return max(1, total // shards)
