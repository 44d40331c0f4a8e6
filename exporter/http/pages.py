"""HTML pages rendered from the packaged templates, with autoescaping on."""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

_env = jinja2.Environment(loader=jinja2.PackageLoader("exporter.http", "templates"),
                          autoescape=jinja2.select_autoescape(("html",), default=True),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(**context)


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    return web.Response(text=render(template, **context), content_type="text/html", status=status)
