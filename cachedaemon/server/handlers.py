"""Imports every module that registers routes, so :data:`ROUTES` is complete.

Later issues add their modules (kv domains, L1) here.
"""

from cachedaemon.server import cache_admin, health, kv, l1, objects, openapi  # noqa: F401
