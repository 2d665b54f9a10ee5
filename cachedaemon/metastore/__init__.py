"""The metastore: named key-value domains whose LSM trees live in the bucket, and (in ``l1``)
the cloud-topics L1 metastore built on them.

Public API of the key-value domains (the implementation modules are private to the package):

* :class:`DomainService` — one shard's domains; :func:`start_domains` starts one per shard,
  :func:`call_domain` runs an operation on the shard that owns a domain;
* :class:`Domain` and :class:`DomainConfig` — one open domain (writer or read replica);
* :func:`check_domain_name`, :func:`owner_shard` — naming and placement.

Formats and protocol: ``docs/wal-format.md``.
"""

from cachedaemon.metastore.domain import Domain, DomainConfig
from cachedaemon.metastore.registry import check_domain_name, owner_shard
from cachedaemon.metastore.service import (
    DomainService,
    call_domain,
    config_from_settings,
    start_domains,
)

__all__ = [
    "Domain",
    "DomainConfig",
    "DomainService",
    "call_domain",
    "check_domain_name",
    "config_from_settings",
    "owner_shard",
    "start_domains",
]
