"""Adding up the metrics of several shard processes into one Prometheus exposition.

Every shard process keeps its own prometheus_client registry. ``/metrics`` on any shard asks
every shard for its exposition text and :func:`merge` adds them up: samples with the same name
and labels are summed (counters, histogram buckets, sums and counts, and gauges such as open
connections, which are per-shard parts of a daemon-wide figure). The process collector's
families (``process_*``, ``python_*``) describe one process each, so they are kept apart with a
``shard`` label instead of summed. Pure; runs on the shard that serves the scrape.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

#: Families that describe one process: labelled by shard, never summed.
PER_PROCESS_PREFIXES = ("process_", "python_")


def merge(texts: Sequence[tuple[int, str]]) -> str:
    """One exposition from ``(shard, exposition text)`` pairs."""
    families: dict[str, tuple[str, str]] = {}  # name -> (type, help)
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for shard, text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, (family.type, family.documentation))
            per_process = family.name.startswith(PER_PROCESS_PREFIXES)
            bucket = samples.setdefault(family.name, {})
            for sample in family.samples:
                labels = dict(sample.labels)
                if per_process:
                    labels["shard"] = str(shard)
                key = (sample.name, tuple(sorted(labels.items())))
                bucket[key] = bucket.get(key, 0.0) + sample.value
    out: list[str] = []
    for name, (kind, doc) in families.items():
        out.append(f"# HELP {name} {_escape_help(doc)}")
        out.append(f"# TYPE {name} {kind}")
        for (sample_name, label_pairs), value in samples[name].items():
            out.append(f"{sample_name}{_labels(label_pairs)} {_value(value)}")
    return "\n".join(out) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    parts = [f'{k}="{_escape_label(v)}"' for k, v in labels]
    return "{" + ",".join(parts) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)
