"""Where the deploy's data lives: templates/ and verify/ sit at the top of a source checkout and
inside the package (piper_gpu/templates, piper_gpu/verify) in the built wheel (pyproject.toml maps
them in). Either way, one copy."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """``templates``, ``verify`` or ``server``: the wheel's copy, else the checkout's."""
    for candidate in (PACKAGE / name, PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name}/ is neither in {PACKAGE} (an installed wheel) nor in {PACKAGE.parent} "
                            "(a source checkout): reinstall piper-gpu-deploy")


TEXTS_JSON = PACKAGE / "texts.json"
OPENPGP_TOOL = PACKAGE / "openpgp.py"
