"""The exporter's HTTP endpoints: /metrics, /metrics/jobs, the landing page, health, readiness and reload.

Routes see a `Site`: the few objects and callables they use, handed over by the wiring, never the
whole exporter.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.http import status
from exporter.metrics.exposition import GzipParts, TextRenderer, render_parts

RouteAdder = Callable[[web.Application], None]


@dataclass(frozen=True)
class Site:
    """What the pages and routes may use."""

    registry: CollectorRegistry  # /metrics: everything this process serves
    jobs_registry: CollectorRegistry  # /metrics/jobs: the job facts alone (metrics/facts.py)
    renderer: TextRenderer
    gzip_parts: GzipParts
    is_ready: Callable[[], bool]
    reload: Callable[[], Awaitable[tuple[bool, str]]]
    # jobs by kind and status, API up and last success, base URL, tracked ids per source,
    # the last hour's samples and the jobs to look at (http/status.py)
    overview: Callable[[], Awaitable[dict[str, Any]]]
    max_body_bytes: int
    # With shared state (PostgreSQL): bring the job facts up to date (a short cache) before
    # /metrics/jobs renders them; raises an HTTP error while they cannot be read at all.
    refresh_jobs: Callable[[], Awaitable[None]] | None = None


SITE = web.AppKey("site", Site)


def build_web_app(site: Site, middlewares: list | None = None, routes: Iterable[RouteAdder] = ()) -> web.Application:
    app = web.Application(client_max_size=site.max_body_bytes, middlewares=middlewares or [])
    app[SITE] = site
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/metrics/jobs", job_metrics)
    app.router.add_get("/", landing)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    for add in routes:
        add(app)
    return app


async def metrics(request: web.Request) -> web.Response:
    return _exposition(request, request.app[SITE].registry)


async def job_metrics(request: web.Request) -> web.Response:
    site = request.app[SITE]
    if site.refresh_jobs is not None:
        await site.refresh_jobs()
    return _exposition(request, site.jobs_registry)


def _exposition(request: web.Request, registry: CollectorRegistry) -> web.Response:
    """`registry` in the format the scraper asks for (text, cached per collector, or OpenMetrics)."""
    site = request.app[SITE]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    headers = {"Content-Type": content_type}
    gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    if content_type.startswith("text/plain"):  # the fast, cached path
        parts = render_parts(registry, site.renderer)
        body = site.gzip_parts.compress(parts) if gzipped else b"".join(b for _, b in parts)
    else:
        body = encoder(registry)
        body = gzip.compress(body, compresslevel=1) if gzipped else body
    return web.Response(body=body, headers=headers)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[SITE].is_ready():
        return web.Response(text="OK\n")
    return web.Response(status=503, text="loading state and ids\n")


async def reload(request: web.Request) -> web.Response:
    ok, message = await request.app[SITE].reload()
    return web.Response(status=200 if ok else 500, text=message + "\n")


async def landing(request: web.Request) -> web.Response:
    return await status.landing(request, await request.app[SITE].overview())
