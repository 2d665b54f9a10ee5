"""The metastore's bucket layout: the marker of the current one, and the migration from the last.

The metastore keeps everything under :data:`~cachedaemon.namespace.META_ROOT`
(``.cachedaemon/meta/``), which no object route can reach (``docs/wal-format.md``). The
previous layout kept the same objects at ``meta/registry/<name>`` and ``meta/domain/<uuid>/…``,
among the users' keys. :func:`ensure_layout` runs once at start, on shard 0, before any domain
opens:

1. If the marker :data:`LAYOUT_KEY` exists, the bucket is in this layout: ``meta/…`` keys are
   ordinary user objects and are never looked at (so a user object planted there later cannot
   be "migrated" into the reserved namespace).
2. Otherwise the legacy registry ``meta/registry/`` is listed. Each entry must decode, name its
   own domain, and have a uuid no other entry has; anything else stops the start with a
   message saying what to do (:class:`LayoutError`), before anything is changed.
3. Each legacy domain is copied: every object under ``meta/domain/<uuid>/`` to
   ``.cachedaemon/meta/domain/<uuid>/`` with put-if-absent (a copy never overwrites an object
   already in the new place, so a crashed migration resumes safely and nothing written there
   since is lost), then its registry entry (put-if-absent; an entry already there must carry
   the same uuid), then the legacy objects are deleted. The domain's local write-ahead log is
   keyed by uuid and needs nothing.
4. The marker is written (put-if-absent).

A read-only daemon cannot migrate: it refuses to start on a bucket that needs it. Every step is
idempotent, so a crash anywhere is finished by the next start. Daemons of the previous version
must be stopped first: they would keep writing under ``meta/``.

Legacy domain objects without a registry entry are left where they are (now plain user
objects) and logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid as uuid_mod

from cachedaemon.errors import IOFailure, PreconditionFailed
from cachedaemon.lsm.io.cloud_base import CloudIO
from cachedaemon.metastore.registry import DOMAIN_PREFIX, REGISTRY_PREFIX
from cachedaemon.namespace import META_ROOT

log = logging.getLogger(__name__)

#: Present once the bucket is in this layout.
LAYOUT_KEY = META_ROOT + "layout"
LAYOUT_VERSION = 2
#: Where the previous layout kept the registry and the domains.
LEGACY_REGISTRY_PREFIX = "meta/registry/"
LEGACY_DOMAIN_PREFIX = "meta/domain/"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class LayoutError(IOFailure):
    """The bucket's metastore layout cannot be migrated as it is; the message says why and
    what to do."""


async def ensure_layout(io: CloudIO, *, read_only: bool) -> int:
    """Make sure the bucket is in the current layout (see the module docstring). Returns the
    number of domains migrated."""
    if await io.call(f"head {LAYOUT_KEY}", lambda: io.store.head(LAYOUT_KEY)) is not None:
        return 0
    legacy = await _legacy_registry(io)
    if legacy and read_only:
        raise LayoutError(
            f"the bucket holds {len(legacy)} metastore domain(s) in the previous layout "
            f"({LEGACY_REGISTRY_PREFIX}…, {LEGACY_DOMAIN_PREFIX}…), and a read-only daemon "
            f"cannot migrate them: start a writable daemon on this bucket once (it moves them "
            f"under {META_ROOT}), then start this one again")
    for name, (domain_uuid, body) in sorted(legacy.items()):
        await _migrate_domain(io, name, domain_uuid, body)
    if legacy:
        await _report_orphans(io, {u for u, _ in legacy.values()})
    marker = json.dumps({"layout": LAYOUT_VERSION, "created": time.time()}).encode()
    if not read_only:
        await _create(io, LAYOUT_KEY, marker)  # (or another daemon wrote it first)
    if legacy:
        log.warning("metastore: migrated %d domain(s) from %s… to %s…: %s", len(legacy),
                    LEGACY_REGISTRY_PREFIX.split("/")[0] + "/", META_ROOT,
                    ", ".join(sorted(legacy)))
    return len(legacy)


async def _legacy_registry(io: CloudIO) -> dict[str, tuple[str, bytes]]:
    """name -> (uuid, registry entry) of the previous layout; LayoutError for an entry that
    cannot be trusted."""
    async def _list() -> list[str]:
        return [info.key async for info in io.store.list_all(LEGACY_REGISTRY_PREFIX)]

    keys = await io.call(f"list {LEGACY_REGISTRY_PREFIX}", _list)
    found: dict[str, tuple[str, bytes]] = {}
    by_uuid: dict[str, str] = {}
    for key in keys:
        name = key[len(LEGACY_REGISTRY_PREFIX):]
        if not _NAME.match(name):
            log.warning("metastore: %s is not a registry entry of the previous layout "
                        "(not a domain name); left as a user object", key)
            continue
        body = await _get(io, key)
        if body is None:
            continue  # deleted meanwhile
        try:
            doc = json.loads(body)
            domain_uuid = str(uuid_mod.UUID(doc["uuid"]))
            named = doc.get("name", name)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LayoutError(
                f"{key} (a registry entry of the previous layout) does not decode ({exc}): "
                f"delete it or restore it, then start again") from exc
        if named != name:
            raise LayoutError(
                f"{key} (a registry entry of the previous layout) names domain {named!r}, not "
                f"{name!r}: it was not written by cachedaemon; delete it, then start again")
        other = by_uuid.get(domain_uuid)
        if other is not None:
            raise LayoutError(
                f"{LEGACY_REGISTRY_PREFIX}{other} and {key} (registry entries of the previous "
                f"layout) both name domain uuid {domain_uuid}: one of them is not cachedaemon's "
                f"(the one created later, see its 'created'); delete it, then start again")
        by_uuid[domain_uuid] = name
        found[name] = (domain_uuid, body)
    return found


async def _migrate_domain(io: CloudIO, name: str, domain_uuid: str, body: bytes) -> None:
    old_prefix = f"{LEGACY_DOMAIN_PREFIX}{domain_uuid}/"
    new_prefix = f"{DOMAIN_PREFIX}{domain_uuid}/"
    new_entry = f"{REGISTRY_PREFIX}{name}"
    existing = await io.call(f"get {new_entry}", lambda: io.store.get_bytes(new_entry))
    if existing is not None and _uuid_of(existing) != domain_uuid:
        raise LayoutError(
            f"domain {name!r} exists in both layouts with different uuids "
            f"({new_entry}: {_uuid_of(existing)}, {LEGACY_REGISTRY_PREFIX}{name}: "
            f"{domain_uuid}): keep one (delete the other's registry entry), then start again")

    async def _list() -> list[str]:
        return [info.key async for info in io.store.list_all(old_prefix)]

    old_keys = await io.call(f"list {old_prefix}", _list)
    if existing is None:
        for key in old_keys:
            await _copy_if_absent(io, key, new_prefix + key[len(old_prefix):])
        # (False: another daemon migrated it meanwhile; the uuid was checked above.)
        await _create(io, new_entry, body)
    if old_keys:
        await io.call(f"delete {old_prefix}", lambda: io.store.delete_many(old_keys))
    old_entry = f"{LEGACY_REGISTRY_PREFIX}{name}"
    await io.call(f"delete {old_entry}", lambda: io.store.delete(old_entry))
    log.info("metastore: domain %s (%s) moved from %s to %s (%d objects)", name, domain_uuid,
             old_prefix, new_prefix, len(old_keys))


async def _copy_if_absent(io: CloudIO, src: str, dst: str) -> None:
    data = await io.call(f"get {src}", lambda: io.store.get_bytes(src))
    if data is None:
        return  # gone meanwhile (a GC of the previous version)
    # (False: already there; an earlier, interrupted migration or newer data wins.)
    await _create(io, dst, data)


async def _create(io: CloudIO, key: str, body: bytes) -> bool:
    """Put-if-absent under the retry chain; False if ``key`` exists."""
    async def _put() -> bool:
        try:
            await io.store.put_if_absent(key, body)
        except PreconditionFailed:
            return False
        return True

    return await io.call(f"create {key}", _put)


async def _get(io: CloudIO, key: str) -> bytes | None:
    return await io.call(f"get {key}", lambda: io.store.get_bytes(key))


def _uuid_of(body: bytes) -> str | None:
    try:
        return str(uuid_mod.UUID(json.loads(body)["uuid"]))
    except (ValueError, KeyError, TypeError):
        return None


async def _report_orphans(io: CloudIO, migrated: set[str]) -> None:
    async def _list() -> set[str]:
        return {info.key[len(LEGACY_DOMAIN_PREFIX):].split("/", 1)[0]
                async for info in io.store.list_all(LEGACY_DOMAIN_PREFIX)}

    left = sorted(await io.call(f"list {LEGACY_DOMAIN_PREFIX}", _list) - migrated)
    if left:
        log.warning("metastore: %s… holds objects of %d uuid(s) no registry entry names (%s); "
                    "they were not migrated and are ordinary user objects now",
                    LEGACY_DOMAIN_PREFIX, len(left), ", ".join(left[:10]))
