"""Reading tracked jobs: `GET /api/v1/jobs` (a filtered, sorted list, paged with a cursor),
`GET /api/v1/jobs/<id>` (one record) and the job page `/jobs/<id>` (the same, as HTML).

Reads need no registration token: whoever may read /metrics (the web config's TLS and basic auth
apply as to every page) may see which jobs are behind it. Writing stays with the registration API.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from exporter.api.ids import normalise
from exporter.http.jobs_params import BadParameter, encode_cursor, parse_query
from exporter.http.pages import page
from exporter.tracking.queries import JobQuery, Page


class Record(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


ListPage = dict[str, Any]  # {"jobs": [record, ...], "next_cursor": str | None}


@dataclass(frozen=True)
class JobsReader:
    """What the read routes use: a query and a look-up by id."""

    find: Callable[[JobQuery], Awaitable[Page]]
    lookup: Callable[[str], Awaitable[Record | None]]


READER = web.AppKey("jobs_reader", JobsReader)


def routes(reader: JobsReader) -> Callable[[web.Application], None]:
    def add(app: web.Application) -> None:
        app[READER] = reader
        app.router.add_get("/api/v1/jobs", list_jobs)
        app.router.add_get("/api/v1/jobs/{job_id}", show)
        app.router.add_get("/jobs/{job_id}", job_page)
    return add


async def list_jobs(request: web.Request) -> web.Response:
    reader = request.app[READER]
    try:
        return web.json_response(await _page(reader, parse_query(request.query)))
    except BadParameter as exc:
        return web.json_response({"error": str(exc), "parameter": exc.name}, status=400)


async def _page(reader: JobsReader, query: JobQuery) -> ListPage:
    found = await reader.find(query)
    cursor = encode_cursor(query.sort, found.next) if found.next is not None else None
    return {"jobs": [job.as_dict() for job in found.jobs], "next_cursor": cursor}


async def show(request: web.Request) -> web.Response:
    job_id = normalise(request.match_info["job_id"])
    job = await request.app[READER].lookup(job_id)
    if job is None:
        return web.json_response({"error": "not tracked"}, status=404)
    return web.json_response(job.as_dict())


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d} UTC"


async def job_page(request: web.Request) -> web.Response:
    job_id = normalise(request.match_info["job_id"])
    job = await request.app[READER].lookup(job_id)
    record = job.as_dict() if job is not None else None
    if record is None:
        return page("job.html", status=404, job_id=job_id, record=None, history=[], times={})
    times = {k: _when(record.get(k)) for k in ("created", "finished", "ended", "first_tracked",
                                                "last_polled", "next_due")}
    history = [{**h, "when": _when(h["at"])} for h in record["history"]]
    return page("job.html", job_id=job_id, record=record, history=history, times=times)
