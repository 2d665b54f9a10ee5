"""Reporting L1 catalogue inconsistencies: the one place that turns a broken invariant into
:class:`~cachedaemon.errors.Corruption`, a metric and a log line.

The invariants (``docs/l1-format.md``, Redpanda's ``state_update.cc``): an object's removed data
size never exceeds its total; a preregistered object has no extents; every extent's object has
a row. An operation that finds one broken never repairs or clamps it (that would hide the bug
that broke it): it raises what :func:`corruption` returns, which also counts
``cachedaemon_l1_corruption_total{domain}`` and logs an error naming the object, so an operator
sees it even when the caller swallows the 500.

Stateless; any shard (the counter is process-wide, labelled by domain).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from cachedaemon.errors import Corruption

log = logging.getLogger(__name__)

CORRUPTION = Counter(
    "cachedaemon_l1_corruption",
    "L1 catalogue inconsistencies found (removed bytes above an object's total, extents of a "
    "preregistered or missing object); each is logged with the object it concerns.",
    ["domain"])


def corruption(domain: str, message: str) -> Corruption:
    """Count and log an inconsistency of domain ``domain``; returns the exception to raise."""
    CORRUPTION.labels(domain).inc()
    log.error("L1 metastore of domain %r is inconsistent: %s", domain, message)
    return Corruption(f"L1 domain {domain}: {message}")
