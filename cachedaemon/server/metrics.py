"""Prometheus metrics of the daemon (prometheus_client's process-global default registry).

Counters and histograms are incremented on whichever shard's thread handles the request;
prometheus_client's metrics are thread-safe, so the exposition covers the whole process. The
cache gauges (bytes, objects, reserved, limits) and the hit/miss/trim counters come from a snapshot of shard 0's cache stats
taken by the ``/metrics`` handler just before rendering (:func:`set_cache_snapshot`), read by
a custom collector. Route labels are route templates, never keys.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter("cachedaemon_http_requests", "HTTP requests served.",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("cachedaemon_http_request_duration_seconds",
                          "HTTP request latency (until the handler returned).",
                          ["method", "route"], buckets=_BUCKETS)
TRIM_DURATION = Histogram("cachedaemon_cache_trim_duration_seconds",
                          "Duration of requested trims.", buckets=_BUCKETS)
UPLOAD_BYTES = Counter("cachedaemon_upload_bytes", "Bytes uploaded to the bucket by PUTs.")
DOWNLOAD_BYTES = Counter("cachedaemon_download_bytes", "Bytes downloaded from the bucket.")
UPLOAD_DURATION = Histogram("cachedaemon_upload_duration_seconds",
                            "Duration of PUT uploads to the bucket.", buckets=_BUCKETS)
DOWNLOAD_DURATION = Histogram("cachedaemon_download_duration_seconds",
                              "Duration of miss downloads from the bucket.", buckets=_BUCKETS)
RESERVATION_WAIT = Histogram("cachedaemon_cache_reservation_wait_seconds",
                             "Time PUTs waited for cache space.", buckets=_BUCKETS)
RESERVATION_DEADLINE_FAILURES = Counter(
    "cachedaemon_cache_reservation_deadline_failures",
    "PUTs refused with 503 cache_full because space did not free up before the deadline.")
STREAM_THROUGH = Counter("cachedaemon_cache_stream_through",
                         "Miss GETs streamed without caching (object could not fit).")


class _CacheCollector(Collector):
    """Gauges from the latest snapshot of the cache's stats (shard 0's accounting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: dict[str, int] = {}

    def set(self, snapshot: dict[str, int]) -> None:
        with self._lock:
            self._snapshot = dict(snapshot)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = dict(self._snapshot)
        names = {
            "bytes_used": ("cachedaemon_cache_bytes", "Bytes of committed cache entries."),
            "objects": ("cachedaemon_cache_objects", "Committed cache entries."),
            "bytes_reserved": ("cachedaemon_cache_reserved_bytes", "Bytes reserved by writers."),
            "objects_reserved": ("cachedaemon_cache_reserved_objects",
                                 "Objects reserved by writers."),
            "max_bytes": ("cachedaemon_cache_max_bytes", "Cache byte limit."),
            "max_objects": ("cachedaemon_cache_max_objects", "Cache object limit."),
            "bytes_over_limit": ("cachedaemon_cache_over_limit_bytes",
                                 "Bytes committed and reserved over the byte limit "
                                 "(over-commit, cache.may_exceed)."),
            "puts_blocked": ("cachedaemon_cache_puts_blocked",
                             "1 while new cache writes wait for disk space (below "
                             "cache.min_free_bytes, or after ENOSPC)."),
        }
        for field_name, (metric, doc) in names.items():
            g = GaugeMetricFamily(metric, doc)
            g.add_metric([], float(snap.get(field_name, 0)))
            yield g
        counters = {
            "hits": ("cachedaemon_cache_hits", "Cache lookups that found the entry (all shards)."),
            "misses": ("cachedaemon_cache_misses", "Cache lookups that missed (all shards)."),
            "trims": ("cachedaemon_cache_trims", "Trims run (automatic and requested)."),
            "overcommits": ("cachedaemon_cache_overcommits",
                            "Reservations granted over the byte limit (cache.may_exceed)."),
            "bytes_overcommitted": ("cachedaemon_cache_overcommitted_bytes",
                                    "Bytes of the reservations granted over the byte limit."),
        }
        for field_name, (metric, doc) in counters.items():
            c = CounterMetricFamily(metric, doc)
            c.add_metric([], float(snap.get(field_name, 0)))
            yield c


CACHE_COLLECTOR = _CacheCollector()
REGISTRY.register(CACHE_COLLECTOR)


def set_cache_snapshot(snapshot: dict[str, Any]) -> None:
    CACHE_COLLECTOR.set({k: int(v) for k, v in snapshot.items() if isinstance(v, int | float)})


def registry() -> CollectorRegistry:
    return REGISTRY
