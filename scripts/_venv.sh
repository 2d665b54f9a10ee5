# Sourced by scripts/run, scripts/test and scripts/dev: make (once) a virtual environment and
# install the project into it, again only when pyproject.toml changed. Usage: ensure_venv DIR EXTRAS
#
# Quiet when all goes well (one line while it installs); pip's errors are still shown. A venv
# that cannot run pip (half made because the venv module was missing, an interrupted first
# install, a removed interpreter) is made again instead of failing on every run.
ensure_venv() {
    local dir="$1" extras="$2" py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "cachedaemon needs Python 3.11 or newer as '$py' (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    if [ -e "$dir" ] && ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "$dir is incomplete (its python or pip does not run): making it again" >&2
        rm -rf "$dir"
    fi
    if [ ! -e "$dir" ]; then
        if ! "$py" -m venv "$dir" >&2; then
            rm -rf "$dir"
            echo "cannot make the virtual environment $dir with $py (see above)." >&2
            echo "On Debian or Ubuntu, install the venv module first:" \
                 "apt-get install python3-venv (for another Python, e.g. python3.11-venv)." >&2
            exit 1
        fi
        rm -f "$dir/.cachedaemon-installed"
    fi
    local stamp="$dir/.cachedaemon-installed" want
    want="$(cksum < pyproject.toml)$extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing cachedaemon${extras} into $dir (first run, or pyproject.toml changed)" >&2
        # -qq: nothing but errors (pip's warnings and the build backend's chatter stay out).
        "$dir/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip
        "$dir/bin/python" -m pip install -qq --disable-pip-version-check -e ".$extras"
        echo "$want" > "$stamp"
    fi
}
