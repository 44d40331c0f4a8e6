"""Reading tracked jobs: `GET /api/v1/jobs` (a filtered, sorted list, paged with a cursor),
`GET /api/v1/jobs/<id>` (one record) and the job page `/jobs/<id>` (the same, as HTML).

Reads need no registration token: whoever may read /metrics (the web config's TLS and basic auth
apply as to every page) may see which jobs are behind it. Writing stays with the registration API.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from exporter.api.ids import is_uuid4, normalise
from exporter.http.jobs_params import BadParameter, encode_cursor, parse_query
from exporter.http.pages import page
from exporter.tracking.queries import JobQuery, Page


class Record(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class JobsReader:
    """What the read routes use: a query and a look-up by id."""

    find: Callable[[JobQuery], Awaitable[Page]]
    lookup: Callable[[str], Awaitable[Record | None]]
    # With peers: whether this shard owns an id, and the owner's answer to a method on its record
    # (status, body, content type); raises when the owner does not answer.
    owned: Callable[[list[str]], list[str]] = lambda ids: ids
    ask_owner: Callable[[str, str], Awaitable[tuple[int, bytes, str]]] | None = None


READER = web.AppKey("jobs_reader", JobsReader)


def routes(reader: JobsReader) -> Callable[[web.Application], None]:
    def add(app: web.Application) -> None:
        app[READER] = reader
        app.router.add_get("/api/v1/jobs", list_jobs)
        app.router.add_get("/api/v1/jobs/{job_id}", show)
        app.router.add_get("/jobs/{job_id}", job_page)
    return add


async def list_jobs(request: web.Request) -> web.Response:
    try:
        query = parse_query(request.query)
    except BadParameter as exc:
        return web.json_response({"error": str(exc), "parameter": exc.name}, status=400)
    found = await request.app[READER].find(query)
    cursor = encode_cursor(query.sort, found.next) if found.next is not None else None
    return web.json_response({"jobs": [job.as_dict() for job in found.jobs], "next_cursor": cursor})


async def show(request: web.Request) -> web.Response:
    job_id = normalise(request.match_info["job_id"])
    if _elsewhere(request, job_id):
        status, body, content_type = await _from_owner(request.app[READER], job_id)
        return web.Response(status=status, body=body, content_type=content_type)
    job = await request.app[READER].lookup(job_id)
    if job is None:
        return web.json_response({"error": "not tracked"}, status=404)
    return web.json_response(job.as_dict())


def _elsewhere(request: web.Request, job_id: str) -> bool:
    """True when another shard owns `job_id` and answers for it (peers configured, no ?local=true).
    Never for what is no job id: the owner is asked with the token, so a path must not ride along."""
    reader = request.app[READER]
    return (reader.ask_owner is not None and request.query.get("local") != "true" and is_uuid4(job_id)
            and not reader.owned([job_id]))


async def _from_owner(reader: JobsReader, job_id: str) -> tuple[int, bytes, str]:
    """The owner's answer about `job_id`, or a 502 naming why there is none."""
    assert reader.ask_owner is not None
    try:
        status, body, content_type = await reader.ask_owner("GET", job_id)
    except Exception as exc:  # the owner is down or unreachable
        body = json.dumps({"error": f"the shard that owns this id did not answer ({exc})"}).encode()
        return 502, body, "application/json"
    return status, body, content_type or "application/json"


def _when(at: float | None) -> str:
    if at is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d} UTC"


async def job_page(request: web.Request) -> web.Response:
    job_id = normalise(request.match_info["job_id"])
    if _elsewhere(request, job_id):  # the owner's record, drawn here
        status, body, _ = await _from_owner(request.app[READER], job_id)
        record = json.loads(body) if status == 200 else None
    else:
        job = await request.app[READER].lookup(job_id)
        record = job.as_dict() if job is not None else None
    if record is None:
        return page("job.html", status=404, job_id=job_id, record=None, history=[], times={})
    times = {k: _when(record.get(k)) for k in ("created", "finished", "ended", "first_tracked",
                                                "last_polled", "next_due")}
    history = [{**h, "when": _when(h["at"])} for h in record["history"]]
    return page("job.html", job_id=job_id, record=record, history=history, times=times)
