"""The cache's space policy, as Redpanda's ``cache_service`` has it: the limits, the trim target,
over-commit (``may_exceed``) and the degraded disk.

Pure functions over plain numbers (no I/O, no state): the coordinator calls them on shard 0
with its counters and the last disk poll. See ``shared/reference/redpanda-behaviour.md`` §1 and
``docs/cache.md`` ("Space pressure").

* :func:`compute_limits`: ``usable = disk × (1 − disk_reservation_percent/100)``;
  ``max_bytes`` is the configured figure lowered to ``usable``, or ``max_bytes_percent`` of
  ``usable``; ``min_free_bytes`` unset is 2 % of the disk, at most 5 GiB.
* :func:`trim_target`: per dimension, the limit minus what queued requests want; the low
  watermark multiplies **only the dimension that is over** that target (``all_dims`` applies it
  to both: the admin's trim "to the low watermark"); a disk below ``min_free_bytes`` lowers the
  byte target to ``current − min_free_bytes``. Returned as what *committed* usage must come
  down to (the target minus what is reserved).
* :func:`may_exceed`: a request may take bytes over ``max_bytes`` (never objects over
  ``max_objects``) when puts are not blocked, the disk has more than 10× the request free and
  ``min_free_bytes`` left after it, and committed data (not other reservations) leaves no room.
* :func:`disk_degraded`: free space below ``min_free_bytes`` (0 turns the check off).
"""

from __future__ import annotations

from dataclasses import dataclass

from cachedaemon.config import CacheSettings

GiB = 1024**3
#: ``min_free_bytes`` when unset: this share of the disk ...
DEFAULT_MIN_FREE_FRACTION = 0.02
#: ... but never more than Redpanda's default (``storage_min_free_bytes``).
DEFAULT_MIN_FREE_CAP = 5 * GiB
#: Over-commit only while the disk has more than this many times the request free (Redpanda).
MAY_EXCEED_FREE_FACTOR = 10


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_objects: int
    min_free_bytes: int
    usable_bytes: int
    clamped: bool  # the configured max_bytes was lowered to the usable size


def compute_limits(settings: CacheSettings, disk_total: int) -> Limits:
    usable = int(disk_total * (1.0 - settings.disk_reservation_percent / 100.0))
    clamped = False
    if settings.max_bytes is not None:
        max_bytes = settings.max_bytes
        if 0 < usable < max_bytes:
            max_bytes, clamped = usable, True
    else:
        max_bytes = max(1, int(usable * settings.max_bytes_percent / 100.0))
    if settings.min_free_bytes is not None:
        min_free = settings.min_free_bytes
    else:
        min_free = min(DEFAULT_MIN_FREE_CAP, int(disk_total * DEFAULT_MIN_FREE_FRACTION))
    return Limits(max_bytes, settings.max_objects, min_free, usable, clamped)


@dataclass(frozen=True)
class Usage:
    """The coordinator's counters, in both dimensions."""

    current_bytes: int
    current_objects: int
    reserved_bytes: int
    reserved_objects: int
    pending_bytes: int
    pending_objects: int


def _targets(usage: Usage, limits: Limits, scale: float) -> tuple[int, int]:
    limit_b = int(limits.max_bytes * scale)
    limit_o = int(limits.max_objects * scale)
    return (limit_b - min(usage.pending_bytes, limit_b),
            limit_o - min(usage.pending_objects, limit_o))


def over_target(usage: Usage, limits: Limits, scale: float = 1.0) -> tuple[bool, bool]:
    """Which dimensions (bytes, objects) are over their target: the ones the low watermark
    applies to. A trim decides this once, at its start, as Redpanda's does."""
    target_b, target_o = _targets(usage, limits, scale)
    return (usage.current_bytes + usage.reserved_bytes > target_b,
            usage.current_objects + usage.reserved_objects > target_o)


def trim_target(
    usage: Usage, limits: Limits, free_bytes: int | None, *, watermark: float,
    over: tuple[bool, bool], scale: float = 1.0,
) -> tuple[int, int]:
    """What committed bytes and objects must come down to (never below 0). ``over`` names the
    dimensions the watermark applies to (:func:`over_target`, or both for the admin's trim);
    ``scale`` lowers the limits first (the background threshold trim)."""
    target_b, target_o = _targets(usage, limits, scale)
    if over[0]:
        target_b = int(target_b * watermark)
    if over[1]:
        target_o = int(target_o * watermark)
    goal_b = target_b - usage.reserved_bytes
    if disk_degraded(free_bytes, limits.min_free_bytes):
        # Critically low disk: go further, to ``current - min_free`` as Redpanda does (it leaves
        # room above the threshold, so the next poll does not find it short again at once).
        goal_b = min(goal_b, usage.current_bytes - limits.min_free_bytes)
    return max(0, goal_b), max(0, target_o - usage.reserved_objects)


def disk_degraded(free_bytes: int | None, min_free_bytes: int) -> bool:
    return free_bytes is not None and min_free_bytes > 0 and free_bytes < min_free_bytes


def may_exceed(
    usage: Usage, limits: Limits, free_bytes: int | None, nbytes: int, nobjects: int,
) -> bool:
    """Redpanda's ``may_exceed_limits`` (see the module docstring); the caller checks the
    setting, that puts are not blocked, and that a trim has just failed."""
    if free_bytes is None:
        return False
    return (
        free_bytes > MAY_EXCEED_FREE_FACTOR * nbytes
        and free_bytes - nbytes >= limits.min_free_bytes
        and usage.current_objects + usage.reserved_objects + nobjects <= limits.max_objects
        and usage.current_bytes + nbytes > limits.max_bytes
    )


def could_ever_exceed(limits: Limits, free_bytes: int | None, nbytes: int) -> bool:
    """Whether a request larger than ``max_bytes`` has any chance of an over-commit now."""
    return (
        free_bytes is not None
        and free_bytes > MAY_EXCEED_FREE_FACTOR * nbytes
        and free_bytes - nbytes >= limits.min_free_bytes
    )
