"""The bucket's catalogue of domains, and writer epochs claimed with conditional puts.

Everything here lives in the bucket, so any daemon pointed at the same bucket finds the same
domains and competes for the same epochs; there is no other coordination.

Everything lives under the reserved metastore root ``.cachedaemon/meta/``
(:data:`cachedaemon.namespace.META_ROOT`), which no object route can read, write, delete or
list (``docs/wal-format.md``; the previous layout kept it at ``meta/`` among the users' keys and
is migrated at start by :mod:`cachedaemon.metastore.layout`):

* ``.cachedaemon/meta/registry/<name>``: a small JSON object ``{"name", "uuid", "created"}``
  created with put-if-absent by the first writer of a domain. Two daemons creating the same name
  race on that one PUT; the loser reads the winner's uuid. The domain's files live under
  ``.cachedaemon/meta/domain/<uuid>/`` (SSTs, ``MANIFEST``, ``wal/`` for the remote log,
  ``epoch/``).
* ``.cachedaemon/meta/domain/<uuid>/epoch/<epoch:020>``: one object per writer epoch ever
  claimed. A writer
  claims ``newest + 1`` with put-if-absent; losing means someone else claimed it, so it lists
  again and tries the next. Epochs never repeat, so a claimed epoch names its writer uniquely:
  SST names carry it (``<id>-<epoch>.sst``) and every manifest and remote-log write is
  conditional on it (:mod:`~cachedaemon.metastore.manifest_store`,
  :mod:`~cachedaemon.metastore.remote_log`). Claims older than the previous one are deleted.

Instances are per shard (the store is loop-bound). The name -> uuid map is cached: a domain's
uuid never changes once created.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
import zlib
from dataclasses import dataclass

from cachedaemon.config import Settings
from cachedaemon.errors import InvalidArgument, IOFailure, PreconditionFailed, ShuttingDown
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.namespace import META_ROOT

log = logging.getLogger(__name__)

REGISTRY_PREFIX = META_ROOT + "registry/"
DOMAIN_PREFIX = META_ROOT + "domain/"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_EPOCH = re.compile(r"^(\d{20})$")


#: Names that passed the check (a request checks its domain's name at each layer it crosses;
#: the hot paths pay a set lookup). Bounded: cleared when it grows past the cap.
_VALID_NAMES: set[str] = set()
_VALID_NAMES_CAP = 65536


def check_domain_name(name: str) -> str:
    """``name`` if it is a valid domain name, else :class:`InvalidArgument`."""
    if type(name) is str and name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"invalid domain name {name!r}: expected [a-z0-9][a-z0-9_-]{{0,62}}"
        )
    if len(_VALID_NAMES) >= _VALID_NAMES_CAP:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return name


def owner_shard(name: str, shards: int) -> int:
    """The shard that owns domain ``name`` (stable across restarts and processes)."""
    return zlib.crc32(name.encode("utf-8")) % max(shards, 1)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which shard owns each domain (``docs/shards.md``): hashed over the ``serving`` shards
    (:func:`owner_shard`), or, with ``own_process``, every domain on the metastore's process,
    the shard after the serving ones. The same on every shard (from the settings)."""

    serving: int
    own_process: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Placement:
        """The daemon's placement: ``server.shards`` serving shards, and the metastore's own
        process per ``metastore.process`` (``auto``: with more than one serving shard)."""
        serving, mode = settings.server.shards, settings.metastore.process
        return cls(serving, mode == "own" or (mode == "auto" and serving > 1))

    @property
    def processes(self) -> int:
        """Every shard: the serving ones and the metastore's process."""
        return self.serving + (1 if self.own_process else 0)

    @property
    def metastore_shard(self) -> int | None:
        return self.serving if self.own_process else None

    def owner(self, name: str) -> int:
        if self.own_process:
            return self.serving
        return owner_shard(name, self.serving)


@dataclass(frozen=True)
class DomainRecord:
    name: str
    uuid: str

    @property
    def prefix(self) -> str:
        return f"{DOMAIN_PREFIX}{self.uuid}"


class DomainRegistry:
    def __init__(self, io: CloudIO) -> None:
        self._io = io
        self._known: dict[str, DomainRecord] = {}

    @staticmethod
    def registry_key(name: str) -> str:
        return f"{REGISTRY_PREFIX}{name}"

    async def lookup(self, name: str) -> DomainRecord | None:
        """The domain ``name``, or None if it was never written."""
        check_domain_name(name)
        known = self._known.get(name)
        if known is not None:
            return known
        key = self.registry_key(name)
        data = await self._io.call(f"get {key}", lambda: self._io.store.get_bytes(key))
        if data is None:
            return None
        try:
            doc = json.loads(data)
            record = DomainRecord(name, str(uuid.UUID(doc["uuid"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise IOFailure(f"registry entry {key} is damaged: {exc}") from exc
        self._known[name] = record
        return record

    async def create(self, name: str) -> DomainRecord:
        """The domain ``name``, created (with a fresh uuid) if it does not exist yet."""
        record = await self.lookup(name)
        if record is not None:
            return record
        key = self.registry_key(name)
        fresh = DomainRecord(name, str(uuid.uuid4()))
        body = json.dumps({"name": name, "uuid": fresh.uuid, "created": time.time()}).encode()

        async def _put() -> bool:
            try:
                await self._io.store.put_if_absent(key, body)
            except PreconditionFailed:
                return False
            return True

        if await self._io.call(f"create {key}", _put):
            self._known[name] = fresh
            log.info("domain %s created with uuid %s", name, fresh.uuid)
            return fresh
        record = await self.lookup(name)  # another daemon (or our own retried PUT) won
        if record is None:
            raise IOFailure(f"registry entry {key} lost a race but is absent")
        return record

    async def list_names(self) -> list[str]:
        async def _list() -> list[str]:
            names = []
            async for info in self._io.store.list_all(REGISTRY_PREFIX):
                name = info.key[len(REGISTRY_PREFIX):]
                if _NAME.match(name):
                    names.append(name)
            return names

        return sorted(await self._io.call(f"list {REGISTRY_PREFIX}", _list))

    # -- epochs -------------------------------------------------------------------------------

    @staticmethod
    def epoch_key(record: DomainRecord, epoch: int) -> str:
        return f"{record.prefix}/epoch/{epoch:020d}"

    async def newest_epoch(self, record: DomainRecord) -> int:
        prefix = f"{record.prefix}/epoch/"

        async def _list() -> int:
            newest = 0
            async for info in self._io.store.list_all(prefix):
                m = _EPOCH.match(info.key[len(prefix):])
                if m is not None:
                    newest = max(newest, int(m.group(1)))
            return newest

        return await self._io.call(f"list {prefix}", _list)

    async def claim_epoch(self, record: DomainRecord, owner: str, at_least: int = 1) -> int:
        """Claim the next writer epoch of ``record`` (``newest + 1``, and ``>= at_least``)."""
        epoch = max(await self.newest_epoch(record) + 1, at_least)
        body = json.dumps({"owner": owner, "claimed": time.time()}).encode()
        for _ in range(100):
            key = self.epoch_key(record, epoch)

            async def _put(key: str = key) -> bool:
                try:
                    await self._io.store.put_if_absent(key, body)
                except PreconditionFailed:
                    return False
                return True

            if await self._io.call(f"claim {key}", _put):
                await self._forget_old_epochs(record, epoch)
                return epoch
            epoch = max(epoch + 1, await self.newest_epoch(record) + 1)
        raise IOFailure(f"could not claim an epoch of domain {record.name}: too much contention")

    async def _forget_old_epochs(self, record: DomainRecord, epoch: int) -> None:
        prefix = f"{record.prefix}/epoch/"
        try:
            async def _list() -> list[str]:
                return [i.key async for i in self._io.store.list_all(prefix)
                        if (m := _EPOCH.match(i.key[len(prefix):])) and int(m.group(1)) < epoch - 1]

            old = await self._io.call(f"list {prefix}", _list)
            if old:
                await self._io.call(f"delete old epochs of {record.name}",
                                    lambda: self._io.store.delete_many(old))
        except (IOFailure, ShuttingDown) as exc:
            log.warning("domain %s: deleting old epoch claims failed: %s", record.name, exc)
