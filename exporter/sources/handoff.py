"""Hand-offs between replicas: what one replica owes an id's owner, and the owner's route for it.

An entry is one JSON object: `op` (`registered`, `created`, `observed` or `state`), the job `id`,
`kind`, `group`, `model`, `source`, and for `observed` the answer the proxy saw (`answer`, base64),
for `state` the whole job record (`state`, as in the state file). The owner applies each exactly as
if it had seen it itself; every op is idempotent, so a retry after a lost acknowledgement changes
nothing: `registered`/`created` track an id only if new, `observed` leaves a final job alone, and
`state` is taken only for an id the owner does not already hold final.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from exporter import KINDS
from exporter.api.ids import is_uuid4, normalise
from exporter.config import Secret
from exporter.sources.registration import token_given
from exporter.tracking.job import Job
from exporter.tracking.outbox import HandoffStats
from exporter.tracking.store import JOB_COLUMNS

log = logging.getLogger("distribute.handoff")

OPS = ("registered", "created", "observed", "state")


def entry(op: str, job_id: str, kind: str, group: str, model: str = "", source: str = "api",
          answer: bytes | None = None, state: dict[str, Any] | None = None) -> str:
    """One hand-off entry as the owner's route takes it (compact JSON)."""
    item: dict[str, Any] = {"op": op, "id": job_id, "kind": kind, "group": group, "model": model, "source": source}
    if answer is not None:
        item["answer"] = base64.b64encode(answer).decode()
    if state is not None:
        item["state"] = state
    return json.dumps(item, separators=(",", ":"))


class Sink(Protocol):
    """What the owner does with an entry: the same as with what it sees itself."""

    async def registered(self, job_id: str, kind: str, group: str) -> None: ...
    async def created(self, job_id: str, kind: str, group: str, model: str) -> None: ...
    async def observe(self, job_id: str, kind: str, group: str, model: str, body: bytes) -> None: ...
    async def take_over(self, job: Job) -> bool: ...
    async def flush(self) -> int: ...


@dataclass(frozen=True)
class HandoffRoute:
    """What the hand-off route uses."""

    token: Callable[[], Secret | None]
    sink: Sink
    accepting: Callable[[], bool]  # False until the state is loaded (and resharded)
    stats: HandoffStats
    status: Callable[[], Awaitable[dict[str, Any]]]  # this replica's shard count and what it owes whom
    max_entries: int = 10_000


HANDOFF = web.AppKey("handoff", HandoffRoute)


def routes(route: HandoffRoute) -> Callable[[web.Application], None]:
    def add(app: web.Application) -> None:
        app[HANDOFF] = route
        app.router.add_post("/api/v1/handoff", receive)
        app.router.add_get("/api/v1/handoff", status)
    return add


def _refused(request: web.Request, route: HandoffRoute) -> web.Response | None:
    """None for a peer with the registration token, else the answer (401, counted and logged)."""
    if token_given(request, route.token()):
        return None
    route.stats.outcomes["refused"] += 1
    log.warning("refused a hand-off from %s: missing or wrong token", request.remote)
    return web.json_response({"error": "missing or wrong token"}, status=401)


async def status(request: web.Request) -> web.Response:
    """For peers settling after a change of shard count: {count, ready, pending: {shard: n}}."""
    route = request.app[HANDOFF]
    refused = _refused(request, route)
    if refused is not None:
        return refused
    return web.json_response({**await route.status(), "ready": route.accepting()})


async def receive(request: web.Request) -> web.Response:
    route = request.app[HANDOFF]
    refused = _refused(request, route)
    if refused is not None:
        return refused
    if not route.accepting():
        return web.json_response({"error": "loading state; try again"}, status=503)
    try:
        body = await request.json(loads=json.loads)
        entries = body["entries"]
        if not isinstance(entries, list) or len(entries) > route.max_entries:
            raise ValueError
    except Exception:
        return web.json_response({"error": f"body must be {{\"entries\": [...]}} with at most "
                                           f"{route.max_entries} entries"}, status=400)
    applied, invalid = await apply(route.sink, entries)
    await route.sink.flush()  # acknowledged only once stored here
    route.stats.outcomes["received"] += applied
    if invalid:
        route.stats.outcomes["invalid"] += invalid
        log.warning("dropped %d hand-off entries that cannot be applied", invalid)
    return web.json_response({"applied": applied, "invalid": invalid})


async def apply(sink: Sink, entries: list[Any]) -> tuple[int, int]:
    """Apply entries in order; answer (applied, invalid). An invalid entry can never be applied, so
    it is acknowledged too (and counted), rather than blocking the sender's queue for ever."""
    applied = invalid = 0
    for item in entries:
        try:
            await _apply_one(sink, item)
            applied += 1
        except (ValueError, KeyError, TypeError, binascii.Error):
            invalid += 1
    return applied, invalid


async def _apply_one(sink: Sink, item: Any) -> None:
    if not isinstance(item, dict) or item.get("op") not in OPS or not is_uuid4(item.get("id")):
        raise ValueError("not an entry")
    job_id, kind, group, model = normalise(item["id"]), item["kind"], item["group"], item.get("model") or ""
    if kind not in KINDS or not isinstance(group, str) or not group or not isinstance(model, str):
        raise ValueError("bad kind, group or model")
    op = item["op"]
    if op == "registered":
        await sink.registered(job_id, kind, group)
    elif op == "created":
        await sink.created(job_id, kind, group, model)
    elif op == "observed":
        await sink.observe(job_id, kind, group, model, base64.b64decode(item["answer"], validate=True))
    else:
        await sink.take_over(job_from_state(job_id, item["state"]))


def job_from_state(job_id: str, state: Any) -> Job:
    """The record a `state` entry carries, checked to be a whole one for this id."""
    if not isinstance(state, dict) or set(state) != set(JOB_COLUMNS) or state["id"] != job_id:
        raise ValueError("not a job record")
    job = Job.from_row(state)
    if job.kind not in KINDS or not isinstance(job.final, int) or not isinstance(job.status, str):
        raise ValueError("not a job record")
    return job


def state_of(job: Job) -> dict[str, Any]:
    return dict(zip(JOB_COLUMNS, job.row()))
