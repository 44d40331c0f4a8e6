"""The exporter's HTTP endpoints: /metrics, the landing page, health, readiness and reload."""

from __future__ import annotations

import gzip
import html
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from . import __version__
from .exposition import render_parts

if TYPE_CHECKING:
    from .app import Exporter


def build_web_app(exporter: "Exporter", middlewares: list | None = None) -> web.Application:
    app = web.Application(client_max_size=exporter.config.web.max_request_body_bytes,
                          middlewares=middlewares or [])
    app["exporter"] = exporter
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", landing)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    from .registration import add_routes
    add_routes(app)
    return app


async def metrics(request: web.Request) -> web.Response:
    exporter: Exporter = request.app["exporter"]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    headers = {"Content-Type": content_type}
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    if content_type.startswith("text/plain"):  # the fast, cached path
        parts = render_parts(exporter.registry, exporter.renderer)
        body = exporter.gzip_parts.compress(parts) if gzipped else b"".join(b for _, b in parts)
    else:
        body = encoder(exporter.registry)
        body = gzip.compress(body, compresslevel=1) if gzipped else body
    return web.Response(body=body, headers=headers)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    exporter: Exporter = request.app["exporter"]
    if exporter.ready:
        return web.Response(text="OK\n")
    return web.Response(status=503, text="loading state and ids\n")


async def reload(request: web.Request) -> web.Response:
    exporter: Exporter = request.app["exporter"]
    ok, message = await exporter.reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def landing(request: web.Request) -> web.Response:
    exporter: Exporter = request.app["exporter"]
    summary = exporter.summary()
    sources = await exporter.source_counts()
    statuses = sorted({s for by_status in summary["jobs"].values() for s in by_status})
    rows = "".join(
        f"<tr><th>{html.escape(kind)}</th>" + "".join(f"<td>{by_status.get(s, 0)}</td>" for s in statuses) + "</tr>"
        for kind, by_status in sorted(summary["jobs"].items()))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in statuses)
    source_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{n}</td></tr>" for k, n in sorted(sources.items()))
    last = summary["last_success"]
    last_text = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last)) if last else "never"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>distribute-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>distribute-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for Distribute.ai's async inference API.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a></li></ul>
<h2>API</h2>
<p>Base URL: {html.escape(summary["base_url"])} &middot; up: {summary["up"]} &middot;
last successful poll: {last_text} &middot; shard {summary["shard"]}</p>
<h2>Tracked jobs by kind and status</h2>
<table><tr><th>kind</th>{head}</tr>{rows}</table>
<h2>How ids arrived</h2>
<table><tr><th>source</th><th>jobs</th></tr>{source_rows}</table>
</body></html>"""
    return web.Response(text=page, content_type="text/html")
