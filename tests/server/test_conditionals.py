"""RFC 9110 conditionals: ETag lists, strong and weak comparison, the §13.2.2 order, If-Range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedaemon.errors import PreconditionFailed
from cachedaemon.server.conditionals import (
    ANY,
    EntityTag,
    Outcome,
    evaluate,
    parse_etag_list,
    range_applies,
)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("*", ANY),
    (' * ', ANY),
    ('"a"', [EntityTag("a")]),
    ('W/"a"', [EntityTag("a", weak=True)]),
    ('"a", "b"', [EntityTag("a"), EntityTag("b")]),
    ('"a,b", W/"c"', [EntityTag("a,b"), EntityTag("c", weak=True)]),
    ('"a","b"', [EntityTag("a"), EntityTag("b")]),
    ("abc", [EntityTag("abc")]),  # unquoted, as some clients send
    ('"unterminated', []),
    ("", []),
])
def test_parse(value: str | None, expected: object) -> None:
    assert parse_etag_list(value) == expected


def test_if_match_compares_strongly_and_takes_lists() -> None:
    assert evaluate("GET", '"x", "e1"', None, "e1") is Outcome.PROCEED
    assert evaluate("PUT", "*", None, "e1") is Outcome.PROCEED
    with pytest.raises(PreconditionFailed):
        evaluate("GET", 'W/"e1"', None, "e1")  # a weak tag never matches strongly
    with pytest.raises(PreconditionFailed):
        evaluate("GET", '"x", "y"', None, "e1")
    with pytest.raises(PreconditionFailed):
        evaluate("PUT", "*", None, None)  # * needs an existing object


def test_if_none_match_is_304_on_get_and_head_412_otherwise() -> None:
    assert evaluate("GET", None, '"a", W/"e1"', "e1") is Outcome.NOT_MODIFIED  # weak compare
    assert evaluate("HEAD", None, "*", "e1") is Outcome.NOT_MODIFIED
    assert evaluate("GET", None, '"a"', "e1") is Outcome.PROCEED
    assert evaluate("GET", None, "*", None) is Outcome.PROCEED
    with pytest.raises(PreconditionFailed):
        evaluate("PUT", None, "*", "e1")
    assert evaluate("PUT", None, "*", None) is Outcome.PROCEED


def test_if_match_is_checked_before_if_none_match() -> None:
    with pytest.raises(PreconditionFailed):
        evaluate("GET", '"other"', '"e1"', "e1")


def test_if_range() -> None:
    assert range_applies(None, "e1")
    assert range_applies('"e1"', "e1")
    assert not range_applies('"e0"', "e1")
    assert not range_applies('W/"e1"', "e1")  # weak: never
    assert not range_applies("Sat, 05 Dec 2026 08:00:00 GMT", "e1")  # a date: whole object
    assert not range_applies('"e1"', None)


@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=20)))
def test_fuzz_never_raises_anything_else(value: str, etag: str | None) -> None:
    parsed = parse_etag_list(value)
    assert parsed is ANY or isinstance(parsed, list)
    for method in ("GET", "PUT"):
        try:
            evaluate(method, value, value, etag)
        except PreconditionFailed:
            pass
    range_applies(value, etag)
