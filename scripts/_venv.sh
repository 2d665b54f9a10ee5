# Sourced by scripts/run and scripts/test: make (once) a virtual environment and install the
# project into it, again only when pyproject.toml changed. Usage: ensure_venv DIR EXTRAS
ensure_venv() {
    local dir="$1" extras="$2" py="${PYTHON:-python3}"
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "cachedaemon needs Python 3.11 or newer as '$py' (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    if [ ! -x "$dir/bin/python" ]; then
        "$py" -m venv "$dir"
    fi
    local stamp="$dir/.cachedaemon-installed" want
    want="$(cat pyproject.toml | cksum)$extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$extras"
        echo "$want" > "$stamp"
    fi
}
