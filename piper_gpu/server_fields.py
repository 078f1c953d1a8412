"""The server's settings as its own source defines them, read without importing the server.

The deploy passes most of the server's settings on under their own names (inputs.Service): their
types, defaults and meanings are those of ``ServerConfig`` in server/src/piper_gpu_server/config.py,
the one definition. The deploy reads that class from its source file instead of importing it:

- an installed deploy holds the server's sources as data (piper_gpu/server/, what it builds the host's
  wheel from), not as an importable package;
- config.py imports the server's shape-stable code, which needs numpy, and the server's distribution
  needs piper-tts, onnx and Hypercorn: none of them belongs on the controller, which only runs pyinfra.

So each field is read as the source writes it (Python's ast, nothing executed): its name, its
annotation, its default where that is a literal, and its meaning, the ``#:`` comment lines right above
it (scripts/make_docs.py reads every settings class's meanings with the same function). The file read
is the one the host's server is built from, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from piper_gpu.resources import data_dir

#: The server's settings class and its module, under the server's sources (data_dir("server")).
CONFIG_MODULE = ("src", "piper_gpu_server", "config.py")
CONFIG_CLASS = "ServerConfig"

_GROUP = re.compile(r"^\s*#\s*---\s*(?P<name>[^-].*?)\s*-*\s*$")


class NotLiteral:
    """The default of a field whose default is an expression or a factory, not a literal."""

    def __repr__(self) -> str:
        return "<not a literal>"


NOT_LITERAL = NotLiteral()


@dataclass(frozen=True)
class SourceField:
    """One field of a dataclass as its source writes it."""

    name: str
    #: the annotation as written: "int", "str | None", ...
    type: str
    #: the literal default; NOT_LITERAL (an expression, a factory) or dataclasses.MISSING (none)
    default: Any
    #: the ``#:`` comment lines right above the field, joined
    meaning: str
    #: the last ``# --- name ---`` line above it in its class, "" if none
    group: str


def _default(value: ast.expr | None) -> Any:
    if value is None:
        return dataclasses.MISSING
    try:
        return ast.literal_eval(value)
    except ValueError:
        return NOT_LITERAL


def class_fields(source: str, class_name: str) -> dict[str, SourceField]:
    """{name: field} of class ``class_name`` in ``source`` (a module's or the class's own), in order."""
    lines = source.splitlines()
    node = next((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if node is None:
        raise LookupError(f"no class {class_name} in the source")
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        i = stmt.lineno - 2  # the line above, 0-based
        comment: list[str] = []
        while i >= 0 and lines[i].strip().startswith("#:"):
            comment.insert(0, lines[i].strip()[2:].strip())
            i -= 1
        above = lines[node.lineno - 1:stmt.lineno - 1]
        group = next((m.group("name") for m in map(_GROUP.match, reversed(above)) if m), "")
        out[stmt.target.id] = SourceField(stmt.target.id, ast.unparse(stmt.annotation), _default(stmt.value),
                                          " ".join(comment), group)
    return out


def constants(source: str) -> dict[str, Any]:
    """The module-level ``NAME = literal`` assignments of ``source``."""
    out = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = _default(stmt.value)
            if value is not NOT_LITERAL:
                out[stmt.targets[0].id] = value
    return out


def config_source(root: Path | None = None) -> tuple[Path, str]:
    """The server's config.py (in the deploy's copy of the server's sources) and its text."""
    path = (root or data_dir("server")).joinpath(*CONFIG_MODULE)
    try:
        return path, path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeError(f"cannot read the server's settings from {path}: {exc} (reinstall piper-gpu-deploy)") from exc


def server_fields(root: Path | None = None) -> dict[str, SourceField]:
    """{name: field} of the server's ServerConfig, as config.py defines them."""
    path, text = config_source(root)
    try:
        return class_fields(text, CONFIG_CLASS)
    except (SyntaxError, LookupError) as exc:
        raise RuntimeError(f"{path}: cannot read the server's settings class {CONFIG_CLASS}: {exc}") from exc


def server_constant(name: str, root: Path | None = None) -> Any:
    """A literal constant of the server's config.py (``ENCODER_PROVIDERS``)."""
    path, text = config_source(root)
    found = constants(text)
    if name not in found:
        raise RuntimeError(f"{path}: no constant {name} = <literal>")
    return found[name]
