"""Prometheus metrics of the daemon: one registry per shard process, added up at scrape time.

Counters and histograms live in prometheus_client's default registry of each shard process
(:func:`render_local`). ``/metrics`` on any shard asks every shard for its text and adds them up
(:mod:`cachedaemon.server.metrics_merge`), so a scrape covers the whole daemon. The cache gauges
(bytes, objects, reserved, limits) and the hit/miss/trim counters are the daemon's, not a
shard's: they come from a snapshot of shard 0's cache stats taken by the scraping shard just
before rendering (:func:`set_cache_snapshot`), kept in a registry of their own
(:func:`render_cache`) so they are counted once. Route labels are route templates, never keys.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cachedaemon.core.scheduling import all_schedulers

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)



class RequestStats(Collector):
    """``cachedaemon_http_requests_total{method,route,status}`` and
    ``cachedaemon_http_request_duration_seconds{method,route}``, kept as plain numbers.

    Recording one request is a dict lookup, a bisect and three additions: every request pays
    it, and a shard process has one loop, so prometheus_client's per-sample locks and label
    lookups (a few µs a request) buy nothing here. Rendered like any collector at scrape time.
    """

    def __init__(self, buckets: tuple[float, ...] = _BUCKETS) -> None:
        self.bounds = buckets
        self.counts: dict[tuple[str, str, int], int] = {}
        # (method, route) -> [count per bucket (+Inf last), sum of seconds]
        self.durations: dict[tuple[str, str], list[float]] = {}

    def record(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        hist = self.durations.get((method, route))
        if hist is None:
            hist = self.durations[(method, route)] = [0.0] * (len(self.bounds) + 2)
        hist[bisect.bisect_left(self.bounds, elapsed)] += 1
        hist[-1] += elapsed

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("cachedaemon_http_requests", "HTTP requests served.",
                                       labels=["method", "route", "status"])
        for (method, route, status), total in sorted(self.counts.items()):
            requests.add_metric([method, route, str(status)], total)
        yield requests
        durations = HistogramMetricFamily(
            "cachedaemon_http_request_duration_seconds",
            "HTTP request latency (until the handler returned).", labels=["method", "route"])
        for (method, route), hist in sorted(self.durations.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, math.inf), hist[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            durations.add_metric([method, route], buckets, hist[-1])
        yield durations


REQUEST_STATS = RequestStats()
REGISTRY.register(REQUEST_STATS)
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
FORWARDED = Counter("cachedaemon_http_forwarded_requests",
                    "Domain requests handed to the domain's owner shard by the shard that "
                    "accepted them.")
HOTSET_PUBLISHES = Counter("cachedaemon_cache_hotset_publishes",
                           "Hot sets published to .cachedaemon/hotset/<node_id>.")
HOTSET_PUBLISH_FAILURES = Counter("cachedaemon_cache_hotset_publish_failures",
                                  "Hot set publishes that failed (tried again next interval).")
WARMUPS = Counter("cachedaemon_cache_warmups", "Warm-ups started (at start or asked for).")
WARM_BYTES = Counter("cachedaemon_cache_warm_bytes",
                     "Bytes warm-ups fetched into the cache from published hot sets.")
STREAM_THROUGH = Counter("cachedaemon_cache_stream_through",
                         "Miss GETs streamed without caching (object could not fit).")


class _SchedulerCollector(Collector):
    """The CPU scheduler's figures (core/scheduling), summed over this process's loops."""

    def collect(self) -> Iterator[Metric]:
        scheds = all_schedulers()
        yield CounterMetricFamily(
            "cachedaemon_background_paused_seconds",
            "Time the metastore's work (kv and L1 requests, flushes, compactions) paused so "
            "that object requests got their share of the shard (metastore.cpu_share).",
            value=sum(s.slept_s for s in scheds))
        yield CounterMetricFamily(
            "cachedaemon_background_busy_seconds",
            "Shard loop time the metastore's work took while object requests were in flight.",
            value=sum(s.charged_s for s in scheds))


REGISTRY.register(_SchedulerCollector())


class _CacheCollector(Collector):
    """Gauges from the latest snapshot of the cache's stats (shard 0's accounting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: dict[str, int] = {}
        self._insight: dict[str, Any] = {}

    def set(self, snapshot: dict[str, int]) -> None:
        with self._lock:
            self._snapshot = dict(snapshot)

    def set_insight(self, insight: dict[str, Any]) -> None:
        with self._lock:
            self._insight = dict(insight)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = dict(self._snapshot)
            insight = dict(self._insight)
        yield from _insight_metrics(insight)
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


def _insight_metrics(insight: dict[str, Any]) -> Iterator[Metric]:
    """Issue 18's figures from ``CacheService.mrc()``: the curve, evictions by reason, stale
    reservations."""
    if not insight:
        return
    g = GaugeMetricFamily("cachedaemon_cache_mrc_hit_ratio",
                          "Byte hit ratio the cache would have at size_bytes (the miss-ratio "
                          "curve, SHARDS-sampled from the reads so far).", labels=["size_bytes"])
    for size, ratio in zip(insight.get("sizes", []), insight.get("hit_ratios", []),
                           strict=False):
        g.add_metric([str(size)], float(ratio))
    yield g
    g = GaugeMetricFamily("cachedaemon_cache_mrc_samples",
                          "Sampled reads the miss-ratio curve rests on.")
    g.add_metric([], float(insight.get("samples", 0)))
    yield g
    c = CounterMetricFamily("cachedaemon_cache_evictions",
                            "Cache entries removed, by reason (lru_trim, walk_trim, "
                            "exhaustive_trim, manual_drop, replaced, deleted, vanished, "
                            "abandoned).", labels=["reason"])
    for reason, n in sorted(insight.get("evictions", {}).items()):
        c.add_metric([reason], float(n))
    yield c
    g = GaugeMetricFamily("cachedaemon_cache_stale_reservations",
                          "Reservations held longer than cache.reservation_warn_age (each is "
                          "logged once with its owner): a leak detector.")
    g.add_metric([], float(insight.get("stale_reservations", 0)))
    yield g


def set_cache_insight(insight: dict[str, Any]) -> None:
    CACHE_COLLECTOR.set_insight(insight)


CACHE_COLLECTOR = _CacheCollector()
CACHE_REGISTRY = CollectorRegistry(auto_describe=True)
CACHE_REGISTRY.register(CACHE_COLLECTOR)


def set_cache_snapshot(snapshot: dict[str, Any]) -> None:
    CACHE_COLLECTOR.set({k: int(v) for k, v in snapshot.items() if isinstance(v, int | float)})


def registry() -> CollectorRegistry:
    return REGISTRY


def render_local() -> str:
    """This shard process's own metrics."""
    return generate_latest(REGISTRY).decode()


def render_cache() -> str:
    """The cache's figures from the latest snapshot (the scraping shard's)."""
    return generate_latest(CACHE_REGISTRY).decode()
