"""The documentation holds together: the settings reference is what the code gives, every setting is in it,
every relative link leads to a file, and the README stays a front page."""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SETTINGS_MD = DOCS / "settings.md"
README_MAX_LINES = 260


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_docs"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)  # puts server/src on sys.path for piper_gpu_server
    return module


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_settings_reference_is_what_the_code_gives():
    expected = _make_docs().render()
    assert SETTINGS_MD.read_text(encoding="utf-8") == expected, (
        "docs/settings.md differs from the settings' definitions: run python scripts/make_docs.py")


def test_check_mode_agrees():
    assert _make_docs().main(["--check"]) == 0


def test_every_setting_is_in_the_reference():
    _make_docs()
    from piper_gpu.settings import DATA_PREFIX, FIELD_GROUPS
    from piper_gpu_server.config import ServerConfig

    text = SETTINGS_MD.read_text(encoding="utf-8")
    deploy = [name for name in FIELD_GROUPS if name != "python_version"]  # preflight's
    missing = [n for n in deploy if f"`{DATA_PREFIX}{n}`" not in text]
    assert not missing, f"deploy settings missing from docs/settings.md: {missing}"
    server_part = text.split("## Server settings", 1)[1]
    missing = [f.name for f in dataclasses.fields(ServerConfig) if f"| `{f.name}` |" not in server_part]
    assert not missing, f"server settings missing from docs/settings.md: {missing}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _relative_links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in _LINK.findall(text) if not re.match(r"^([a-z]+:|#)", t)]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(page):
    broken = [t for t in _relative_links(page) if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to files that do not exist: {broken}"


def test_the_docs_pages_are_linked_from_the_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in _relative_links(README)}
    unlinked = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_readme_keeps_the_test_command():
    assert "scripts/test" in README.read_text(encoding="utf-8"), ".ci/run runs scripts/test: the README names it"



def _meanings(part: str, key) -> dict[str, tuple[str, str]]:
    """{setting: (default, meaning)} of a table's rows in ``part`` of docs/settings.md; ``key`` gives a row's key."""
    out = {}
    for line in part.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            out[key(cells[0].strip("`"))] = (cells[1], cells[2])
    return out


def test_the_deploy_documents_the_server_settings_it_passes_on_in_the_servers_words():
    """Each server setting the deploy passes on has, in the deploy's table, the meaning the server's
    own code gives it (config.py's comment, read through the imported class), with what the deploy
    adds after it, and the server's default (the buckets: the deploy's "", which writes none)."""
    make_docs = _make_docs()
    from piper_gpu.inputs import DATA_PREFIX, NOT_WRITTEN, SERVER_NOTES, SERVER_SETTINGS
    from piper_gpu_server.config import ServerConfig

    server_rows = {r.name: r for r in make_docs.rows(ServerConfig)}  # inspect.getsource of the imported class
    deploy_part, server_part = SETTINGS_MD.read_text(encoding="utf-8").split("## Server settings", 1)
    deploy = _meanings(deploy_part, lambda k: k.removeprefix(DATA_PREFIX))
    server = _meanings(server_part, lambda k: k)
    assert "encoder_provider" in SERVER_SETTINGS
    for name in SERVER_SETTINGS:
        said = make_docs._cell(server_rows[name].meaning)
        assert server[name][1] == said, name
        assert deploy[name][1] == "; ".join(filter(None, (said, make_docs._cell(SERVER_NOTES.get(name, ""))))), name
        if name not in NOT_WRITTEN:
            assert deploy[name][0] == server[name][0], name
    assert deploy["encoder_provider"][1].startswith("where a shape-stable voice's encoder (phoneme ids -> the flow's input)")
