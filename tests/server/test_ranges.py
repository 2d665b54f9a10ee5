"""Range header parsing: the documented forms, the 416 cases, and fuzzing that it never raises
anything but InvalidRange and always returns a range inside the object."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.errors import InvalidRange
from cachedaemon.server.ranges import parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=2-", 10, (2, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes = 1 - 2", 10, (1, 2)),
        ("bytes=9-9", 10, (9, 9)),
        ("BYTES=0-1", 10, (0, 1)),  # the unit is case-insensitive
        ("Bytes=-2", 10, (8, 9)),
        ("items=0-1", 10, None),  # other unit: ignored
        ("bytes=0-1,3-4", 10, None),  # several ranges: whole object
        ("bytes=4-2", 10, None),  # invalid: ignored
        ("bytes=-", 10, None),
        ("garbage", 10, None),
    ],
)
def test_forms(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10),
                                              ("bytes=-0", 10), ("bytes=0-", 0),
                                              ("bytes=-5", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(InvalidRange) as info:
        parse_range(header, size)
    assert info.value.size == size


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), st.integers(0, 2**40))
def test_fuzz_text(header: str, size: int) -> None:
    try:
        r = parse_range(header, size)
    except InvalidRange:
        return
    if r is not None:
        assert 0 <= r[0] <= r[1] < size


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.integers(0, 2**64)), st.one_of(st.none(), st.integers(0, 2**64)),
       st.integers(0, 10**6))
def test_fuzz_numbers(a: int | None, b: int | None, size: int) -> None:
    header = f"bytes={'' if a is None else a}-{'' if b is None else b}"
    try:
        r = parse_range(header, size)
    except InvalidRange:
        assert (a is not None and a >= size) or (a is None and (b == 0 or size == 0))
        return
    if r is not None:
        first, last = r
        assert 0 <= first <= last < size
        if a is not None:
            assert first == a
            if b is not None:
                assert last == min(b, size - 1)
        elif b is not None:
            assert last == size - 1 and last - first + 1 == min(b, size)
