"""Where the jinja2 templates live, and how they render: for the deploy (steps/base.template_file) and the
tests, with the settings pyinfra's files.template uses (StrictUndefined, keep_trailing_newline)."""

from __future__ import annotations

import jinja2

from piper_gpu.resources import data_dir

TEMPLATES = data_dir("templates")


def render(name: str, **context) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(name).render(**context)
