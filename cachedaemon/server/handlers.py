"""Imports every module that registers routes, so :data:`ROUTES` is complete.

Later issues add their modules (kv domains, L1) here.
"""

from cachedaemon.server import (  # noqa: F401
    cache_admin,
    cache_insight,
    health,
    kv,
    l1,
    objects,
    openapi,
)
