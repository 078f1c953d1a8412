"""No import circles: among the deploy package's modules, verify's, and the server's. Every import
counts, at module level or inside a function (an import deferred into a function still ties the two
modules together; it only hides the circle until that function runs)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: (directory, the name its modules are imported by: a package, or "" for verify's rootdir modules)
PACKAGES = [(REPO / "piper_gpu", "piper_gpu"), (REPO / "verify", ""),
            (REPO / "server" / "src" / "piper_gpu_server", "piper_gpu_server")]


def modules(directory: Path, prefix: str) -> dict[str, Path]:
    out = {}
    for path in directory.rglob("*.py"):
        parts = list(path.relative_to(directory).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(filter(None, [prefix, *parts]))] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``path`` imports (``from pkg import mod`` names the module, else the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = ".".join(filter(None, [up, node.module]))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in out if m in known and m != name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_finds_a_circle_where_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("directory,prefix", PACKAGES, ids=[p[0].name for p in PACKAGES])
def test_no_import_circles(directory, prefix):
    known = modules(directory, prefix)
    assert len(known) > 3, known  # the walk saw the package
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert sum(map(len, graph.values())) > 0, "no import between the modules was seen"
    assert circles(graph) == [], "modules that import each other (move what both need into a module of its own)"
