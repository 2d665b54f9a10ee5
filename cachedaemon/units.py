"""Parsing and printing of sizes (``64KiB``) and durations (``500ms``), for config and the CLI.

Pure functions; raise :class:`ValueError` with a message fit to show a user (config wraps it
into a :class:`~cachedaemon.errors.ConfigError` naming the setting).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
# ASCII digits only: \d would take any script's digits (and str.isdigit() superscripts, which
# int() refuses).
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
#: The largest size accepted: a file's size is a signed 64-bit number everywhere we store one.
MAX_SIZE = 2**63 - 1


def parse_size(value: str | int) -> int:
    """Bytes from ``123``, ``64KiB``, ``10MiB``, ``2GiB`` (also ``KB``/``MB``/``GB`` = powers of 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        if value > MAX_SIZE:
            raise ValueError(f"size {value} is too large (at most {MAX_SIZE} bytes)")
        return value
    m = _NUMBER_UNIT.match(value)
    if m is None:
        raise ValueError(f"expected a size like 123, 64KiB, 10MiB or 2GiB, got {value!r}")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {value!r} (use B, KiB, MiB, GiB, TiB)")
    result = Fraction(number) * _SIZE_UNITS[unit]  # exact: 1.5KiB, and no float overflow
    if result.denominator != 1:
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    if result > MAX_SIZE:
        raise ValueError(f"size {value!r} is too large (at most {MAX_SIZE} bytes)")
    return int(result)


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``500ms``, ``5s``, ``1m``, ``2h``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _NUMBER_UNIT.match(value)
        if m is None:
            raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {value!r}")
        number, unit = m.group(1), m.group(2).lower()
        if unit == "":
            unit = "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown duration unit {m.group(2)!r} in {value!r} (use ms, s, m, h)")
        seconds = float(number) * _DURATION_UNITS[unit]
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration must be a finite, non-negative time, got {value!r}")
    return seconds


def format_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``: for people, not for parsing back."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60 or seconds % 60:
        return f"{seconds:g}s"
    if seconds % 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"
