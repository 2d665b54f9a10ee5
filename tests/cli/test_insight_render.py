"""How the CLI shows issue 18's answers: the miss-ratio chart, explain, reservations."""

from __future__ import annotations

from cachedaemon.cli.insight import (
    BLOCKS,
    format_explain,
    format_reservations,
    render_mrc,
)
from cachedaemon.client import Explanation, MissRatioCurve, Reservations

MiB = 1024 * 1024


def curve(ratios: list[float], max_bytes: int = 64 * MiB) -> MissRatioCurve:
    sizes = [max_bytes * (i + 1) // 8 for i in range(len(ratios))]
    return MissRatioCurve.from_json({
        "enabled": True, "max_bytes": max_bytes, "sizes": sizes, "hit_ratios": ratios,
        "sample_rate": 0.01, "samples": 1234, "reads": 100_000, "sampled_keys": 99})


def test_chart_columns_follow_the_curve() -> None:
    ratios = [i / 31 for i in range(32)]  # a straight line from 0 to 1
    lines = render_mrc(curve(ratios), height=10, column_width=2)
    chart = [ln for ln in lines if "│" in ln or "┤" in ln]
    assert len(chart) == 10
    body = [ln.split("┤", 1)[1] if "┤" in ln else ln.split("│", 1)[1] for ln in chart]
    # Column heights grow left to right: count the full blocks per column.
    heights = []
    for col in range(32):
        cells = [row[2 * col] if len(row) > 2 * col else " " for row in body]
        heights.append(sum(1.0 if c == "█" else (BLOCKS.index(c) + 1) / 8 if c in BLOCKS
                           else 0.0 for c in cells))
    assert heights == sorted(heights)
    assert heights[0] == 0 and heights[-1] == 10
    assert abs(heights[15] - 10 * 15 / 31) <= 1 / 8 + 1e-9
    text = "\n".join(lines)
    assert "100%" in text and "0%" in text
    assert "64.0 MiB" in text and "now" in text  # the current size is marked
    assert "1,234 of 100,000 reads" in text


def test_chart_of_a_disabled_or_empty_curve() -> None:
    off = MissRatioCurve.from_json({"enabled": False})
    assert "off" in render_mrc(off)[0]
    empty = curve([0.0] * 32)
    empty = MissRatioCurve.from_json({**empty.raw, "samples": 0})
    assert any("no reads sampled yet" in ln for ln in render_mrc(empty))


def test_explain_lines() -> None:
    cached = format_explain(Explanation.from_json({
        "key": "a/b", "state": "cached",
        "cached": {"size": 3 * MiB, "last_access": 1000.0, "lru_position": 0.25,
                   "bytes_before": 10 * MiB},
        "in_progress": [], "evicted": None}), now=1060.0)
    assert cached[0] == "a/b: cached"
    assert any("3.0 MiB" in ln for ln in cached)
    assert any("1m ago" in ln for ln in cached)
    assert any("25%" in ln and "10.0 MiB" in ln for ln in cached)

    busy = format_explain(Explanation.from_json({
        "key": "k", "state": "in_progress", "cached": None,
        "in_progress": [{"shard": 1, "since": 995.0, "bytes": 2048, "kind": "fill"}],
        "evicted": None}), now=1000.0)
    assert busy[0] == "k: in progress"
    assert any("shard 1" in ln and "5s" in ln and "2.0 KiB" in ln for ln in busy)

    gone = format_explain(Explanation.from_json({
        "key": "k", "state": "absent", "cached": None, "in_progress": [],
        "evicted": {"at": 400.0, "reason": "lru_trim", "size": 100,
                    "description": "trimmed: least recently used when the cache needed space"},
        "log_since": 100.0}), now=1000.0)
    assert gone[0] == "k: absent"
    assert any("10m ago" in ln and "least recently used" in ln for ln in gone)

    never = format_explain(Explanation.from_json({
        "key": "k", "state": "absent", "cached": None, "in_progress": [], "evicted": None,
        "log_since": 100.0}), now=1000.0)
    assert any("not evicted in the last 15m" in ln for ln in never)


def test_reservation_table() -> None:
    res = Reservations.from_json({
        "reservations": [{"id": 7, "shard": 1, "class": "write", "bytes": MiB, "objects": 1,
                          "age_s": 400.0, "owner": "PUT a/b", "stale": True}],
        "waiters": [{"shard": 0, "class": "read", "bytes": 4096, "objects": 1,
                     "age_s": 0.5, "deadline_s": 0.05, "owner": "GET c"}],
        "stale": 1, "warn_age_s": 300.0})
    lines = format_reservations(res)
    assert lines[0].split() == ["id", "shard", "class", "bytes", "objects", "age", "owner"]
    assert "PUT a/b" in lines[1] and "1.0 MiB" in lines[1] and "stale" in lines[1]
    assert any("GET c" in ln and "50ms" in ln for ln in lines)
    assert any("1 held longer than 5m" in ln for ln in lines)
