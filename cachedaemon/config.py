"""Typed, frozen settings: defaults <- TOML file <- environment <- command-line flags.

Every setting lives in a section (``server``, ``storage``, ``remote``, ``cache``,
``metastore``, ``s3``) and is declared once, in :data:`SCHEMA`, with its kind, default, bounds and help
text. From that one table come: the TOML keys (``[cache] max_bytes = "1GiB"``), the environment
variables (``CACHEDAEMON_CACHE_MAX_BYTES``), the flags (``--cache-max-bytes``, plus the short
aliases of ``shared/API.md``), the documented example file ``config/cachedaemon.toml`` (a test
checks it lists every setting with its default), and the frozen dataclasses the daemon reads.

Any bad value raises one :class:`~cachedaemon.errors.ConfigError` naming the setting, its
source (the file path, ``env CACHEDAEMON_...`` or ``flag --...``) and the problem; the CLI turns
it into exit status 2. Unknown keys in the file and unknown ``CACHEDAEMON_<SECTION>_*``
variables of a known section are errors too (a typo must not be silently ignored).

Pure and loop-free: loaded once on the main thread before any shard starts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import textwrap
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cachedaemon.errors import ConfigError
from cachedaemon.namespace import validate_node_id
from cachedaemon.units import format_duration, parse_duration, parse_size

ENV_PREFIX = "CACHEDAEMON_"


@dataclass(frozen=True)
class Setting:
    """One setting's declaration."""

    section: str
    name: str
    kind: str  # str | int | float | bool | size | duration | choice
    default: Any
    help: str
    optional: bool = False  # None allowed (and the default may be None)
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    validate: Callable[[Any], str | None] | None = None
    aliases: tuple[str, ...] = ()
    default_doc: str | None = None  # how to show a computed default
    why: str = ""  # why the default is what it is (a comment in config/cachedaemon.toml)

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return f"--{self.section}-{self.name}".replace("_", "-")


def _listen(value: Any) -> str | None:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT, e.g. 127.0.0.1:8470"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 0 to 65535"
    return None


def _remote_url(value: Any) -> str | None:
    if value is None:
        return None
    url = str(value)
    if url.startswith("file://"):
        if not url[len("file://") :].startswith("/"):
            return "a file:// URL needs an absolute path: file:///path/to/bucket"
        return None
    if url.startswith("s3://"):
        bucket = url[len("s3://") :].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            return f"{bucket!r} is not a valid S3 bucket name"
        return None
    return "expected file:///path or s3://bucket[/prefix]"


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def _optional_listen(value: Any) -> str | None:
    return None if value is None else _listen(value)


def _optional_node_id(value: Any) -> str | None:
    return None if value is None else validate_node_id(str(value))


def _warm_from(value: Any) -> str | None:
    if value is None or value == "any":
        return None
    problem = validate_node_id(str(value))
    return None if problem is None else f"expected a node id or any: {problem}"


def _bucket_name(value: Any) -> str | None:
    if value is None or _BUCKET_NAME.fullmatch(str(value)):
        return None
    return (f"{value!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, dots "
            "and hyphens)")


SCHEMA: tuple[Setting, ...] = (
    # server
    Setting("server", "listen", "str", "127.0.0.1:8470", "Address the HTTP API listens on.",
            validate=_listen, aliases=("--listen",)),
    Setting("server", "shards", "int", None, "Number of shards: shard 0 is the main process, the others are worker processes.",
            optional=True, minimum=1, maximum=256, aliases=("--shards",),
            default_doc="number of cores"),
    Setting("server", "auth_token", "str", None,
            "Bearer token required on /v1/* when set.", optional=True, aliases=("--auth-token",)),
    Setting("server", "shutdown_timeout", "duration", 10.0,
            "How long in-flight requests may run after SIGTERM before they are aborted."),
    Setting("server", "header_timeout", "duration", 10.0,
            "A connection whose request headers are not complete by then is closed.",
            minimum=0.001),
    Setting("server", "body_timeout", "duration", 30.0,
            "A request body, or a client reading a response, that moves no bytes for this long "
            "is cut off (408 for a stalled body) and its partial work discarded.", minimum=0.001),
    Setting("server", "idle_timeout", "duration", 60.0,
            "Idle keep-alive connections are closed after this long.", minimum=0.001),
    Setting("server", "max_connections", "int", None,
            "Most client connections at once (all shards); past it new connections are closed "
            "at once.", optional=True, minimum=1, maximum=10_000_000,
            default_doc="what the descriptor limit allows after room for the daemon's own files"),
    Setting("server", "log_format", "choice", "text",
            "Log format: text, or json (one JSON line per log record and per request).",
            choices=("text", "json"), aliases=("--log-format",)),
    Setting("server", "log_level", "choice", "info", "Log level.",
            choices=("debug", "info", "warning", "error")),
    Setting("server", "s3_listen", "str", None,
            "Address of the S3-compatible endpoint (off when unset).", optional=True,
            validate=_optional_listen, aliases=("--s3-listen",)),
    Setting("server", "node_id", "str", None,
            "This node's name: its cache's hot set is published as .cachedaemon/hotset/<node_id> "
            "for other nodes to warm from.", optional=True, validate=_optional_node_id,
            aliases=("--node-id",), default_doc="the host name"),
    Setting("server", "read_only", "bool", False,
            "Open metastore domains read-only (a read replica); writes get 409 read_only.",
            aliases=("--read-only",)),
    # storage
    Setting("storage", "data_dir", "str", "./cachedaemon-data",
            "Directory for the cache, write-ahead logs and the default file:// bucket.",
            aliases=("--data-dir",)),
    # remote
    Setting("remote", "url", "str", None, "The bucket: file:///path or s3://bucket[/prefix].",
            optional=True, validate=_remote_url, aliases=("--remote",),
            default_doc="file://<data_dir>/bucket"),
    Setting("remote", "s3_endpoint", "str", None,
            "S3 endpoint URL (moto, MinIO, ...); unset means AWS.", optional=True,
            aliases=("--s3-endpoint",)),
    Setting("remote", "region", "str", "us-east-1", "S3 region."),
    Setting("remote", "retry_timeout", "duration", 30.0,
            "How long one bucket operation may be retried before it fails with 502."),
    Setting("remote", "multipart_threshold", "size", 16 * 1024**2,
            "Uploads above this size use multipart.", minimum=5 * 1024**2),
    Setting("remote", "multipart_part_size", "size", 8 * 1024**2, "Multipart part size.",
            minimum=5 * 1024**2),
    Setting("remote", "max_connections", "int", 64, "Connection pool size per shard.",
            minimum=1, maximum=4096),
    # cache
    Setting("cache", "max_bytes", "size", None, "Cache size limit in bytes.", optional=True,
            minimum=1, aliases=("--cache-max-bytes",),
            default_doc="max_bytes_percent of the data disk"),
    Setting("cache", "max_bytes_percent", "float", 20.0,
            "Cache size as a percent of the data disk, when max_bytes is unset.",
            minimum=0.001, maximum=100.0),
    Setting("cache", "max_objects", "int", 100_000, "Cache object-count limit.", minimum=1,
            aliases=("--cache-max-objects",)),
    Setting("cache", "max_object_bytes", "size", None, "Largest object a PUT may store.",
            optional=True, minimum=0, aliases=("--max-object-bytes",),
            default_doc="the cache's byte limit"),
    Setting("cache", "reserve_deadline", "duration", 30.0,
            "How long a writer may wait for cache space before 503 cache_full."),
    Setting("cache", "trim_interval", "duration", 5.0,
            "Minimum time between throttled (directory-walking) trims."),
    Setting("cache", "low_watermark", "float", 0.8,
            "Trim down to this fraction of the limits.", minimum=0.05, maximum=0.99),
    Setting("cache", "disk_reservation_percent", "float", 25.0,
            "Percent of the data disk the cache never counts as usable: max_bytes_percent is "
            "a percent of the rest, and an explicit max_bytes larger than the rest is lowered "
            "to it.", minimum=0.0, maximum=99.0,
            why="25 as in Redpanda: with the default max_bytes_percent the cache takes at most "
                "15 % of the disk, and a max_bytes typed for a bigger disk cannot fill this "
                "one. It only ever lowers the limit, so it never stops the daemon from running "
                "on a small disk."),
    Setting("cache", "min_free_bytes", "size", None,
            "Free space the data disk keeps: below it trims go further and new reservations "
            "wait (503 cache_full after their deadline) until trims or the disk recover; 0 "
            "turns it off.", optional=True, minimum=0,
            default_doc="2 % of the data disk, at most 5GiB",
            why="A fixed figure cannot suit both a server and a laptop: Redpanda's 5 GiB is "
                "right for a server's data disk (it is what 2 % comes to on a 250 GB disk) "
                "but would block every write on a small, nearly full laptop disk, where 2 % "
                "(1.3 GB of 64 GB) still leaves the system room to work. The filesystem's own "
                "root reserve is not counted as free, so this is on top of it."),
    Setting("cache", "may_exceed", "bool", True,
            "When a trim cannot free enough, let a reservation's bytes (never its objects) go "
            "over max_bytes if the disk has more than 10 times the request free and "
            "min_free_bytes left after it (Redpanda's may_exceed); false: the writer waits "
            "until its deadline."),
    Setting("cache", "background_trim_threshold_percent", "float", None,
            "Trim in the background when usage passes this percent of a limit (unset: off).",
            optional=True, minimum=1.0, maximum=100.0),
    Setting("cache", "tracker_save_interval", "duration", 10.0,
            "How often the access order of hits is written to the cache index's journal "
            "(commits and removals are journaled at once).", minimum=0.001),
    Setting("cache", "sync_interval", "duration", 6 * 3600.0,
            "How often a background walk of the cache directory corrects the index (adopts "
            "untracked files, forgets missing ones); 0: never. One also runs after every "
            "start.", minimum=0.0),
    Setting("cache", "walk_rate", "int", 50_000,
            "Files per second a background walk (after start, and every sync_interval) may "
            "visit; 0: as fast as the disk allows.", minimum=0),
    Setting("cache", "disk_poll_interval", "duration", 5.0,
            "How often free disk space is polled."),
    Setting("cache", "staging_initial_bytes", "size", 1024**2,
            "Initial reservation of a staging file."),
    Setting("cache", "staging_chunk_bytes", "size", 1024**2,
            "Minimum extra reservation a staging file takes as it grows.", minimum=1),
    Setting("cache", "mrc_sample_rate", "float", 0.01,
            "Share of keys the miss-ratio curve samples (SHARDS: an object of the average "
            "size at this rate, larger ones more often); 0 turns the curve off.",
            minimum=0.0, maximum=1.0),
    Setting("cache", "mrc_max_keys", "int", 8192,
            "Most keys the miss-ratio curve tracks (about 250 bytes each); past it the "
            "sampling rate falls.", minimum=16, maximum=10_000_000),
    Setting("cache", "eviction_log_entries", "int", 16384,
            "Recent evictions GET /v1/cache/explain/{key} remembers (about 250 bytes plus the "
            "key each); 0: none.", minimum=0, maximum=10_000_000),
    Setting("cache", "reservation_warn_age", "duration", 300.0,
            "A reservation held longer than this is logged once with its owner and counted in "
            "cachedaemon_cache_stale_reservations.", minimum=0.001),
    Setting("cache", "hotset_interval", "duration", 300.0,
            "How often the cache's hot set is published to .cachedaemon/hotset/<node_id> (it "
            "is also published at shutdown); 0: only at shutdown.", minimum=0.0),
    Setting("cache", "warm_from", "str", None,
            "At start, fill the cache from the hot set a node published: its node id, or any "
            "(the newest of another node).", optional=True, validate=_warm_from,
            aliases=("--warm-from",)),
    Setting("cache", "warm_bytes", "size", None,
            "Most bytes a warm-up fetches.", optional=True, minimum=0,
            default_doc="low_watermark x the cache's byte limit"),
    Setting("cache", "warm_timeout", "duration", 600.0,
            "A warm-up stops after this long.", minimum=0.001),
    Setting("cache", "warm_before_ready", "bool", False,
            "/readyz waits for the warm-up at start (otherwise it runs in the background)."),
    Setting("cache", "warm_concurrency", "int", 8,
            "Objects a warm-up fetches at once.", minimum=1, maximum=256),
    # metastore
    Setting("metastore", "wal", "choice", "local",
            "Write-ahead log kind: local (segments on disk, fsync) or remote (bucket objects).",
            choices=("local", "remote")),
    Setting("metastore", "flush_interval", "duration", 30.0,
            "How often domains flush their memtables to SSTs in the bucket."),
    Setting("metastore", "memtable_bytes", "size", 16 * 1024**2,
            "Memtable size that triggers a flush.", minimum=4096),
    Setting("metastore", "refresh_interval", "duration", 10.0,
            "How often read replicas look for a newer manifest."),
    Setting("metastore", "gc_interval", "duration", 60.0, "How often garbage collection runs."),
    Setting("metastore", "file_deletion_delay", "duration", 3600.0,
            "How long an unreferenced SST or object stays before it is deleted."),
    Setting("metastore", "l1_preregistration_ttl", "duration", 3600.0,
            "How long an L1 object id preregistered but never added is kept before the object "
            "GC deletes it (and any upload under its name)."),
    Setting("metastore", "l1_cache_bytes", "size", 128 * 1024**2,
            "Memory for the rows the L1 point queries read (get_first_ge, get_offsets), per L1 "
            "domain, kept equal to the database; 0 reads every query from the LSM."),
    Setting("metastore", "domain_idle_timeout", "duration", 600.0,
            "A domain not used for this long is flushed and closed (its files and descriptors "
            "released); the next request opens it again. 0 keeps domains open."),
    Setting("metastore", "max_open_domains", "int", 64,
            "Most domains open at once on one shard; opening another first closes the least "
            "recently used idle one.", minimum=1, maximum=100_000),
    Setting("metastore", "max_open_files", "int", 64,
            "Most SST files one open domain keeps open (LevelDB's max_open_files).",
            minimum=4, maximum=100_000),
    Setting("metastore", "max_batch_bytes", "size", 64 * 1024**2,
            "Largest body of a key-value batch; a larger one is refused with 413.", minimum=1024),
    Setting("metastore", "cpu_share", "float", 0.2,
            "The metastore's share of a shard's event loop while object requests are in flight "
            "on it (as Seastar's scheduling-group shares): kv and L1 requests, flushes and "
            "compactions pause so that object reads and writes get the rest. 1 turns it off.",
            minimum=0.01, maximum=1.0),
    Setting("metastore", "process", "choice", "auto",
            "Where the domains run. own: in a process of their own, below the shards that serve "
            "objects (metastore.cpu_policy, metastore.nice, metastore.io_class); shards: hashed "
            "over the serving shards; auto: own with more than one shard, else shards (one process).",
            choices=("auto", "own", "shards")),
    Setting("metastore", "nice", "int", 10,
            "The CPU priority (nice value) of the metastore's own process: its flushes and "
            "compactions get the CPU the object shards leave (10: about a tenth when they "
            "want it all). With metastore.cpu_policy = idle the kernel ignores it for the CPU.",
            minimum=0, maximum=19),
    Setting("metastore", "cpu_policy", "choice", "idle",
            "The CPU scheduling policy of the metastore's own process: idle (SCHED_IDLE: it "
            "runs on the CPU the object shards leave, and gives a CPU up at once when one of "
            "them wakes; under a load that keeps every CPU busy with object requests its kv "
            "and L1 requests slow down the most) or other (the normal policy at "
            "metastore.nice).", choices=("idle", "other")),
    Setting("metastore", "io_class", "choice", "idle",
            "The I/O class of the metastore's own process: idle (its disk I/O waits while "
            "the object shards' is queued; mq-deadline's aging bounds the wait to seconds, "
            "BFQ's idle class may wait longer) or best-effort (at the lowest level).",
            choices=("idle", "best-effort")),
    # s3 (the S3-compatible endpoint, docs/s3-endpoint.md)
    Setting("s3", "bucket_mode", "choice", "single",
            "single: one bucket whose keys are the daemon's keys; prefix: every top-level "
            "prefix is a bucket (CreateBucket and DeleteBucket work).",
            choices=("single", "prefix")),
    Setting("s3", "bucket", "str", None, "The bucket's name in single mode.", optional=True,
            validate=_bucket_name,
            default_doc="the remote bucket's name, or cachedaemon for file://"),
    Setting("s3", "access_key_id", "str", "cachedaemon",
            "Access key id S3 clients sign with (when a secret is set)."),
    Setting("s3", "secret_access_key", "str", None,
            "Secret key S3 requests are verified with (SigV4); unset and no auth token: the "
            "endpoint is open.", optional=True, default_doc="server.auth_token"),
    Setting("s3", "domain", "str", "localhost",
            "Domains for virtual-hosted-style requests (comma-separated): a Host of "
            "<bucket>.<domain> names the bucket."),
    Setting("s3", "upload_expiry", "duration", 86400.0,
            "An incomplete multipart upload untouched this long is aborted and its cache space "
            "released.", minimum=1.0),
)

SECTIONS = tuple(dict.fromkeys(s.section for s in SCHEMA))
BY_KEY = {s.key: s for s in SCHEMA}
BY_FLAG: dict[str, Setting] = {}
for _s in SCHEMA:
    BY_FLAG[_s.flag] = _s
    for _a in _s.aliases:
        BY_FLAG[_a] = _s


# --- the frozen result -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    listen: str
    shards: int
    auth_token: str | None
    shutdown_timeout: float
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int | None  # None: from the descriptor limit at start
    log_format: str
    log_level: str
    s3_listen: str | None
    node_id: str
    read_only: bool

    @property
    def s3_host(self) -> str:
        assert self.s3_listen is not None
        return self.s3_listen.rpartition(":")[0].strip("[]")

    @property
    def s3_port(self) -> int:
        assert self.s3_listen is not None
        return int(self.s3_listen.rpartition(":")[2])

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


@dataclass(frozen=True)
class StorageSettings:
    data_dir: Path


@dataclass(frozen=True)
class RemoteSettings:
    url: str
    s3_endpoint: str | None
    region: str
    retry_timeout: float
    multipart_threshold: int
    multipart_part_size: int
    max_connections: int


@dataclass(frozen=True)
class CacheSettings:
    max_bytes: int | None  # None: computed from max_bytes_percent of the disk at start
    max_bytes_percent: float
    max_objects: int
    max_object_bytes: int | None  # None: the cache's byte limit
    reserve_deadline: float
    trim_interval: float
    low_watermark: float
    disk_reservation_percent: float
    min_free_bytes: int | None  # None: 2 % of the data disk, at most 5 GiB (at start)
    may_exceed: bool
    background_trim_threshold_percent: float | None
    tracker_save_interval: float
    sync_interval: float
    walk_rate: int
    disk_poll_interval: float
    staging_initial_bytes: int
    staging_chunk_bytes: int
    mrc_sample_rate: float
    mrc_max_keys: int
    eviction_log_entries: int
    reservation_warn_age: float
    hotset_interval: float
    warm_from: str | None
    warm_bytes: int | None  # None: low_watermark x the byte limit
    warm_timeout: float
    warm_before_ready: bool
    warm_concurrency: int


@dataclass(frozen=True)
class MetastoreSettings:
    wal: str
    flush_interval: float
    memtable_bytes: int
    refresh_interval: float
    gc_interval: float
    file_deletion_delay: float
    l1_preregistration_ttl: float
    l1_cache_bytes: int
    domain_idle_timeout: float
    max_open_domains: int
    max_open_files: int
    max_batch_bytes: int
    cpu_share: float
    process: str
    nice: int
    io_class: str
    cpu_policy: str


@dataclass(frozen=True)
class S3Settings:
    bucket_mode: str
    bucket: str  # computed when unset: the remote bucket's name or "cachedaemon"
    access_key_id: str
    secret_access_key: str | None  # computed when unset: server.auth_token
    domain: str
    upload_expiry: float

    def credentials(self) -> tuple[str, str] | None:
        """(access key id, secret) requests must be signed with; None: the endpoint is open."""
        if self.secret_access_key is None:
            return None
        return self.access_key_id, self.secret_access_key

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(d.strip().lower().strip(".") for d in self.domain.split(",") if d.strip())


@dataclass(frozen=True)
class SettingsOrigin:
    """What :func:`load_settings` was given: the file is read again on reload, with the same
    flags (a flag still beats the file)."""

    config_file: Path | None
    flags: Mapping[str, Any]


@dataclass(frozen=True)
class Settings:
    server: ServerSettings
    storage: StorageSettings
    remote: RemoteSettings
    cache: CacheSettings
    metastore: MetastoreSettings
    s3: S3Settings
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: Where these settings came from (the file path and the flags), for :func:`reload_settings`.
    origin: SettingsOrigin | None = field(default=None, compare=False)

    @property
    def cache_dir(self) -> Path:
        return self.storage.data_dir / "cache"


_SECTION_CLASSES: dict[str, type[Any]] = {
    "server": ServerSettings,
    "storage": StorageSettings,
    "remote": RemoteSettings,
    "cache": CacheSettings,
    "metastore": MetastoreSettings,
    "s3": S3Settings,
}


# --- parsing -----------------------------------------------------------------------------------


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    """Turn a raw value (TOML value or string) into the setting's type, or raise ConfigError."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(setting.key, source, problem)

    if raw is None or (setting.optional and isinstance(raw, str) and raw.strip() == ""):
        if setting.optional:
            return None
        raise fail("a value is required")
    kind = setting.kind
    try:
        if kind == "str":
            if not isinstance(raw, str):
                raise fail(f"expected a string, got {type(raw).__name__} {raw!r}")
            if "\x00" in raw:
                # No path, address, token or URL can hold one; the OS would refuse it later.
                raise fail(f"contains a NUL byte: {raw!r}")
            value: Any = raw
        elif kind == "choice":
            if not isinstance(raw, str) or raw not in setting.choices:
                raise fail(f"expected one of {', '.join(setting.choices)}, got {raw!r}")
            value = raw
        elif kind == "bool":
            if isinstance(raw, bool):
                value = raw
            elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
                value = True
            elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise fail(f"expected true or false, got {raw!r}")
        elif kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise fail(f"expected an integer, got {raw!r}")
            if isinstance(raw, str):
                if not re.fullmatch(r"\s*-?\d+\s*", raw):
                    raise fail(f"expected an integer, got {raw!r}")
                raw = int(raw)
            value = raw
        elif kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise fail(f"expected a number, got {raw!r}")
            try:
                value = float(raw)
            except ValueError:
                raise fail(f"expected a number, got {raw!r}") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise fail(f"expected a finite number, got {raw!r}")
        elif kind == "size":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                raise fail(f"expected a size like 123, 64KiB or 2GiB, got {raw!r}")
            value = parse_size(raw)
        elif kind == "duration":
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise fail(f"expected a duration like 500ms, 5s or 1m, got {raw!r}")
            value = parse_duration(raw)
        else:  # pragma: no cover - schema bug
            raise AssertionError(kind)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if setting.minimum is not None and value < setting.minimum:
        raise fail(f"must be at least {setting.minimum:g}, got {raw!r}")
    if setting.maximum is not None and value > setting.maximum:
        raise fail(f"must be at most {setting.maximum:g}, got {raw!r}")
    if setting.validate is not None:
        problem = setting.validate(value)
        if problem:
            raise fail(problem)
    return value


def _read_file(path: Path) -> dict[str, tuple[Any, str]]:
    source = f"file {path}"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", source, f"cannot read it: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("--config", source, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", source, f"not valid TOML: {exc}") from None
    out: dict[str, tuple[Any, str]] = {}
    for section, table in doc.items():
        if section not in SECTIONS:
            raise ConfigError(section, source, f"unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(section, source, "expected a [section] table")
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in BY_KEY:
                raise ConfigError(key, source, "unknown setting")
            out[key] = (value, source)
    return out


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    out: dict[str, tuple[Any, str]] = {}
    by_env = {s.env: s for s in SCHEMA}
    section_prefixes = tuple(f"{ENV_PREFIX}{sec.upper()}_" for sec in SECTIONS)
    for var, value in env.items():
        if not var.startswith(section_prefixes):
            continue
        setting = by_env.get(var)
        if setting is None:
            raise ConfigError(var, f"env {var}", "unknown setting")
        out[setting.key] = (value, f"env {var}")
    return out


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    cpu_count: int | None = None,
) -> Settings:
    """Merge defaults <- file <- env <- flags into :class:`Settings`.

    ``flags`` maps a setting key (``cache.max_bytes``) to its raw command-line value.
    """
    env = os.environ if env is None else env
    merged: dict[str, tuple[Any, str]] = {s.key: (s.default, "default") for s in SCHEMA}
    if config_file is not None:
        merged.update(_read_file(Path(config_file)))
    merged.update(_read_env(env))
    for key, raw in (flags or {}).items():
        setting = BY_KEY.get(key)
        if setting is None:
            raise ConfigError(key, "flag", "unknown setting")
        if raw is not None:
            merged[key] = (raw, f"flag {setting.flag}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SCHEMA:
        raw, source = merged[setting.key]
        values[setting.key] = (
            raw if source == "default" and (raw is None or setting.kind != "str") else
            _coerce(setting, raw, source)
        )
        sources[setting.key] = source

    # Computed defaults.
    if values["server.shards"] is None:
        values["server.shards"] = max(1, cpu_count or os.cpu_count() or 1)
    try:
        data_dir = Path(values["storage.data_dir"]).expanduser()
    except RuntimeError:  # "~name/..." where no user "name" exists
        raise ConfigError("storage.data_dir", sources["storage.data_dir"],
                          f"{values['storage.data_dir']}: no such user to expand ~ for") from None
    values["storage.data_dir"] = data_dir
    if values["remote.url"] is None:
        try:
            bucket = (data_dir / "bucket").resolve()
        except (OSError, RuntimeError) as exc:  # 3.11 raises RuntimeError on a symlink loop
            raise ConfigError("storage.data_dir", sources["storage.data_dir"],
                              f"{data_dir}: cannot resolve it: {exc}") from None
        values["remote.url"] = f"file://{bucket}"
    if values["s3.bucket"] is None:
        url = values["remote.url"]
        values["s3.bucket"] = url[len("s3://"):].split("/", 1)[0] if url.startswith("s3://") \
            else "cachedaemon"
    if values["server.node_id"] is None:
        values["server.node_id"] = default_node_id()
    if values["s3.secret_access_key"] is None:
        values["s3.secret_access_key"] = values["server.auth_token"]
    mb, mob = values["cache.max_bytes"], values["cache.max_object_bytes"]
    if mb is not None and mob is not None and mob > mb:
        raise ConfigError(
            "cache.max_object_bytes", sources["cache.max_object_bytes"],
            f"{mob} is larger than cache.max_bytes ({mb}): such objects could never be cached",
        )

    sections: dict[str, Any] = {}
    for section, cls in _SECTION_CLASSES.items():
        kwargs = {f.name: values[f"{section}.{f.name}"] for f in fields(cls)}
        sections[section] = cls(**kwargs)
    origin = SettingsOrigin(None if config_file is None else Path(config_file),
                            dict(flags or {}))
    return Settings(**sections, sources=sources, origin=origin)


#: Settings a running daemon applies on reload (SIGHUP); any other change needs a restart.
RELOADABLE = frozenset(
    {f"cache.{f.name}" for f in fields(CacheSettings)} | {"server.log_level"}
)


def reload_settings(current: Settings, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings again from where ``current`` came from (its config file, the
    environment, its flags). Raises :class:`ConfigError` like :func:`load_settings`."""
    origin = current.origin or SettingsOrigin(None, {})
    return load_settings(origin.config_file, env, origin.flags,
                         cpu_count=current.server.shards)


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """The keys (``section.name``) whose value differs between ``old`` and ``new``."""
    out: list[str] = []
    for section in _SECTION_CLASSES:
        a, b = getattr(old, section), getattr(new, section)
        out += [f"{section}.{f.name}" for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    return out


def merge_reloadable(running: Settings, reread: Settings) -> tuple[Settings, list[str], list[str]]:
    """``running`` with the :data:`RELOADABLE` settings taken from ``reread``; also the keys
    that changed and are applied, and those that changed but wait for a restart."""
    changed = changed_settings(running, reread)
    applied = [k for k in changed if k in RELOADABLE]
    later = [k for k in changed if k not in RELOADABLE]
    merged = dataclasses.replace(
        running, cache=reread.cache,
        server=dataclasses.replace(running.server, log_level=reread.server.log_level),
    )
    return merged, applied, later


def default_node_id() -> str:
    """The host name, made a valid node id (other characters become ``-``, at most 63)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")[:63]
    return name if validate_node_id(name) is None else "node"


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """``settings`` as plain data (JSON-able): how shard 0 hands them to a worker shard."""
    out: dict[str, Any] = {"sources": dict(settings.sources)}
    for section in _SECTION_CLASSES:
        obj = getattr(settings, section)
        out[section] = {f.name: (str(v) if isinstance(v := getattr(obj, f.name), Path) else v)
                        for f in fields(obj)}
    return out


def settings_from_dict(data: Mapping[str, Any]) -> Settings:
    """The inverse of :func:`settings_to_dict` (no defaults, no checks: the values were
    resolved and checked by the process that loaded them)."""
    sections: dict[str, Any] = {}
    for section, cls in _SECTION_CLASSES.items():
        values = dict(data[section])
        if section == "storage":
            values["data_dir"] = Path(values["data_dir"])
        sections[section] = cls(**values)
    return Settings(**sections, sources=dict(data.get("sources", {})))


def render_example() -> str:
    """The documented example configuration (``config/cachedaemon.toml``), every setting at its
    default. A test keeps the checked-in file equal to this."""
    lines = [
        "# cachedaemon configuration. Every setting, at its default.",
        "# Precedence: command-line flag > environment (CACHEDAEMON_<SECTION>_<NAME>) > this file",
        "# > default. Sizes: 123, 64KiB, 10MiB, 2GiB. Durations: 500ms, 5s, 1m.",
        "# Pass it with: cachedaemon serve --config config/cachedaemon.toml",
    ]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for s in (s for s in SCHEMA if s.section == section):
            lines.append(f"# {s.help}")
            lines += [f"# {line}" for line in textwrap.wrap(f"Why: {s.why}", 94) if s.why]
            flags = ", ".join((s.flag, *s.aliases))
            lines.append(f"# env {s.env}; flag {flags}")
            if s.default is None:
                lines.append(f"# {s.name} = ...  (default: {s.default_doc or 'unset'})")
            else:
                lines.append(f"{s.name} = {_toml_value(s, s.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(s: Setting, value: Any) -> str:
    if s.kind == "bool":
        return "true" if value else "false"
    if s.kind == "duration":
        return f'"{format_duration(value)}"'
    if s.kind == "size":
        for unit, mult in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value and value % mult == 0:
                return f'"{value // mult}{unit}"'
        return str(value)
    if s.kind in ("int", "float"):
        return repr(value)
    return f'"{value}"'
