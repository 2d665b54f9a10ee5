"""Adding up shard expositions: counters and histograms sum, per-process families get a shard
label, and the result parses back as valid Prometheus text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cachedaemon.server.metrics_merge import merge


def shard_text(requests: int, latency: list[float], conns: int) -> str:
    reg = CollectorRegistry()
    c = Counter("req", "Requests.", ["route"], registry=reg)
    c.labels('/v1/kv/{domain}/{key+}').inc(requests)
    c.labels("/healthz").inc(1)
    h = Histogram("lat_seconds", "Latency.", buckets=(0.01, 0.1), registry=reg)
    for v in latency:
        h.observe(v)
    Gauge("conns", "Open connections.", registry=reg).set(conns)
    Gauge("process_resident_memory_bytes", "RSS.", registry=reg).set(1000 + conns)
    return generate_latest(reg).decode()


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_histograms_and_gauges_add_up() -> None:
    merged = values(merge([(0, shard_text(3, [0.005, 0.05], 2)),
                           (1, shard_text(4, [0.5], 5))]))
    assert merged[("req_total", (("route", "/v1/kv/{domain}/{key+}"),))] == 7
    assert merged[("req_total", (("route", "/healthz"),))] == 2
    assert merged[("lat_seconds_count", ())] == 3
    assert merged[("lat_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("lat_seconds_bucket", (("le", "0.1"),))] == 2
    assert merged[("lat_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("conns", ())] == 7


def test_per_process_families_are_labelled_by_shard() -> None:
    merged = values(merge([(0, shard_text(1, [], 2)), (1, shard_text(1, [], 5))]))
    assert merged[("process_resident_memory_bytes", (("shard", "0"),))] == 1002
    assert merged[("process_resident_memory_bytes", (("shard", "1"),))] == 1005
    assert ("process_resident_memory_bytes", ()) not in merged
