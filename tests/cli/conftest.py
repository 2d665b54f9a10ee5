"""One daemon shared by the CLI and packaging tests of this directory (starting one costs
seconds). Tests use their own key prefixes; a test that needs special flags starts its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import DaemonProcess, start_daemon


@pytest.fixture(scope="package")
def cli_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    data = tmp_path_factory.mktemp("cli-daemon")
    with start_daemon(data / "data", "--cache-max-bytes", "64MiB") as d:
        yield d
