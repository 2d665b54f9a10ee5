"""``cachedaemon fsck --data-dir DIR`` on a data directory the real daemon wrote and stopped
cleanly (exit 0), then on copies of it damaged in the ways a crash or a stray hand can."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachedaemon.cache.keys import TRACKER_NAME, key_relpath
from cachedaemon.client import Client
from tests.support.daemon import run_cli, start_daemon

KEYS = ["fsck/a", "fsck/b/c", "top", "empty"]


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("fsck") / "data"
    with start_daemon(data) as d:
        with Client(d.url) as c:
            for key in KEYS:
                c.put(key, b"" if key == "empty" else key.encode() * 10)
        assert d.terminate() == 0  # a clean stop writes the index out
    yield data


@pytest.fixture
def data(clean_data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(clean_data, copy, symlinks=True)
    return copy


def fsck(data: Path) -> tuple[int, list[str]]:
    r = run_cli("fsck", "--data-dir", str(data))
    return r.returncode, r.stdout.decode().splitlines()


def test_clean_data_dir(data: Path) -> None:
    status, lines = fsck(data)
    assert status == 0, lines
    assert "status: clean" in lines and "problems: 0" in lines
    assert f"entries: {len(KEYS)}" in lines and f"tracked: {len(KEYS)}" in lines
    assert not [line for line in lines if line.startswith("problem:")]
    # An empty object is legal: a note, not a problem.
    assert any(line.startswith("note: zero-byte entry") for line in lines)


def test_damaged_data_dir(data: Path) -> None:
    cache = data / "cache"
    a = cache / key_relpath("fsck/a")
    (a.parent / "a_0_7.part").write_bytes(b"half")  # a crash's leftover
    (cache / key_relpath("fsck/b/c")).write_bytes(b"")  # torn: the index says it had bytes
    (cache / key_relpath("top")).unlink()  # tracked but gone
    (cache / "stray%zz").write_bytes(b"?")  # no key maps to this name
    status, lines = fsck(data)
    assert status == 1
    problems = [line for line in lines if line.startswith("problem:")]
    text = "\n".join(problems)
    assert "a_0_7.part" in text and "leftover" in text
    assert "zero-byte entry" in text and "torn" in text
    assert "'top'" in text and "not on disk" in text
    assert "stray%zz" in text
    assert len(problems) == 4, problems
    assert "status: damaged" in lines and "part_files: 1" in lines


def test_damaged_or_missing_tracker(data: Path) -> None:
    tracker = data / "cache" / TRACKER_NAME
    raw = bytearray(tracker.read_bytes())
    raw[-1] ^= 0xFF
    tracker.write_bytes(bytes(raw))
    status, lines = fsck(data)
    assert status == 1
    assert any("tracker" in line and "damaged" in line for line in lines)

    tracker.unlink()  # no index at all: the daemon rebuilds it, not a problem
    status, lines = fsck(data)
    assert status == 0 and "tracked: none" in lines


def test_untracked_entry_and_missing_dir(data: Path, tmp_path: Path) -> None:
    (data / "cache" / "newkey").write_bytes(b"written behind the index's back")
    status, lines = fsck(data)
    assert status == 1 and any("'newkey'" in line and "not in the index" in line
                               for line in lines)
    status, lines = fsck(tmp_path / "nowhere")
    assert status == 1 and any("not a directory" in line for line in lines)
