"""MissRatioCurve: the byte-weighted hit ratio the cache would have at other sizes (shard 0).

Computed online from the cache's reads with **SHARDS** (Waldspurger, Park, Garthwaite and
Ahmad, "Efficient MRC Construction with SHARDS", FAST '15): spatially hashed sampling, reuse
distances from a Fenwick tree over reference times, and the fixed-size variant that bounds
memory. Two changes make it fit a *byte*-weighted curve of a skewed workload:

**Sampling in proportion to size.** A key is sampled when its hash ``u`` (uniform in
``[0, 1)``) is below ``R * size / S``: ``R`` is the rate (``cache.mrc_sample_rate``) and ``S``
the reference object size, the mean size of the first :data:`CALIBRATION` references (then
fixed, so a key's fate never changes while its size does not). A sampled reference stands for
``1/p`` of its kind, ``p = min(1, R * size / S)``, so every sampled object weighs ``S / R``
bytes whatever its size: the estimate's variance is that of a count, not of a sum of sizes
that range over orders of magnitude. (Objects of ``S / R`` bytes or more are always sampled.)

**Reuse distance.** Between two references of a sampled key, every distinct sampled key
referenced counts ``S / R`` bytes (its own size if always sampled): that estimates the bytes
of all distinct keys referenced. The reference's distance is that plus its own size, and it
hits in an LRU cache of ``C`` bytes exactly when the distance is at most ``C`` (LRU holds the
longest prefix of the recency stack that fits). The curve is the histogram of distances, each
sampled reference weighted by the bytes it stands for; first references are misses at every
size.

**Correction for hot keys** (the paper's ``SHARDS_adj``, generalised). A spatial sample holds
a key with all of its references or none, so with skewed popularity a few hot keys decide
what the sample stands for: the bytes it stands for differ from the bytes actually read
(:attr:`MissRatioCurve.bytes_requested`, counted for every reference) by ``D``. The paper puts
``D`` at distance zero, which is right when the missing mass is the hottest keys of a Zipf
workload and wrong for a loop or a scan with a hot set, where it belongs at long distances.
Here ``D`` is spread over the sampled references in proportion to ``n**2 * (1 - p)``, ``n``
being the count of references of the key so far: the share a key has in the estimate's
variance (which grows as ``n**2``) weighted once more towards the hottest keys, whose
distances the unsampled hot keys share. On a loop this is the plain ratio estimate, on Zipf
nearly the paper's, on a scan with a hot set the hot keys' own distances.

**Fixed size** (the paper's section 3.3): at most ``max_keys`` sampled keys are tracked. A key
has priority ``u * S / size``; it is sampled while that is below ``R``. When a new sampled key
would exceed ``max_keys``, the key with the highest priority is dropped and ``R`` lowered to
it, so the rate falls and memory stays bounded whatever the key space. References counted
earlier keep the weight they were counted with.

**Data structures.** Two Fenwick trees over reference times
(:class:`~cachedaemon.cache.fenwick.FenwickTree`): one counts sampled keys (each weighing
``S / R``), one holds the sizes of those always sampled. Each tracked key sits at the position
of its latest reference, so a tracked reference costs two prefix sums and four updates, all
O(log n). Positions are renumbered densely (O(n)) when they run out, at most once per
``max_keys`` references. Histograms have 64 buckets per doubling of distance (1.1 % wide); a
ratio interpolates inside its bucket.

**Cost.** A reference of an unsampled key costs a hash (cached in the ``str`` by the built-in
``hash``), two multiplications and a comparison: the caller does that filter inline
(:attr:`threshold`, :attr:`mask`, :attr:`reference_bytes`, ``hash``) and then calls
:meth:`reference`. Memory: ~250 bytes per tracked key plus the key string; ``max_keys =
8192`` is ~3 MiB.

**Accuracy.** ``tests/cache/test_mrc.py`` holds it to a mean absolute error of at most 0.02
against an exact LRU simulation on four synthetic traces at a 1 % rate; the error shrinks as
references accumulate (the figures are in ``docs/cache.md``), which is why the snapshot says
how many samples it rests on.

Owned by shard 0's cache coordinator and touched only on its loop. Plain data out
(:class:`CurveSnapshot`), so other shards get it by message.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cachedaemon.cache.fenwick import FenwickTree

#: log2 of the space a key's sampling hash is taken in.
HASH_BITS = 24
HASH_SPACE = 1 << HASH_BITS
#: Histogram buckets per doubling of the reuse distance.
BUCKETS_PER_OCTAVE = 64
#: References whose mean size becomes the reference object size ``S``.
CALIBRATION = 1024


@dataclass(frozen=True)
class CurveSnapshot:
    """What :meth:`MissRatioCurve.snapshot` reports (plain data: it crosses shards)."""

    sizes: tuple[int, ...]
    hit_ratios: tuple[float, ...]
    sample_rate: float  # the current rate R
    reference_bytes: int  # S (0 while calibrating)
    samples: int  # sampled references counted
    sampled_keys: int
    references: int  # every read reference counted
    bytes_requested: int  # the bytes those references asked for


class _Key:
    __slots__ = ("full", "pos", "prio", "refs", "size")

    def __init__(self, prio: float, pos: int, size: int, full: bool) -> None:
        self.prio = prio  # u * S / size: sampled while below R
        self.pos = pos
        self.size = size
        self.full = full  # always sampled (p = 1): it weighs its own size
        self.refs = 0  # read references so far


class MissRatioCurve:
    """See the module docstring. ``hash_fn`` maps a key to an integer, of which the low
    :data:`HASH_BITS` bits are used: the daemon uses the built-in ``hash`` (cached in the
    string); tests pass a seeded one to be repeatable. ``reference_bytes`` fixes ``S``
    instead of calibrating it."""

    def __init__(self, rate: float, max_keys: int, *, reference_bytes: int | None = None,
                 hash_fn: Callable[[str], int] = hash) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"a sampling rate is in (0, 1], not {rate}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.hash = hash_fn
        self.mask = HASH_SPACE - 1
        self.max_keys = max_keys
        #: ``R * 2**24``: a key is sampled when ``hash & mask`` times :attr:`reference_bytes`
        #: is below ``threshold`` times its size.
        self.threshold = rate * HASH_SPACE
        #: ``S``; 0 while calibrating (nothing is sampled then).
        self.reference_bytes = 0 if reference_bytes is None else max(1, reference_bytes)
        self._calibration = [0, 0]  # references, bytes
        self._keys: dict[str, _Key] = {}
        self._full: set[str] = set()  # keys with p = 1
        self._heap: list[tuple[float, str]] = []  # (-priority, key)
        self._capacity = max(1024, 4 * max_keys)
        self._counts = FenwickTree(self._capacity)  # sampled keys with p < 1: 1 each
        self._bytes = FenwickTree(self._capacity)  # keys with p = 1: their size
        self._clock = 0
        self._hist: dict[int, float] = {}  # bucket -> bytes the sampled references stand for
        self._sampled_weight = 0.0  # all of it, first references included
        self._var: dict[int, float] = {}  # bucket -> share of the correction
        self._var_cold = 0.0
        self.samples = 0
        self.references = 0
        self.bytes_requested = 0

    @property
    def rate(self) -> float:
        return self.threshold / HASH_SPACE

    @property
    def calibration_references(self) -> int:
        """References seen while measuring ``S`` (not in :attr:`references`: none of them
        was sampled)."""
        return self._calibration[0]

    @property
    def sampled_keys(self) -> int:
        return len(self._keys)

    def sampled(self, key: str, size: int) -> bool:
        """The filter (callers on a hot path inline it)."""
        return (self.hash(key) & self.mask) * self.reference_bytes < self.threshold * size

    def count(self, nbytes: int) -> None:
        """One read of ``nbytes`` happened, sampled or not (what the correction compares the
        sample with). While calibrating, it also measures the reference size."""
        if not self.reference_bytes:
            self._calibrate(nbytes)
            return
        self.references += 1
        self.bytes_requested += nbytes

    def _calibrate(self, nbytes: int) -> None:
        cal = self._calibration
        cal[0] += 1
        cal[1] += nbytes
        if cal[0] >= CALIBRATION:
            self.reference_bytes = max(1, cal[1] // cal[0])

    def access(self, key: str, size: int, weight: int | None = None) -> None:
        """A reference of ``key`` (``size`` bytes now) that asked for ``weight`` bytes
        (default ``size``; 0 for one that is not a read, such as a PUT's: it moves the key
        to the front without counting as a hit or a miss)."""
        w = size if weight is None else weight
        if not self.reference_bytes:
            if w:
                self._calibrate(w)
            return
        if w:
            self.references += 1
            self.bytes_requested += w
        if self.sampled(key, size):
            self.reference(key, size, w)

    def access_many(self, items: Iterable[tuple[str, int]]) -> None:
        """Reads ``(key, size)`` of whole objects: :meth:`access` with the filter inline."""
        hash_, mask = self.hash, self.mask
        for key, size in items:
            if not self.reference_bytes:
                self._calibrate(size)
                continue
            self.references += 1
            self.bytes_requested += size
            if (hash_(key) & mask) * self.reference_bytes < self.threshold * size:
                self.reference(key, size, size)

    def reference(self, key: str, size: int, weight: int) -> None:
        """Track a reference of ``key``. REQUIRES: :meth:`count` was called for it if it is a
        read (``weight``); keys that are not sampled are ignored here too."""
        s_ref = self.reference_bytes
        if not s_ref or size <= 0:
            return
        u = (self.hash(key) & self.mask) / HASH_SPACE
        prio = u * s_ref / size
        rate = self.rate
        if prio >= rate:
            self.forget(key)  # not (or no longer, at this size) sampled
            return
        p = min(1.0, rate * size / s_ref)
        full = p >= 1.0
        rec = self._keys.get(key)
        if rec is not None and weight:
            rec.refs += 1
            scaled = weight / p
            b = _bucket(self._counts.suffix(rec.pos) * (s_ref / rate)
                        + self._bytes.suffix(rec.pos) + size)
            self._hist[b] = self._hist.get(b, 0.0) + scaled
            self._sampled_weight += scaled
            self._var[b] = self._var.get(b, 0.0) + rec.refs * rec.refs * (1.0 - p)
            self.samples += 1
        elif weight:
            scaled = weight / p
            self._sampled_weight += scaled
            self._var_cold += 1.0 - p
            self.samples += 1
        pos = self._next_pos()
        if rec is None:
            rec = self._keys[key] = _Key(prio, pos, size, full)
            rec.refs = 1 if weight else 0
            heapq.heappush(self._heap, (-prio, key))
            self._place(key, rec, +1)
            if len(self._keys) > self.max_keys:
                self._lower_rate()
            return
        self._place(key, rec, -1)
        if rec.prio != prio:
            rec.prio = prio
            heapq.heappush(self._heap, (-prio, key))
        rec.pos = pos
        rec.size = size
        rec.full = full
        self._place(key, rec, +1)

    def forget(self, key: str) -> None:
        """``key`` is gone (a DELETE, or it left the sample): its bytes leave later
        distances."""
        rec = self._keys.pop(key, None)
        if rec is not None:
            self._place(key, rec, -1)

    def _place(self, key: str, rec: _Key, sign: int) -> None:
        if rec.full:
            self._bytes.add(rec.pos, sign * rec.size)
            if sign > 0:
                self._full.add(key)
            else:
                self._full.discard(key)
        else:
            self._counts.add(rec.pos, sign)

    def _next_pos(self) -> int:
        if self._clock >= self._capacity:
            self._renumber()
        self._clock += 1
        return self._clock

    def _lower_rate(self) -> None:
        """Drop the sampled key with the highest priority (and any sharing it); the rate
        becomes that priority (the fixed-size variant). Keys that were always sampled and
        are no longer weigh ``S / R`` like the others from now on."""
        heap = self._heap
        while heap:
            neg, key = heap[0]
            rec = self._keys.get(key)
            if rec is None or rec.prio != -neg:
                heapq.heappop(heap)  # stale
                continue
            if len(self._keys) <= self.max_keys and -neg < self.rate:
                break
            heapq.heappop(heap)
            self.threshold = min(self.threshold, -neg * HASH_SPACE)
            self.forget(key)
        rate, s_ref = self.rate, self.reference_bytes
        for key in [k for k in self._full if rate * self._keys[k].size < s_ref]:
            rec = self._keys[key]
            self._place(key, rec, -1)
            rec.full = False
            self._place(key, rec, +1)

    def _renumber(self) -> None:
        """Positions ran out: give the tracked keys positions ``1..n`` in reference order."""
        recs = sorted(self._keys.values(), key=lambda r: r.pos)
        for i, rec in enumerate(recs, start=1):
            rec.pos = i
        self._counts = FenwickTree.from_values(
            self._capacity, [(r.pos, 1) for r in recs if not r.full])
        self._bytes = FenwickTree.from_values(
            self._capacity, [(r.pos, r.size) for r in recs if r.full])
        self._clock = len(recs)
        if len(self._heap) > 2 * len(self._keys) + 64:
            self._heap = [(-r.prio, k) for k, r in self._keys.items()]
            heapq.heapify(self._heap)

    # --- the curve ----------------------------------------------------------------------------

    def hit_ratios(self, sizes: Sequence[int]) -> list[float]:
        """The byte-weighted hit ratio an LRU cache of each of ``sizes`` bytes would have had
        over the reads seen so far (0.0 before any was sampled)."""
        total = self.bytes_requested
        if total <= 0 or self._sampled_weight <= 0:
            return [0.0 for _ in sizes]
        hist = sorted(self._hist.items())
        var = sorted(self._var.items())
        var_total = sum(w for _, w in var) + self._var_cold
        correction = total - self._sampled_weight
        out: list[float] = []
        for size in sizes:
            hits = _below(hist, size)
            if var_total > 0:
                hits += correction * _below(var, size) / var_total
            else:  # nothing to weigh it by: in proportion
                hits *= total / self._sampled_weight
            out.append(min(1.0, max(0.0, hits / total)))
        return out

    def snapshot(self, sizes: Sequence[int]) -> CurveSnapshot:
        return CurveSnapshot(
            sizes=tuple(sizes), hit_ratios=tuple(self.hit_ratios(sizes)),
            sample_rate=self.rate, reference_bytes=self.reference_bytes,
            samples=self.samples, sampled_keys=len(self._keys), references=self.references,
            bytes_requested=self.bytes_requested)


def _bucket(distance: float) -> int:
    return int(math.log2(distance) * BUCKETS_PER_OCTAVE) if distance >= 1.0 else 0


def _below(buckets: list[tuple[int, float]], size: int) -> float:
    """The weight of ``buckets`` (sorted) at distances up to ``size``, interpolating inside
    the bucket ``size`` falls in."""
    if size <= 0:
        return 0.0
    edge = math.log2(size) * BUCKETS_PER_OCTAVE
    out = 0.0
    for b, w in buckets:
        if b + 1 <= edge:
            out += w
        elif b <= edge:
            lo = 2.0 ** (b / BUCKETS_PER_OCTAVE)
            hi = 2.0 ** ((b + 1) / BUCKETS_PER_OCTAVE)
            out += w * (size - lo) / (hi - lo)
        else:
            break
    return out


def curve_sizes(max_bytes: int, points: int = 32, low: float = 0.125, high: float = 4.0
                ) -> list[int]:
    """``points`` cache sizes evenly spread from ``low`` to ``high`` times ``max_bytes``
    (by default every eighth of the limit, from an eighth to four times)."""
    if points < 2:
        return [max(1, int(max_bytes * high))]
    step = (high - low) / (points - 1)
    return [max(1, int(max_bytes * (low + i * step))) for i in range(points)]
