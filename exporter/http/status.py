"""The status page `/`: today's links and tables, the last hour's charts (drawn here, as SVG), and
the jobs to look at first (oldest unfinished, slowest and failed of the last hour)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from exporter import __version__
from exporter.http import charts
from exporter.http.pages import page

REFRESH_SECONDS = 10


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else ""


def _row(job: Any, now: float) -> dict[str, Any]:
    """One line of a jobs table: the age of an unfinished job, the duration of a finished one."""
    if job.duration is not None:
        seconds = job.duration
    elif not job.final and job.created is not None:
        seconds = now - job.created
    else:
        seconds = None
    return {"id": job.id, "kind": job.kind, "group": job.group, "model": job.model, "status": job.status,
            "created": _when(job.created), "seconds": f"{seconds:,.1f} s" if seconds is not None else ""}


async def landing(request: web.Request, overview: dict[str, Any]) -> web.Response:
    now = time.time()
    statuses = sorted({s for by_status in overview["jobs"].values() for s in by_status})
    last = overview["last_success"]
    tables = {name: [_row(job, now) for job in jobs] for name, jobs in overview["tables"].items()}
    error = overview.get("last_error")
    last_error = {**error, "when": _when(error["at"])} if error else None
    down_since = _when(overview["down_since"]) if overview.get("down_since") else None
    # Shared samples (PostgreSQL) end where the newest one was taken, so every replica draws the same.
    charts_at = overview.get("charts_at") or now
    return page("landing.html", version=__version__, base_url=overview["base_url"], up=overview["up"],
                last_error=last_error, down_since=down_since,
                last_success=_when(last) if last else "never", statuses=statuses,
                jobs=sorted(overview["jobs"].items()), sources=sorted(overview["sources"].items()),
                charts=charts.charts(overview["samples"], overview["duration_bounds"], charts_at), tables=tables,
                samples_shared=overview.get("samples_shared", False),
                sample_seconds=f"{overview['sample_seconds']:g}", refresh_seconds=REFRESH_SECONDS,
                generated=_when(now), spend_today=overview.get("spend_today"), proxy=overview.get("proxy"))
