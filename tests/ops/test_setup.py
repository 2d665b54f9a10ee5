"""Set-up as a new user meets it: ``scripts/_venv.sh`` (behind ``scripts/run``, ``scripts/test``
and ``scripts/dev``) on a Debian without ``python3-venv`` and after it, the quietness of the
install, the package build's warnings, the README's first lines and ``.gitignore``.

The venv tests run the real script on a tiny project of their own (so they install in seconds),
with a stand-in ``python3`` whose ``-m venv`` fails as Debian's does when the ``python3-venv``
package is missing. They need the package index for pip (as the scripts do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "venv-probe"
version = "0.1.0"
license = "Apache-2.0"
requires-python = ">=3.11"

[tool.setuptools]
py-modules = ["venv_probe"]
"""

# Debian's python3 without the python3-venv package: ``-m venv`` makes the directory and its
# python, then fails for want of ensurepip, leaving a venv with no pip in it.
DEBIAN_PYTHON = """\
#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    "{python}" -m venv --without-pip "$3"
    echo "The virtual environment was not created successfully because ensurepip is not" >&2
    echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv" >&2
    echo "package using the following command." >&2
    exit 1
fi
exec "{python}" "$@"
"""


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "_venv.sh", proj / "scripts" / "_venv.sh")
    (proj / "pyproject.toml").write_text(TINY_PYPROJECT)
    (proj / "venv_probe.py").write_text("ANSWER = 42\n")
    return proj


def _ensure_venv(proj: Path, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    # As scripts/run does it: set -euo pipefail, cd to the project, source, call.
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full["PYTHON"] = sys.executable
    full.update(env or {})
    return subprocess.run(
        ["bash", "-c", 'set -euo pipefail; . scripts/_venv.sh; ensure_venv .venv ""'],
        cwd=proj, env=full, capture_output=True, text=True, timeout=300, check=False)


def _debian_python_without_venv(tmp_path: Path) -> Path:
    wrapper = tmp_path / "python3"
    wrapper.write_text(DEBIAN_PYTHON.format(python=sys.executable))
    wrapper.chmod(0o755)
    return wrapper


def test_a_missing_python3_venv_is_named_and_leaves_no_half_made_venv(tmp_path: Path) -> None:
    proj = _project(tmp_path)
    r = _ensure_venv(proj, {"PYTHON": str(_debian_python_without_venv(tmp_path))})
    assert r.returncode != 0
    assert "apt-get install python3-venv" in r.stderr, r.stderr
    assert not (proj / ".venv").exists()


def test_a_half_made_venv_is_made_again_quietly_and_install_errors_show(tmp_path: Path) -> None:
    """What Debian leaves behind without python3-venv: a venv with a python and no pip. The
    scripts used to keep it and fail on every later run ("No module named pip"). The install
    says one line, not pip's and setuptools' chatter; a failing one shows pip's error."""
    proj = _project(tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(proj / ".venv")],
                   check=True, timeout=120)
    r = _ensure_venv(proj)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        ".venv is incomplete (its python or pip does not run): making it again",
        "installing cachedaemon into .venv (first run, or pyproject.toml changed)"], r.stderr
    check = subprocess.run([str(proj / ".venv" / "bin" / "python"), "-c",
                            "import venv_probe; print(venv_probe.ANSWER)"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.stdout.strip() == "42", check.stderr
    # A second run finds it complete and installs nothing.
    again = _ensure_venv(proj)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    # A broken project file: the install fails, and says why.
    (proj / "pyproject.toml").write_text(TINY_PYPROJECT.replace('"0.1.0"', "0.1.x"))
    r = _ensure_venv(proj)
    assert r.returncode != 0
    assert "ERROR" in r.stderr and "TOML" in r.stderr, r.stderr


def test_the_package_builds_without_deprecation_warnings(tmp_path: Path) -> None:
    """The project's own build: the old ``license = {text = ...}`` table made every install print
    setuptools' deprecation notice (unsupported after 2027-02-18)."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "deprecated" not in out.lower() and "BuildBackendWarning" not in out, out
    (wheel,) = tmp_path.glob("cachedaemon-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in zf.read(meta).decode()


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "# cachedaemon"
    start = lines.index("```sh")
    end = lines.index("```", start + 1)
    commands = [line.split("#")[0].strip() for line in lines[start + 1:end]]
    assert commands == ["./scripts/run", "./scripts/test"]
    assert start <= 3


def test_readme_says_what_a_bare_debian_needs() -> None:
    text = (ROOT / "README.md").read_text()
    assert "apt-get install" in text and "python3-venv" in text


@pytest.mark.parametrize("path", ["cachedaemon-data/x", "cachedaemon-dev-data/cache/x",
                                  ".venv-test/bin/python"])
def test_gitignore_covers_what_the_scripts_leave(path: str) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT,
                       timeout=30, check=False)
    assert r.returncode == 0, f"{path} is not ignored by .gitignore"
