"""The query-string parser's fast path gives what ``parse_qsl(keep_blank_values=True)`` gives,
for any string (hypothesis), and its result feeds ``Query`` unchanged."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.server.http.request import Query, parse_query

# Strings made of the characters a query's structure is made of, and some others.
QUERY_TEXT = st.text(alphabet=st.sampled_from("ab=&%+;2F0 é?#x"), max_size=40)


@settings(max_examples=2000, deadline=None)
@given(QUERY_TEXT)
def test_parse_query_equals_parse_qsl(qs: str) -> None:
    assert parse_query(qs) == parse_qsl(qs, keep_blank_values=True)


def test_the_common_cases() -> None:
    assert parse_query("offset=42") == [("offset", "42")]
    assert parse_query("a=1&&b&c=") == [("a", "1"), ("b", ""), ("c", "")]
    assert parse_query("k=a%2Fb+c") == [("k", "a/b c")]  # decoded by parse_qsl
    q = Query(parse_query("x=1&x=2&y=3"))
    assert (q["x"], q.getall("x"), q["y"]) == ("1", ["1", "2"], "3")
