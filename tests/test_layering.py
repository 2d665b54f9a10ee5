"""A lower layer never imports a higher one (DESIGN.md "The parts, bottom up")."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cachedaemon"

# Lowest first. A module may import its own layer and anything below it.
LAYERS = [
    {"__init__", "errors", "clock", "units", "config", "namespace"},
    {"core"},
    {"remote"},
    {"cache"},
    {"lsm"},
    {"metastore"},
    {"server", "client", "cli", "__main__"},
]


def layer_of(name: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    return None


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cachedaemon" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "cachedaemon":
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        own = layer_of(top)
        if own is None:
            out.append(f"{rel}: module {top!r} is in no layer; add it to LAYERS")
            continue
        for dep in imported_packages(path):
            dep_layer = layer_of(dep)
            if dep_layer is None:
                out.append(f"{rel}: imports unknown part cachedaemon.{dep}")
            elif dep_layer > own:
                out.append(f"{rel}: layer {top} imports higher layer {dep}")
    return out


def test_no_lower_layer_imports_a_higher_one() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from cachedaemon.server import app\nimport cachedaemon.cache.keys\n")
    assert imported_packages(bad) == {"server", "cache"}
    assert layer_of("core") is not None and layer_of("server") > layer_of("core")  # type: ignore[operator]
