"""Key decoding from raw paths, the route table's matching, and the OpenAPI document."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cachedaemon.server.handlers  # noqa: F401  (registers the routes)
from cachedaemon.errors import InvalidKey
from cachedaemon.server.keys import decode_key
from cachedaemon.server.openapi import build_spec
from cachedaemon.server.routes import ROUTES


@pytest.mark.parametrize(
    ("raw", "key"),
    [("a", "a"), ("a/b", "a/b"), ("a%2Fb", "a/b"), ("a%2fb", "a/b"), ("%E2%82%AC", "€"),
     ("100%25", "100%"), ("a%20b", "a b"), ("x.part2", "x.part2")],
)
def test_decode_ok(raw: str, key: str) -> None:
    assert decode_key(raw) == key


@pytest.mark.parametrize(
    "raw",
    ["", "a/../b", "..", ".", "a/./b", "%2E%2E", "a%2F..%2Fb", "/a", "a/", "a//b", "a%00b",
     "%ff", "%", "a%2", "a%zz", "x.part", "a/x.part", "a" * 1025, "b/" + "c" * 256,
     "%2Fetc%2Fpasswd", "..%2F..%2Fetc"],
)
def test_decode_refused(raw: str) -> None:
    with pytest.raises(InvalidKey):
        decode_key(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_decode_fuzz(raw: str) -> None:
    try:
        key = decode_key(raw)
    except InvalidKey:
        return
    segs = key.split("/")
    assert all(s not in ("", ".", "..") for s in segs)
    assert "\x00" not in key and not key.endswith(".part")


def test_match_uses_raw_path() -> None:
    route, params, _ = ROUTES.match("GET", "/v1/objects/a/../b")
    assert route is not None and route.template == "/v1/objects/{key+}"
    assert params == {"key": "a/../b"}
    route, params, _ = ROUTES.match("GET", "/v1/objects/a/")
    assert route is not None and params == {"key": "a/"}
    route, params, _ = ROUTES.match("GET", "/v1/objects")
    assert route is not None and route.template == "/v1/objects"
    route, params, _ = ROUTES.match("DELETE", "/v1/cache/objects/x%2Fy")
    assert route is not None and params == {"key": "x%2Fy"}
    assert ROUTES.match("GET", "/v1/nope")[0] is None
    route, _, known = ROUTES.match("POST", "/v1/objects/k")
    assert route is None and known
    # HEAD is registered on its own for objects.
    assert ROUTES.match("HEAD", "/v1/objects/k")[0].method == "HEAD"  # type: ignore[union-attr]


def test_openapi_covers_every_route() -> None:
    spec = build_spec()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    table = {(r.method, r.openapi_path) for r in ROUTES}
    assert documented == table
    for path, ops in spec["paths"].items():
        for op in ops.values():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
    for needed in [("PUT", "/v1/objects/{key}"), ("GET", "/v1/objects"), ("GET", "/v1/cache"),
                   ("POST", "/v1/cache/trim"), ("DELETE", "/v1/cache/objects/{key}"),
                   ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                   ("GET", "/openapi.json")]:
        assert needed in documented
