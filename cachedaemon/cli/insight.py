"""How the CLI shows what the daemon says about its cache (issue 18): the miss-ratio curve as
a chart drawn in the terminal (``cachedaemon stat --mrc``), why a key is or is not cached
(``cachedaemon explain``), who holds the space (``cachedaemon reservations``).

Pure functions from the client's values to lines of text; the commands print them. The chart
is block characters (``▁▂▃▄▅▆▇█``), one column per point of the curve, so it needs no colour
and survives being piped into a file or an issue report.
"""

from __future__ import annotations

import time

from cachedaemon.client import Explanation, MissRatioCurve, Reservations
from cachedaemon.units import format_size

#: Partial blocks, an eighth of a row each (the full one last).
BLOCKS = "▁▂▃▄▅▆▇█"


def _ago(seconds: float) -> str:
    """``75`` -> ``1m15s``: a short, human duration."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        m, s = divmod(int(seconds), 60)
        return f"{m}m{s}s" if s else f"{m}m"
    if seconds < 86400:
        h, m = divmod(int(seconds) // 60, 60)
        return f"{h}h{m}m" if m else f"{h}h"
    d, h = divmod(int(seconds) // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


def render_mrc(curve: MissRatioCurve, *, height: int = 12, column_width: int = 2) -> list[str]:
    """The curve as a chart: byte hit ratio (0-100 %) up, cache size across, the current size
    marked, and a line saying what it rests on."""
    if not curve.enabled:
        return ["miss-ratio curve: off (cache.mrc_sample_rate is 0)"]
    sizes, ratios = curve.sizes, curve.hit_ratios
    now = curve.hit_ratio_at(curve.max_bytes) if sizes else 0.0
    lines = [f"byte hit ratio the cache would have at each size (now {format_size(curve.max_bytes)}"
             f": {now:.1%})"]
    if not sizes or curve.samples == 0:
        lines.append("no reads sampled yet: the curve fills in as the cache serves reads")
        return lines
    label_w = 5
    for row in range(height - 1, -1, -1):
        lo = row / height
        cells = []
        for r in ratios:
            # How much of this row the column covers, in eighths of a row.
            eighths = min(8, max(0, round((r - lo) * height * 8)))
            cells.append((BLOCKS[eighths - 1] if eighths else " ") * column_width)
        top = (row + 1) / height
        label = f"{top:.0%}" if row in (height - 1, height // 2 - 1) else ""
        tick = "┤" if label else "│"
        lines.append(f"{label:>{label_w}}{tick}{''.join(cells).rstrip()}")
    width = len(sizes) * column_width
    lines.append(f"{'0%':>{label_w}}└{'─' * width}")
    # The x axis: the first size, the current one (marked) and the last, at their columns.
    marks = [" "] * (width + 1)
    here = min(range(len(sizes)), key=lambda i: abs(sizes[i] - curve.max_bytes))
    marks[here * column_width] = "^"
    lines.append(" " * (label_w + 1) + "".join(marks).rstrip())
    labels = [(0, format_size(sizes[0])), (here * column_width, f"{format_size(sizes[here])} now"),
              (width - column_width, format_size(sizes[-1]))]
    axis = [" "] * (width + 24)
    end = -1
    for col, text in labels:
        start = max(col - len(text) // 2, end + 2, 0)
        if start + len(text) > len(axis):
            start = len(axis) - len(text)
        if start <= end:
            continue
        axis[start:start + len(text)] = list(text)
        end = start + len(text)
    lines.append(" " * (label_w + 1) + "".join(axis).rstrip())
    lines.append(f"sampled {curve.samples:,} of {curve.reads:,} reads (rate "
                 f"{curve.sample_rate:.2%}); fewer than ~10,000 samples make a rough curve")
    return lines


def format_explain(expl: Explanation, *, now: float | None = None) -> list[str]:
    """Why a key is, or is not, in the cache, as lines."""
    now = time.time() if now is None else now
    raw = expl.raw
    lines = [f"{expl.key}: {expl.state.replace('_', ' ')}"]
    cached = raw.get("cached")
    if cached:
        lines.append(f"  size: {format_size(int(cached['size']))}")
        if cached.get("last_access") is not None:
            lines.append(f"  last access: {_ago(now - float(cached['last_access']))} ago")
        pos = float(cached.get("lru_position", 0.0))
        lines.append(f"  LRU position: {pos:.0%} from the eviction end; "
                     f"{format_size(int(cached.get('bytes_before', 0)))} would be evicted "
                     "before it")
    for job in raw.get("in_progress") or ():
        what = {"fill": "being filled", "write": "being written"}.get(
            str(job.get("kind")), "being staged")
        lines.append(f"  {what} on shard {job['shard']} for {_ago(now - float(job['since']))}, "
                     f"{format_size(int(job.get('bytes', 0)))} so far")
    evicted = raw.get("evicted")
    if evicted:
        tense = "was" if expl.state == "cached" else "is"
        lines.append(f"  evicted {_ago(now - float(evicted['at']))} ago: "
                     f"{evicted.get('description') or evicted['reason']} (it {tense} "
                     f"{format_size(int(evicted.get('size', 0)))})")
    elif expl.state == "absent":
        since = raw.get("log_since")
        reach = f" in the last {_ago(now - float(since))}" if since else ""
        lines.append(f"  not evicted{reach} (the eviction log's reach): never cached, or "
                     "read only by ranges or HEADs, which do not fill the cache")
    return lines


def format_reservations(res: Reservations) -> list[str]:
    """A table of live reservations, then the queued requests with their deadlines."""
    lines = [f"{'id':>6} {'shard':>5} {'class':<9} {'bytes':>10} {'objects':>7} {'age':>7}  owner"]
    for r in res.reservations:
        flag = "  (stale)" if r.get("stale") else ""
        lines.append(f"{r['id']:>6} {r['shard']:>5} {r['class']:<9} "
                     f"{format_size(int(r['bytes'])):>10} {r['objects']:>7} "
                     f"{_ago(float(r['age_s'])):>7}  {r.get('owner') or '-'}{flag}")
    if not res.reservations:
        lines.append("(no live reservations)")
    if res.waiters:
        lines.append("")
        lines.append(f"queued: {'shard':>5} {'class':<9} {'bytes':>10} {'objects':>7} "
                     f"{'waited':>7} {'deadline':>9}  owner")
        for w in res.waiters:
            lines.append(f"        {w['shard']:>5} {w['class']:<9} "
                         f"{format_size(int(w['bytes'])):>10} {w['objects']:>7} "
                         f"{_ago(float(w['age_s'])):>7} {_ago(float(w['deadline_s'])):>9}  "
                         f"{w.get('owner') or '-'}")
    if res.stale:
        warn = float(res.raw.get("warn_age_s", 0.0))
        lines.append(f"{res.stale} held longer than {_ago(warn)} (cache.reservation_warn_age)")
    return lines
