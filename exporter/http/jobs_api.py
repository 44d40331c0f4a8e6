"""Reading tracked jobs: `GET /api/v1/jobs` (a filtered, sorted list, paged with a cursor),
`GET /api/v1/jobs/<id>` (one record), and the same as HTML: the list `/jobs?...` and the job page
`/jobs/<id>`.

With peers, a record is asked of its owner, and the list merges every shard's own page (`local=true`
asks one replica only): one cursor carries each shard's place, so paging through the merged list
gives every job of every shard once, in the list's order.

Reads need no registration token: whoever may read /metrics (the web config's TLS and basic auth
apply as to every page) may see which jobs are behind it. Writing stays with the registration API.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, replace
from urllib.parse import urlencode
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web
from multidict import MultiMapping

from exporter.api.ids import is_uuid4, normalise
from exporter.http.jobs_params import (BadParameter, decode_cursor, encode_cursor, encode_shard_cursors, is_local,
                                       parse_query, record_position, shard_cursors)
from exporter.http.pages import page
from exporter.tracking.queries import JobQuery, Page


class Record(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


ListPage = dict[str, Any]  # {"jobs": [record, ...], "next_cursor": str | None}


@dataclass(frozen=True)
class Shards:
    """With peers: this replica's shard and the number of shards; `pages` fetches the other shards'
    own pages of the list at once (the request's parameters, each shard's cursor, "" = from its
    beginning), leaving out a shard that did not answer; `merge` is sources.peers.merge_pages."""

    index: int
    count: int
    pages: Callable[[list[tuple[str, str]], dict[int, str]], Awaitable[dict[int, ListPage]]]
    merge: Callable[..., tuple[list[Any], dict[int, str]]]


@dataclass(frozen=True)
class JobsReader:
    """What the read routes use: a query and a look-up by id."""

    find: Callable[[JobQuery], Awaitable[Page]]
    lookup: Callable[[str], Awaitable[Record | None]]
    # With peers: whether this shard owns an id, and the owner's answer to a method on its record
    # (status, body, content type); raises when the owner does not answer.
    owned: Callable[[list[str]], list[str]] = lambda ids: ids
    ask_owner: Callable[[str, str], Awaitable[tuple[int, bytes, str]]] | None = None
    shards: Shards | None = None


READER = web.AppKey("jobs_reader", JobsReader)


def routes(reader: JobsReader) -> Callable[[web.Application], None]:
    def add(app: web.Application) -> None:
        app[READER] = reader
        app.router.add_get("/api/v1/jobs", list_jobs)
        app.router.add_get("/api/v1/jobs/{job_id}", show)
        app.router.add_get("/jobs", jobs_page)
        app.router.add_get("/jobs/{job_id}", job_page)
    return add


async def list_jobs(request: web.Request) -> web.Response:
    try:
        return web.json_response(await _listed(request))
    except BadParameter as exc:
        return web.json_response({"error": str(exc), "parameter": exc.name}, status=400)


async def _listed(request: web.Request) -> ListPage:
    """The page the query string asks for: this replica's own, or every shard's merged."""
    reader = request.app[READER]
    if reader.shards is None or is_local(request.query):
        return await _page(reader, parse_query(request.query))
    return await _merged(reader, reader.shards, request.query)


async def jobs_page(request: web.Request) -> web.Response:
    """`/jobs?...`: the list of GET /api/v1/jobs (the same parameters) as a page, for people: the
    target of the alerts' `jobs` links."""
    filters = [(k, v) for k, v in request.query.items() if k != "cursor"]
    try:
        listed = await _listed(request)
    except BadParameter as exc:
        return page("jobs.html", status=400, error=str(exc), filters=filters, rows=[], api_query="",
                    next_query=None, missing=[])
    rows = [{**record, "created_at": _when(record.get("created")), "ended_at": _when(record.get("ended"))}
            for record in listed["jobs"]]
    cursor = listed.get("next_cursor")
    return page("jobs.html", error=None, filters=filters, rows=rows, api_query=urlencode(list(request.query.items())),
                next_query=urlencode([*filters, ("cursor", cursor)]) if cursor else None,
                missing=listed.get("missing_shards", []))


async def _page(reader: JobsReader, query: JobQuery) -> ListPage:
    found = await reader.find(query)
    cursor = encode_cursor(query.sort, found.next) if found.next is not None else None
    return {"jobs": [job.as_dict() for job in found.jobs], "next_cursor": cursor}


async def _merged(reader: JobsReader, shards: Shards, params: MultiMapping[str]) -> ListPage:
    """One page of every shard's jobs: each shard's own page from its place in the cursor (this
    one's read here, the others' asked at once), merged in the list's order. A shard that did not
    answer is named in `missing_shards` and keeps its place: the next page asks it again (its jobs,
    once it answers, may sort before some already shown), until the shards that answer run out."""
    query = parse_query(params, merged=True)
    cursors = shard_cursors(params.get("cursor"), query.sort, shards.count)
    forward = [(k, v) for k, v in params.items() if k not in ("cursor", "local")]
    others = {s: c for s, c in cursors.items() if s != shards.index}

    async def own() -> dict[int, ListPage]:
        if shards.index not in cursors:  # exhausted (or a replica being removed: not in the ring)
            return {}
        start = cursors[shards.index]
        after = decode_cursor(start, query.sort) if start else None
        return {shards.index: await _page(reader, replace(query, after=after))}

    theirs, mine = await asyncio.gather(shards.pages(forward, others), own())
    pages = {**theirs, **mine}

    def key(record: dict[str, Any]) -> Any:
        return record_position(record, query.sort)

    jobs, onward = shards.merge(pages, query.limit, key=key, started=cursors,
                                cursor_of=lambda record: encode_cursor(query.sort, key(record)))
    missing = sorted(set(cursors) - set(pages))
    if onward:
        onward.update({shard: cursors[shard] for shard in missing})
    cursor = encode_shard_cursors(query.sort, shards.count, onward) if onward else None
    return {"jobs": jobs, "next_cursor": cursor, "missing_shards": missing}


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
    return reader.ask_owner is not None and request.query.get("local", "").lower() != "true" \
        and is_uuid4(job_id) and not reader.owned([job_id])


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
