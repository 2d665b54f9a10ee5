"""The object record kept with a cached entry (:mod:`cachedaemon.server.s3.metadata`): a small
hit reads the record's id, not the record, and must answer exactly what the record says."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachedaemon.remote.base import ObjectMeta
from cachedaemon.server.s3 import metadata
from cachedaemon.server.s3.metadata import (
    ETAG_XATTR,
    RECORD_ID_XATTR,
    RECORD_XATTR,
    ObjectRecord,
    hit_header_lines,
    read_record,
    record_hit_lines,
    record_id,
    write_record,
)

ETAG = "0123456789abcdef0123456789abcdef"


def record(content_type: str = "application/octet-stream", **user: str) -> ObjectRecord:
    return ObjectRecord(5, ETAG, 1733412345.5, ObjectMeta.make(user, content_type=content_type))


@pytest.fixture
def entry(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A cached entry's file (5 bytes, its ETag attribute set) and a descriptor of it."""
    path = tmp_path / "entry"
    path.write_bytes(b"hello")
    try:
        os.setxattr(path, ETAG_XATTR, ETAG.encode())
    except OSError:
        pytest.skip("no user extended attributes here")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield path, fd
    finally:
        os.close(fd)


def test_a_hit_answers_the_record_by_its_id(entry: tuple[Path, int]) -> None:
    path, fd = entry
    long = record(colour="blue", note="x" * 100)  # well over os.getxattr's first 128 bytes
    assert write_record(path, long)
    raw = os.getxattr(fd, RECORD_XATTR)
    assert len(raw) > 128 and os.getxattr(fd, RECORD_ID_XATTR) == record_id(raw)
    assert len(record_id(raw)) == 16
    for _ in range(2):  # read, then remembered
        assert record_hit_lines(fd, 5) == hit_header_lines(long)
    assert metadata._BY_ID[record_id(raw)] == (5, hit_header_lines(long))
    assert record_hit_lines(fd, 4) is None  # not this entry's size
    assert read_record(fd, 5) == long


def test_a_new_record_of_the_same_version_is_answered(entry: tuple[Path, int]) -> None:
    path, fd = entry
    for content_type in ("text/plain", "application/json", "text/plain"):
        assert write_record(path, record(content_type))
        assert record_hit_lines(fd, 5) == hit_header_lines(record(content_type))


def test_an_entry_recorded_without_an_id_gets_one(entry: tuple[Path, int]) -> None:
    path, fd = entry
    old = record(n="1")
    os.setxattr(path, RECORD_XATTR, old.encode())  # as before ids existed
    assert record_hit_lines(fd, 5) == hit_header_lines(old)
    assert os.getxattr(fd, RECORD_ID_XATTR) == record_id(old.encode())
    assert record_hit_lines(fd, 5) == hit_header_lines(old)


def test_an_id_that_is_not_its_records_is_not_remembered(entry: tuple[Path, int]) -> None:
    # A record replaced between the two attributes' writes: answer from the record itself.
    path, fd = entry
    now, before = record(n="now"), record(n="before")
    os.setxattr(path, RECORD_XATTR, now.encode())
    os.setxattr(path, RECORD_ID_XATTR, record_id(before.encode()))
    metadata._BY_ID.pop(record_id(before.encode()), None)
    assert record_hit_lines(fd, 5) == hit_header_lines(now)
    assert record_id(before.encode()) not in metadata._BY_ID


def test_no_record_or_a_broken_one_is_no_answer(entry: tuple[Path, int]) -> None:
    path, fd = entry
    assert record_hit_lines(fd, 5) is None
    os.setxattr(path, RECORD_XATTR, b"{not json")
    assert record_hit_lines(fd, 5) is None
    with pytest.raises(OSError):
        os.getxattr(fd, RECORD_ID_XATTR)  # nothing to name


def test_a_record_written_over_a_writer_leaves_no_wrong_id(entry: tuple[Path, int],
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    # Another shard writes its record between this writer's record and id.
    path, fd = entry
    mine, theirs = record(n="mine"), record(n="theirs")
    real = os.setxattr

    def racing(target: object, name: str, value: bytes, *args: object) -> None:
        if name == RECORD_ID_XATTR and value == record_id(mine.encode()):
            real(path, RECORD_XATTR, theirs.encode())
        real(target, name, value, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "setxattr", racing)
    assert write_record(path, mine)
    monkeypatch.undo()
    with pytest.raises(OSError):
        os.getxattr(fd, RECORD_ID_XATTR)
    assert record_hit_lines(fd, 5) == hit_header_lines(theirs)
    assert os.getxattr(fd, RECORD_ID_XATTR) == record_id(theirs.encode())
