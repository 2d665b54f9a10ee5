"""Command-line tools the tests run as users install them: from Debian's packages, installed
with apt-get when missing (root only), else the test is skipped with the command to run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def debian_tool(tool: str, package: str, *, install_must_work: bool = False) -> str:
    """The path of ``tool``, installing Debian's ``package`` if it is missing. Skips when it
    cannot be installed here (not root, no apt-get); when apt-get runs but the tool is still
    missing, fails if ``install_must_work``, else skips with apt-get's complaint."""
    found = shutil.which(tool)
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{tool} is missing and cannot be installed here (needs root and apt-get): "
                    f"install it (Debian: apt-get install {package}) to run this test")
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, check=False)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                       capture_output=True, text=True, timeout=600, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which(tool)
    if found is None:
        if install_must_work:
            pytest.fail(f"apt-get install {package} failed: {r.stderr[-2000:]}")
        pytest.skip(f"apt-get install {package} failed (no package source?): {r.stderr[-500:]}")
    return found
