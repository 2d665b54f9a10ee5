"""The CLI's progress line: only on a terminal, only for large or long transfers."""

from __future__ import annotations

import io

from cachedaemon.cli import progress
from cachedaemon.cli.progress import MIN_BYTES, ProgressBar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_large_transfer_on_a_terminal_is_drawn_and_ends_with_a_newline() -> None:
    out = Tty()
    bar = ProgressBar("put k", 2 * MIN_BYTES, stream=out)
    for _ in range(8):
        bar.update(MIN_BYTES // 4)
    bar.finish()
    text = out.getvalue()
    assert text.startswith("\rput k") and text.endswith("\n")
    assert "2.0 MiB / 2.0 MiB  100%" in text


def test_nothing_when_piped_or_small() -> None:
    piped = io.StringIO()
    bar = ProgressBar("put k", 10 * MIN_BYTES, stream=piped)
    bar.update(10 * MIN_BYTES)
    bar.finish()
    assert piped.getvalue() == ""
    tty = Tty()
    small = ProgressBar("get k", None, stream=tty)
    small.set_total(100)  # a GET learns its size late
    small.update(100)
    small.finish()
    assert tty.getvalue() == ""


def test_unknown_size_is_shown_only_once_it_runs_long() -> None:
    tty = Tty()
    quick = ProgressBar("put k", None, stream=tty)
    quick.update(5)
    quick.finish()
    assert tty.getvalue() == ""
    slow = ProgressBar("put k", None, stream=tty)
    slow._started -= progress.UNKNOWN_DELAY_S + 1
    slow.update(3 * MIN_BYTES)
    slow.finish()
    assert "3.0 MiB" in tty.getvalue() and "%" not in tty.getvalue()
