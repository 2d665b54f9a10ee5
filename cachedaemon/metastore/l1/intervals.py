"""Inclusive offset intervals ``(base, last)`` kept as sorted, disjoint, non-adjacent tuples.

Used for a partition's cleaned ranges (compaction state). Pure functions; any shard.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]


def normalize(ranges: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sorted, with overlapping or adjacent intervals merged."""
    out: list[Interval] = []
    for base, last in sorted(ranges):
        if out and base <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((base, last))
    return tuple(out)


def add(ranges: Iterable[Interval], extra: Interval) -> tuple[Interval, ...]:
    return normalize([*ranges, extra])


def subtract(ranges: Iterable[Interval], cut: Interval) -> tuple[Interval, ...]:
    """``ranges`` minus the offsets of ``cut``."""
    out: list[Interval] = []
    cb, cl = cut
    for base, last in ranges:
        if last < cb or base > cl:
            out.append((base, last))
            continue
        if base < cb:
            out.append((base, cb - 1))
        if last > cl:
            out.append((cl + 1, last))
    return tuple(out)


def clip_below(ranges: Iterable[Interval], start: int) -> tuple[Interval, ...]:
    """Drop offsets below ``start``."""
    return tuple((max(b, start), last) for b, last in ranges if last >= start)


def complement(ranges: Iterable[Interval], lo: int, hi: int) -> tuple[Interval, ...]:
    """The offsets of ``[lo, hi]`` not in ``ranges`` (``hi < lo`` means an empty span)."""
    out: list[Interval] = []
    at = lo
    for base, last in normalize(ranges):
        if last < at:
            continue
        if base > hi:
            break
        if base > at:
            out.append((at, base - 1))
        at = max(at, last + 1)
    if at <= hi:
        out.append((at, hi))
    return tuple(out)
