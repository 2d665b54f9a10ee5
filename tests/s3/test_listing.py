"""ListObjects' logic over a real (in-memory) store: common prefixes, pages, tokens and
markers, the reserved keys; and the router's addressing and operation names."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachedaemon.remote.memory import MemoryObjectStore
from cachedaemon.server.s3 import listing
from cachedaemon.server.s3.errors import S3Error
from cachedaemon.server.s3.router import Addressing, address, operation


def reference(keys: list[str], prefix: str, delimiter: str) -> list[tuple[str, bool]]:
    """What S3 lists, in one page: (key or common prefix, is a prefix), in order."""
    out: list[tuple[str, bool]] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        i = key.find(delimiter, len(prefix)) if delimiter else -1
        if i >= 0:
            common = key[: i + len(delimiter)]
            if not out or out[-1] != (common, True):
                out.append((common, True))
        else:
            out.append((key, False))
    return out


async def store_with(keys: list[str]) -> MemoryObjectStore:
    store = MemoryObjectStore()
    for key in keys:
        await store.put(key, b"x")
    return store


async def pages(store: Any, key_prefix: str, prefix: str, delimiter: str, max_keys: int
                ) -> list[tuple[str, bool]]:
    seen: list[tuple[str, bool]] = []
    after: str | None = None
    for _ in range(1000):
        page = await listing.list_keys(store, key_prefix, prefix, delimiter, after, max_keys)
        entries = [(k, False) for k, _ in page.contents] + [(p, True) for p in page.prefixes]
        assert len(entries) <= max_keys
        seen += sorted(entries)
        if not page.truncated:
            return seen
        after = listing.decode_token(listing.encode_token(page))
    raise AssertionError("the listing never ended")


KEYS = ["a", "b/1", "b/2", "b/x/3", "c", "d/f", "d/e", "e-f/g", ".cachedaemon/bucket-id",
        ".cachedaemon-x", "z"]


async def test_one_page_is_what_s3_lists_without_the_reserved_keys() -> None:
    store = await store_with(KEYS)
    page = await listing.list_keys(store, "", "", "/", None, 1000)
    assert page.prefixes == ["b/", "d/", "e-f/"]
    assert [k for k, _ in page.contents] == ["a", "c", "z"]
    page = await listing.list_keys(store, "", "b/", "/", None, 1000)
    assert (page.prefixes, [k for k, _ in page.contents]) == (["b/x/"], ["b/1", "b/2"])


async def test_a_common_prefix_costs_one_entry_whatever_it_holds() -> None:
    store = await store_with([f"big/{i:05d}" for i in range(3000)] + ["small"])
    calls = 0
    real = store.list

    async def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args)

    store.list = counting  # type: ignore[method-assign]
    page = await listing.list_keys(store, "", "", "/", None, 1000)
    assert (page.prefixes, [k for k, _ in page.contents]) == (["big/"], ["small"])
    assert calls <= 3


async def test_a_marker_that_is_a_common_prefix_does_not_bring_it_back() -> None:
    store = await store_with(KEYS)
    page = await listing.list_keys(store, "", "", "/", "b/", 1000)
    assert page.prefixes == ["d/", "e-f/"]
    page = await listing.list_keys(store, "", "", "/", "b/1", 1000)  # inside b/
    assert page.prefixes == ["d/", "e-f/"]


async def test_prefix_mode_lists_one_bucket() -> None:
    store = await store_with(["team-a/x", "team-a/y/z", "team-b/x", "team-a"])
    page = await listing.list_keys(store, "team-a/", "", "/", None, 1000)
    assert (page.prefixes, [k for k, _ in page.contents]) == (["y/"], ["x"])


def test_tokens_are_checked() -> None:
    with pytest.raises(S3Error) as info:
        listing.decode_token("not a token")
    assert info.value.code == "InvalidArgument"


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.text(alphabet="ab/c.", min_size=1, max_size=6)
                     .filter(lambda k: "//" not in k and not k.startswith("/")
                             and not k.endswith("/") and ".." not in k.split("/")
                             and "." not in k.split("/")), max_size=30, unique=True),
       prefix=st.sampled_from(["", "a", "a/", "b", "c/"]),
       delimiter=st.sampled_from(["", "/", "c"]),
       max_keys=st.integers(min_value=1, max_value=7))
async def test_pages_add_up_to_one_listing(keys: list[str], prefix: str, delimiter: str,
                                           max_keys: int) -> None:
    store = await store_with(keys)
    got = await pages(store, "", prefix, delimiter, max_keys)
    assert got == reference(keys, prefix, delimiter)


# --- the router -------------------------------------------------------------------------------


DOMAINS = ("localhost", "s3.example.com")


@pytest.mark.parametrize("host,path,want", [
    ("127.0.0.1:9000", "/", (None, None, False)),
    ("127.0.0.1:9000", "/b", ("b", None, False)),
    ("127.0.0.1:9000", "/b/", ("b", None, False)),
    ("127.0.0.1:9000", "/b/k%20x/y", ("b", "k x/y", False)),
    ("bucket.localhost:9000", "/k", ("bucket", "k", True)),
    ("bucket.s3.example.com", "/", ("bucket", None, True)),
    ("localhost:9000", "/b/k", ("b", "k", False)),
    ("[::1]:9000", "/b/k", ("b", "k", False)),
    ("Not_A_Bucket.localhost", "/b/k", ("b", "k", False)),
])
def test_addressing(host: str, path: str, want: tuple[Any, ...]) -> None:
    t = address(host, path, DOMAINS)
    assert (t.bucket, t.key, t.virtual) == want


def test_remembered_addressing_is_addressing() -> None:
    remembered = Addressing(DOMAINS)
    for host, path in [("127.0.0.1:9000", "/b/k"), ("bucket.localhost:9000", "/k"),
                       ("BUCKET.localhost", "/k%20x"), (None, "/b"), ("h", "/")]:
        for _ in range(2):
            assert remembered(host, path) == address(host, path, DOMAINS), (host, path)
    for _ in range(2):  # an error is raised each time, never remembered as an answer
        with pytest.raises(S3Error):
            remembered("h", "/b/%zz")


def test_bad_paths_are_invalid_uri() -> None:
    for path in ("/b/%zz", "/b/%ff"):
        with pytest.raises(S3Error) as info:
            address("h", path, DOMAINS)
        assert info.value.code == "InvalidURI"


@pytest.mark.parametrize("method,path,query,headers,want", [
    ("GET", "/", {}, {}, "ListBuckets"),
    ("GET", "/b", {"list-type": "2"}, {}, "ListObjectsV2"),
    ("GET", "/b", {"prefix": "x"}, {}, "ListObjects"),
    ("GET", "/b", {"location": ""}, {}, "GetBucketLocation"),
    ("GET", "/b", {"uploads": ""}, {}, "ListMultipartUploads"),
    ("POST", "/b", {"delete": ""}, {}, "DeleteObjects"),
    ("PUT", "/b", {}, {}, "CreateBucket"),
    ("HEAD", "/b", {}, {}, "HeadBucket"),
    ("GET", "/b/k", {"versionId": "null"}, {}, "GetObject"),
    ("PUT", "/b/k", {}, {"x-amz-copy-source": "/b/j"}, "CopyObject"),
    ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, {}, "UploadPart"),
    ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, {"x-amz-copy-source": "b/j"},
     "UploadPartCopy"),
    ("POST", "/b/k", {"uploads": ""}, {}, "CreateMultipartUpload"),
    ("POST", "/b/k", {"uploadId": "u"}, {}, "CompleteMultipartUpload"),
    ("DELETE", "/b/k", {"uploadId": "u"}, {}, "AbortMultipartUpload"),
    ("GET", "/b/k", {"uploadId": "u"}, {}, "ListParts"),
])
def test_operations(method: str, path: str, query: dict[str, str], headers: dict[str, str],
                    want: str) -> None:
    assert operation(method, address("h", path, DOMAINS), query, headers) == want


@pytest.mark.parametrize("method,path,query", [
    ("GET", "/b", {"acl": ""}), ("PUT", "/b/k", {"tagging": ""}), ("GET", "/b/k",
                                                                    {"versionId": "3"}),
    ("POST", "/b/k", {}), ("PATCH", "/b/k", {}), ("GET", "/b", {"versions": ""}),
])
def test_what_is_not_implemented_says_so(method: str, path: str, query: dict[str, str]) -> None:
    with pytest.raises(S3Error) as info:
        operation(method, address("h", path, DOMAINS), query, {})
    assert (info.value.code, info.value.status) == ("NotImplemented", 501)
