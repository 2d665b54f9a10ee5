"""Synthetic access traces and exact LRU answers, for the miss-ratio curve's accuracy tests.

A trace is a list of ``(key, size)`` references (the GETs a cache sees). The four shapes of
issue 18: Zipf with exponent 0.8 and 1.1 over a key space, a loop over more bytes than the
cache holds, and a sequential scan of never-repeated keys mixed with a small hot set.
Deterministic for a seed.

The exact answers come from two independent places:

* :func:`lru_simulation`: a plain byte-bounded LRU cache (``OrderedDict``) per size — insert
  on a miss, evict least recently used entries until the total fits (an object larger than
  the cache leaves it empty): the byte-weighted hit ratio. Simple and obviously right, but it
  costs one pass per size.
* :func:`exact_curve`: one pass that computes every reference's exact reuse distance in bytes
  (bytes of the distinct keys referenced since its previous reference, plus its own size) with
  a Fenwick tree over reference times; a reference hits in a cache of ``C`` bytes exactly when
  that distance is at most ``C`` (LRU's inclusion property: the cache holds the longest prefix
  of the recency stack that fits). A test checks the two agree; the accuracy tests use the fast
  one for their 100k-reference traces.

Test support only.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import random
from collections.abc import Iterable, Sequence

Trace = list[tuple[str, int]]


def _sizes(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    """``n`` object sizes, log-uniform between ``lo`` and ``hi`` bytes."""
    span = hi / lo
    return [int(lo * span ** rng.random()) for _ in range(n)]


def zipf(alpha: float, n_keys: int, n_refs: int, seed: int, *, lo: int = 1024,
         hi: int = 64 * 1024) -> Trace:
    """``n_refs`` references to ``n_keys`` keys, popularity Zipf(``alpha``); key ranks are
    shuffled against their sizes."""
    rng = random.Random(seed)
    sizes = _sizes(rng, n_keys, lo, hi)
    weights = [1.0 / (rank + 1) ** alpha for rank in range(n_keys)]
    cum = list(itertools.accumulate(weights))
    order = list(range(n_keys))
    rng.shuffle(order)
    total = cum[-1]
    refs: Trace = []
    for _ in range(n_refs):
        rank = bisect.bisect_left(cum, rng.random() * total)
        key = order[min(rank, n_keys - 1)]
        refs.append((f"z/{key}", sizes[key]))
    return refs


def loop(n_keys: int, n_refs: int, seed: int, *, lo: int = 1024, hi: int = 64 * 1024
         ) -> Trace:
    """The same ``n_keys`` keys referenced in the same order over and over."""
    rng = random.Random(seed)
    sizes = _sizes(rng, n_keys, lo, hi)
    return [(f"l/{i % n_keys}", sizes[i % n_keys]) for i in range(n_refs)]


def scan_with_hot_set(hot_keys: int, hot_share: float, n_refs: int, seed: int, *,
                      lo: int = 1024, hi: int = 64 * 1024) -> Trace:
    """A fraction ``hot_share`` of references to a small hot set (uniform), the rest a
    sequential scan of keys never seen again."""
    rng = random.Random(seed)
    hot_sizes = _sizes(rng, hot_keys, lo, hi)
    refs: Trace = []
    scanned = 0
    for _ in range(n_refs):
        if rng.random() < hot_share:
            k = rng.randrange(hot_keys)
            refs.append((f"h/{k}", hot_sizes[k]))
        else:
            refs.append((f"s/{scanned}", _sizes(rng, 1, lo, hi)[0]))
            scanned += 1
    return refs


def distinct_bytes(trace: Iterable[tuple[str, int]]) -> int:
    """Bytes of the distinct keys of ``trace`` (last size seen)."""
    return sum(dict(trace).values())


def lru_simulation(trace: Sequence[tuple[str, int]], capacity: int) -> float:
    """Byte-weighted hit ratio of ``trace`` on an LRU cache of ``capacity`` bytes."""
    cache: collections.OrderedDict[str, int] = collections.OrderedDict()
    used = hit_bytes = total_bytes = 0
    for key, size in trace:
        total_bytes += size
        old = cache.get(key)
        if old is not None:
            if old == size:
                hit_bytes += size
            cache.move_to_end(key)
            used -= old
        cache[key] = size
        used += size
        while used > capacity:
            _, evicted = cache.popitem(last=False)
            used -= evicted
    return hit_bytes / total_bytes if total_bytes else 0.0


def reuse_distances(trace: Sequence[tuple[str, int]]) -> list[tuple[float, int]]:
    """Every reference's exact byte reuse distance (``inf`` the first time) and its size."""
    n = len(trace)
    tree = [0] * (n + 1)
    live = 0
    last: dict[str, tuple[int, int]] = {}
    out: list[tuple[float, int]] = []

    def add(i: int, delta: int) -> None:
        while i <= n:
            tree[i] += delta
            i += i & -i

    def prefix(i: int) -> int:
        s = 0
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    for t, (key, size) in enumerate(trace, start=1):
        prev = last.get(key)
        if prev is None or prev[1] != size:
            out.append((float("inf"), size))
        else:
            out.append((float(live - prefix(prev[0]) + size), size))
        if prev is not None:
            add(prev[0], -prev[1])
            live -= prev[1]
        add(t, size)
        live += size
        last[key] = (t, size)
    return out


def exact_curve(trace: Sequence[tuple[str, int]], capacities: Sequence[int]) -> list[float]:
    """Byte-weighted LRU hit ratios of ``trace`` at each capacity, from one pass."""
    dists = reuse_distances(trace)
    total = sum(size for _, size in dists)
    finite = sorted((d, size) for d, size in dists if d != float("inf"))
    keys = [d for d, _ in finite]
    cum = list(itertools.accumulate(size for _, size in finite))
    out = []
    for c in capacities:
        i = bisect.bisect_right(keys, c)
        out.append((cum[i - 1] if i else 0) / total)
    return out
