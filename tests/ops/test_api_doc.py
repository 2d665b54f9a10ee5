"""``docs/api.md`` is kept equal to the daemon: driven by the route table
(``cachedaemon.server.routes.ROUTES``), the settings schema (``cachedaemon.config.SCHEMA``), the
command-line parser and the error tree, so that a route, setting, command, option or error code
added without documenting it (or removed while still documented) fails here, with the line to
add.

What the document must contain, per item:

- a route: its method and path in backticks, e.g. `` `GET /v1/objects/{key}` ``
  (``{name}`` for a ``{name+}`` parameter); each query or header parameter named; the routes
  that need no token listed on the line that says "need no token";
- a setting: a row ``| `section.name` | default | `ENV` | `--flags` | what |`` in the
  ``### [section]`` table, the default as ``cachedaemon serve --help`` shows it;
- a command: `` `cachedaemon kv scan`` ...; each of its long options in backticks;
- an error code: in backticks.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import cachedaemon.errors as errors
from cachedaemon.cli import build_parser, default_text
from cachedaemon.config import BY_KEY, SCHEMA, SECTIONS, Setting
from cachedaemon.server.routes import ROUTES, Route

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
METHODS = "GET|PUT|POST|DELETE|HEAD|PATCH|OPTIONS"
ROUTE_RE = re.compile(rf"`((?:{METHODS}) /[^`\s]*)`")
SETTING_PREFIXES = tuple(f"--{section}-" for section in SECTIONS)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def _routes() -> dict[str, Route]:
    import cachedaemon.server.handlers  # noqa: F401 - registers every route

    return {f"{r.method} {r.openapi_path}": r for r in ROUTES}


# --- routes ------------------------------------------------------------------------------------


def test_every_route_of_the_daemon_is_documented(doc: str) -> None:
    documented = set(ROUTE_RE.findall(doc))
    missing = sorted(set(_routes()) - documented)
    assert not missing, (
        "docs/api.md does not document these routes of cachedaemon/server/routes.py; add each "
        "as `METHOD /path` with what it does:\n  " + "\n  ".join(
            f"`{r}` — {_routes()[r].summary}" for r in missing))


def test_every_documented_route_exists(doc: str) -> None:
    stale = sorted(set(ROUTE_RE.findall(doc)) - set(_routes()))
    assert not stale, ("docs/api.md documents routes the daemon does not have (removed or "
                       "renamed?):\n  " + "\n  ".join(stale))


def test_the_open_routes_are_listed_as_such(doc: str) -> None:
    (line,) = [ln for ln in doc.splitlines() if "need no token" in ln]
    listed = set(ROUTE_RE.findall(line))
    open_routes = {name for name, r in _routes().items() if not r.auth}
    assert listed == open_routes, (
        "the line of docs/api.md that says which routes \"need no token\" must list exactly the "
        f"routes with auth=False: {sorted(open_routes)}")


def test_every_route_parameter_is_documented(doc: str) -> None:
    missing = sorted({f"{name}: {p.where} {p.name}" for name, r in _routes().items()
                      for p in r.params if p.name not in doc})
    assert not missing, ("docs/api.md does not name these query/header parameters:\n  "
                         + "\n  ".join(missing))


# --- settings ----------------------------------------------------------------------------------


def _setting_rows(doc: str) -> dict[str, tuple[str, list[str]]]:
    """``key -> (section heading it is under, cells)`` for every table row naming a setting."""
    rows: dict[str, tuple[str, list[str]]] = {}
    heading = ""
    for line in doc.splitlines():
        m = re.match(r"^###\s+\[(\w+)\]", line)
        if m:
            heading = m.group(1)
        m = re.match(r"^\|\s*`([a-z0-9_]+\.[a-z0-9_]+)`\s*\|", line)
        if m:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            assert m.group(1) not in rows, f"setting {m.group(1)} has two rows in docs/api.md"
            rows[m.group(1)] = (heading, cells)
    return rows


def _row_for(s: Setting) -> str:
    default = default_text(s) if s.default is None else f"`{default_text(s)}`"
    flags = ", ".join(f"`{f}`" for f in dict.fromkeys((s.flag, *s.aliases)))
    return f"| `{s.key}` | {default} | `{s.env}` | {flags} | {s.help} |"


def test_every_setting_is_documented(doc: str) -> None:
    rows = _setting_rows(doc)
    missing = [s for s in SCHEMA if s.key not in rows]
    assert not missing, (
        "docs/api.md has no row for these settings of cachedaemon/config.py; add each to the "
        "table under its `### [section]` heading:\n" + "\n".join(
            f"  [{s.section}]  {_row_for(s)}" for s in missing))


@pytest.mark.parametrize("setting", SCHEMA, ids=[s.key for s in SCHEMA])
def test_each_settings_row_matches_the_schema(doc: str, setting: Setting) -> None:
    rows = _setting_rows(doc)
    if setting.key not in rows:
        pytest.fail(f"docs/api.md has no row for {setting.key}: {_row_for(setting)}")
    heading, cells = rows[setting.key]
    expected = _row_for(setting)
    assert heading == setting.section, (
        f"{setting.key} is documented under [{heading}], not [{setting.section}]")
    assert len(cells) == 5, f"{setting.key}: expected 5 cells, got {cells}; e.g. {expected}"
    _, default, env, flags, what = cells
    assert default.strip("`") == default_text(setting), (
        f"{setting.key}: docs/api.md says the default is {default}, the schema "
        f"{default_text(setting)!r}: {expected}")
    assert env == f"`{setting.env}`", f"{setting.key}: environment {env}, not {setting.env}"
    documented_flags = {f.strip().strip("`") for f in flags.split(",")}
    assert documented_flags == {setting.flag, *setting.aliases}, (
        f"{setting.key}: flags {sorted(documented_flags)}, the daemon has "
        f"{sorted({setting.flag, *setting.aliases})}")
    assert what, f"{setting.key}: say what it does"


def test_every_documented_setting_exists(doc: str) -> None:
    stale = sorted(set(_setting_rows(doc)) - set(BY_KEY))
    assert not stale, f"docs/api.md documents settings the daemon does not have: {stale}"


# --- the command line --------------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], set[str]]]:
    out: list[tuple[tuple[str, ...], set[str]]] = []
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = {o for a in parser._actions for o in a.option_strings
               if o.startswith("--") and o != "--help" and not o.startswith(SETTING_PREFIXES)
               and not (path == ("serve",) and o in _setting_aliases())}
    if not subs:
        out.append((path, options))
    for action in subs:
        for name, sub in action.choices.items():
            out += _commands(sub, (*path, name))
    if path == ():
        out.append(((), options))
    return out


def _setting_aliases() -> set[str]:
    return {a for s in SCHEMA for a in s.aliases}


def test_every_command_and_option_is_documented(doc: str) -> None:
    problems = []
    for path, options in _commands(build_parser()):
        if path and f"`cachedaemon {' '.join(path)}" not in doc:
            problems.append(f"command `cachedaemon {' '.join(path)}` is not documented")
        for option in sorted(options):
            if f"`{option}" not in doc:
                where = f"cachedaemon {' '.join(path)}".strip()
                problems.append(f"option `{option}` of `{where}` is not documented")
    assert not problems, "docs/api.md, section Command line:\n  " + "\n  ".join(problems)
    for env in ("CACHEDAEMON_URL", "CACHEDAEMON_AUTH_TOKEN"):
        assert f"`{env}`" in doc


# --- errors ------------------------------------------------------------------------------------


#: Codes of the error tree that never reach an HTTP client, and why.
NOT_HTTP = {"invalid_config": "a configuration error stops the daemon at start (exit 2)"}


def _error_codes() -> set[str]:
    """The codes of the public error tree (the classes of ``cachedaemon/errors.py``; a layer's
    private subclasses answer with their own codes only by a bug, as 500)."""
    seen: set[str] = set()
    todo: list[type[errors.CacheDaemonError]] = [errors.CacheDaemonError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__ and cls.code not in NOT_HTTP:
            seen.add(cls.code)
        todo += cls.__subclasses__()
    return seen


def test_every_error_code_is_documented(doc: str) -> None:
    section = doc[doc.index("### Errors"):doc.index("### Keys")]
    missing = sorted(code for code in _error_codes() if f"`{code}`" not in section)
    assert not missing, (f"the Errors table of docs/api.md lacks these codes of "
                         f"cachedaemon/errors.py (with their HTTP status): {missing}")


# --- the README --------------------------------------------------------------------------------


def test_the_readme_links_the_reference_not_the_shared_folder() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/api.md)" in readme
    assert "shared design folder" not in readme and "shared/" not in readme
