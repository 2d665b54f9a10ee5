"""The descriptor budget: what the daemon's own files need, and how many connections fit beside.

A daemon that lets clients, or its own domains, take every descriptor can no longer open its
cache entries, SSTs, logs or bucket connections (seen: 19,990 idle connections under a 20,000
limit with background GC failing on ``EMFILE``; with ``ulimit -n 256`` the 232nd domain failed
and object PUTs after it). At start-up, on the main process, :func:`plan` raises the soft
``RLIMIT_NOFILE`` to the hard one and splits it:

* the daemon's own files per process: a fixed part (:data:`OWN_FILES`: cache entries being
  filled, served or trimmed, the index, listening sockets, pipes), and per shard its bucket
  connection pool plus its open domains, each with up to ``metastore.max_open_files`` SSTs and
  a few files of its own (log segment, manifest, staging). When that would take more than half
  the limit, ``max_open_files`` and then ``max_open_domains`` are lowered to fit, with a warning;
* the rest for client connections, :data:`PER_CONNECTION_FDS` each. A configured
  ``server.max_connections`` that cannot fit refuses the start (exit 1) saying what to change;
  otherwise every shard admits its share (:func:`per_shard`) and closes new connections past it.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from cachedaemon.config import Settings

log = logging.getLogger("cachedaemon.server")

#: Descriptors one connection may hold at once: its socket, the cached file being sent (or
#: the staging file being written), and the duplicate used to wait for writability.
PER_CONNECTION_FDS = 3
#: Room per process for files that are not a shard's connections or domains.
OWN_FILES = 256
#: Per shard besides its bucket connection pool and its domains (its loop, pipes, links).
PER_SHARD_FDS = 32
#: Per open domain besides its SSTs (log segment, manifest, staging and flush files).
PER_DOMAIN_FDS = 4
#: The least a shard runs with when the limit is tiny.
MIN_OPEN_FILES = 4
MIN_OPEN_DOMAINS = 2


class BudgetError(Exception):
    """``server.max_connections`` cannot fit in the descriptor limit; the message says why."""


@dataclass(frozen=True)
class Budget:
    limit: int  # the soft RLIMIT_NOFILE in force
    connections: int  # for the whole daemon
    max_open_domains: int  # per shard
    max_open_files: int  # per open domain
    own_files: int  # per process


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


def _own(settings: Settings, shards_per_process: int, domains: int, files: int) -> int:
    per_shard = PER_SHARD_FDS + settings.remote.max_connections + \
        domains * (files + PER_DOMAIN_FDS)
    return OWN_FILES + shards_per_process * per_shard


def plan(settings: Settings, limit: int | None = None, *,
         shards_per_process: int | None = None) -> Budget:
    """The daemon's descriptor budget (see the module doc); :class:`BudgetError` if the
    configured connection limit does not fit."""
    if limit is None:
        limit = raise_nofile_limit()
    shards = settings.server.shards
    per_process = shards if shards_per_process is None else shards_per_process
    processes = max(1, shards // per_process)
    domains = settings.metastore.max_open_domains
    files = settings.metastore.max_open_files
    half = limit // 2
    while _own(settings, per_process, domains, files) > half and files > MIN_OPEN_FILES:
        files = max(MIN_OPEN_FILES, files // 2)
    while _own(settings, per_process, domains, files) > half and domains > MIN_OPEN_DOMAINS:
        domains = max(MIN_OPEN_DOMAINS, domains // 2)
    if (domains, files) != (settings.metastore.max_open_domains,
                            settings.metastore.max_open_files):
        log.warning("descriptor limit %d: running with metastore.max_open_domains = %d and "
                    "metastore.max_open_files = %d (raise the limit to use the configured %d "
                    "and %d)", limit, domains, files, settings.metastore.max_open_domains,
                    settings.metastore.max_open_files)
    own = min(_own(settings, per_process, domains, files), half)
    fits = max(1, (limit - own) // PER_CONNECTION_FDS) * processes
    wanted = settings.server.max_connections
    if wanted is not None and wanted > fits:
        raise BudgetError(
            f"server.max_connections = {wanted} needs about "
            f"{wanted // processes * PER_CONNECTION_FDS + own} file descriptors per process, "
            f"but the limit is {limit}: lower server.max_connections to at most {fits}, or "
            f"raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit)")
    return Budget(limit, fits if wanted is None else wanted, domains, files, own)


def per_shard(total: int, shards: int) -> int:
    """One shard's share of the daemon-wide connection limit (at least 1)."""
    return max(1, total // shards)
