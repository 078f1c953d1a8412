"""Where the jinja2 templates live, and rendering outside pyinfra (tests, the demo, verify)."""

from __future__ import annotations

import jinja2

from piper_gpu.resources import data_dir

TEMPLATES = data_dir("templates")


def template_path(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"template {name} not found in {TEMPLATES}")
    return str(path)


def render(name: str, **context) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**context)
