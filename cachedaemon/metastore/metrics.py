"""Prometheus figures of the metastore domains, per domain, read from every shard's service.

A collector registered once on prometheus_client's default registry; at scrape time it walks
:data:`~cachedaemon.metastore.service.SERVICES` (all shards) and reports each open domain's
counters. Reading plain int attributes of another shard's objects is safe under the GIL, and a
scrape sees each figure as it is at that moment. Counters restart from zero when a domain is
reopened (Prometheus handles counter resets).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cachedaemon.metastore.service import SERVICES


class DomainCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        writes = CounterMetricFamily("cachedaemon_domain_writes",
                                     "Acknowledged write batches.", labels=["domain"])
        write_bytes = CounterMetricFamily("cachedaemon_domain_write_bytes",
                                          "Bytes of acknowledged writes.", labels=["domain"])
        syncs = CounterMetricFamily("cachedaemon_domain_log_syncs",
                                    "Log group commits (fsyncs or bucket PUTs).",
                                    labels=["domain", "kind"])
        flushes = CounterMetricFamily("cachedaemon_domain_flushes",
                                      "Memtable flushes to SSTs.", labels=["domain"])
        compactions = CounterMetricFamily("cachedaemon_domain_compactions",
                                          "Compactions.", labels=["domain"])
        refreshes = CounterMetricFamily("cachedaemon_domain_refreshes",
                                        "Read-replica refreshes.", labels=["domain"])
        fenced = GaugeMetricFamily("cachedaemon_domain_fenced",
                                   "1 when a newer writer fenced this one.", labels=["domain"])
        last = GaugeMetricFamily("cachedaemon_domain_last_seqno", "Newest applied seqno.",
                                 labels=["domain"])
        persisted = GaugeMetricFamily("cachedaemon_domain_persisted_seqno",
                                      "Newest seqno in the bucket's manifest.", labels=["domain"])
        for service in list(SERVICES):
            for domain in service.domains():
                name = [domain.name]
                m = domain.metrics
                writes.add_metric(name, m.writes)
                write_bytes.add_metric(name, m.write_bytes)
                if domain.log is not None:
                    syncs.add_metric([domain.name, domain.log.kind], domain.log.stats.syncs)
                flushes.add_metric(name, domain.db.flushes)
                compactions.add_metric(name, domain.db.compactions)
                refreshes.add_metric(name, m.refreshes)
                fenced.add_metric(name, 1 if domain.fenced else 0)
                last.add_metric(name, domain.db.max_applied_seqno)
                persisted.add_metric(name, domain.db.max_persisted_seqno)
        yield from (writes, write_bytes, syncs, flushes, compactions, refreshes, fenced, last,
                    persisted)


_registered = False


def register() -> None:
    """Register the collector on the default registry (once per process)."""
    global _registered
    if not _registered:
        REGISTRY.register(DomainCollector())
        _registered = True
