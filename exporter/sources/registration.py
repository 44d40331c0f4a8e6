"""The registration API: applications hand the exporter the ids they get from `/async/<kind>/create`.

Enabled only when a token is configured; otherwise its routes answer 404, as if absent. Reading
jobs (`GET /api/v1/jobs...`) is not here: it needs no token (http/jobs_api.py).
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from aiohttp import web

from exporter import KINDS
from exporter.api.ids import is_uuid4, normalise
from exporter.config import Secret

MAX_BODY = 1024 * 1024


class RegisteredJobs(Protocol):
    """What the registration API may do with the tracked jobs."""

    async def track(self, ids: list[str], kind: str, group: str, source: str,
                    now: float) -> tuple[list[str], int]: ...
    async def untrack(self, job_id: str, now: float) -> bool: ...
    async def flush(self) -> int: ...


@dataclass(frozen=True)
class Registrar:
    """What the routes use: the current token and the jobs."""

    token: Callable[[], Secret | None]
    jobs: RegisteredJobs


REGISTRAR = web.AppKey("registrar", Registrar)


def routes(registrar: Registrar) -> Callable[[web.Application], None]:
    def add(app: web.Application) -> None:
        app[REGISTRAR] = registrar
        app.router.add_post("/api/v1/jobs", register)
        app.router.add_delete("/api/v1/jobs/{job_id}", forget)
    return add


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def token_given(request: web.Request, token: Secret | None) -> bool:
    """True when the request carries `token`; 404 (as if absent) when there is none configured.

    X-Registration-Token serves when basic auth (web config) already uses the Authorization header.
    """
    if token is None:
        raise web.HTTPNotFound()
    given = request.headers.get("X-Registration-Token")
    expected = token.reveal()
    if given is None:
        given, expected = request.headers.get("Authorization", ""), "Bearer " + expected
    return hmac.compare_digest(given.encode(), expected.encode())


def _authorised(request: web.Request) -> web.Response | None:
    """None when the request may go on, else the answer to give."""
    if not token_given(request, request.app[REGISTRAR].token()):
        return _error(401, "missing or wrong bearer token")
    return None


async def register(request: web.Request) -> web.Response:
    refused = _authorised(request)
    if refused is not None:
        return refused
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(413, f"body over {MAX_BODY} bytes")
    try:
        raw = await request.content.read(MAX_BODY + 1)
    except Exception:
        return _error(400, "could not read the body")
    if len(raw) > MAX_BODY:
        return _error(413, f"body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "body is not JSON")
    problem = _check_body(body)
    if problem is not None:
        return problem
    registrar = request.app[REGISTRAR]
    ids = [normalise(i) for i in body["ids"]]
    kind, group = body["kind"], body.get("group", "default")
    accepted, duplicates = await registrar.jobs.track(ids, kind, group, "api", time.time())
    await registrar.jobs.flush()  # 202 only once the ids are durably stored
    return web.json_response({"accepted": len(accepted), "duplicates": duplicates}, status=202)


def _check_body(body: Any) -> web.Response | None:
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object with kind, group and ids")
    unknown = set(body) - {"kind", "group", "ids"}
    if unknown:
        return _error(400, f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    if body.get("kind") not in KINDS:
        return _error(400, f"kind must be one of {', '.join(KINDS)}")
    group = body.get("group", "default")
    if not isinstance(group, str) or not group.strip() or len(group) > 128:
        return _error(400, "group must be a non-empty string of at most 128 characters")
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids:
        return _error(400, "ids must be a non-empty list of UUID v4 strings")
    invalid = [i for i in ids if not is_uuid4(i)]
    if invalid:
        return _error(400, "not UUID v4 ids; nothing was stored", invalid=[str(i)[:80] for i in invalid[:100]])
    return None


async def forget(request: web.Request) -> web.Response:
    refused = _authorised(request)
    if refused is not None:
        return refused
    registrar = request.app[REGISTRAR]
    job_id = normalise(request.match_info["job_id"])
    jobs = registrar.jobs
    if not await jobs.untrack(job_id, time.time()):
        return _error(404, "not tracked")
    await jobs.flush()
    return web.json_response({"forgotten": True})
