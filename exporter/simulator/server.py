"""The simulator's HTTP side: the async API's endpoints, the admin endpoints and the job generator."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from exporter import KINDS
from exporter.api.ids import is_uuid4
from exporter.simulator.faults import FaultError, Faults
from exporter.simulator.jobs import SAMPLE_CREATE_BODIES, CreateBodyError, Job, draw_job, result_body, validate_create
from exporter.simulator.openai import (CHAT_PATH, IMAGES_PATH, OpenAIRequestError, authorized, chat_completion,
                                       check_chat, check_images, error_body, image_generation)

log = logging.getLogger("distribute.simulator")

RECENT_REQUESTS = 10_000  # the request log GET /__admin/stats?recent=1 returns: (time, path, status, id)
RECENT_ANSWERS = 100  # answers of the OpenAI-compatible routes GET /__admin/answers returns, as sent
ANSWER_KEPT_BYTES = 1024 * 1024  # ... each kept only up to this size (a 'huge' malformed one is not)
HANG_SECONDS = 3600.0  # "until the client gives up": longer than any client timeout
_JSON = "application/json"


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=_JSON,
                        headers=headers)


def _message(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json(status, {"message": text}, headers)


_OPENAI_ERROR_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}


def _openai_error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """The same refusals on the OpenAI-compatible routes, in OpenAI's error envelope."""
    kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return _json(status, error_body(text, kind, code="invalid_api_key" if status == 401 else None), headers)


@dataclass(frozen=True)
class Dialect:
    """How a family of routes refuses (error body) and takes the key: the async API's raw
    `authorization` value, or also OpenAI's `Bearer <key>` on the OpenAI-compatible routes."""

    error: Callable[..., web.Response]
    authorized: Callable[[str | None, str], bool]


ASYNC = Dialect(_message, lambda header, key: header == key)
OPENAI = Dialect(_openai_error, authorized)


class Stats:
    """Request counts per endpoint, per status code and per job id (result requests only)."""

    def __init__(self) -> None:
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_endpoint_status: Counter[str] = Counter()
        self.by_id: Counter[str] = Counter()
        self.by_id_agent: dict[str, Counter[str]] = {}
        self.recent: deque[tuple[float, str, int, str | None]] = deque(maxlen=RECENT_REQUESTS)

    def record(self, path: str, status: int, job_id: str | None, agent: str = "") -> None:
        self.recent.append((time.time(), path, status, job_id))
        if job_id is not None:
            self.by_id_agent.setdefault(job_id, Counter())[agent] += 1
        self.by_endpoint[path] += 1
        self.by_status[str(status)] += 1
        self.by_endpoint_status[f"{path} {status}"] += 1
        if job_id is not None:
            self.by_id[job_id] += 1

    def as_dict(self, with_ids: bool = True, only_id: str | None = None, recent: bool = False,
                agents: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "requests_total": sum(self.by_endpoint.values()),
            "by_endpoint": dict(self.by_endpoint),
            "by_status": dict(self.by_status),
            "by_endpoint_status": dict(self.by_endpoint_status),
        }
        if only_id is not None:
            answer["by_id"] = {only_id: self.by_id.get(only_id, 0)}
        elif with_ids:
            answer["by_id"] = dict(self.by_id)
        if recent:
            answer["recent"] = [list(r) for r in self.recent]
        if agents:
            answer["by_id_agent"] = {i: dict(c) for i, c in self.by_id_agent.items()}
        return answer


class Simulator:
    """The simulated service: its jobs, fault settings, stats and options."""

    def __init__(self, *, api_key: str | None = None, timestamps: str = "iso",
                 seed: int | None = None, speed: float = 1.0, faults: Faults | None = None) -> None:
        self.api_key = api_key
        self.timestamps = timestamps
        self.speed = speed
        self.faults = faults or Faults()
        self.jobs: dict[str, Job] = {}
        self.stats = Stats()
        self._rng = random.Random(seed)  # draws jobs: reproducible under --seed
        self._fault_rng = random.Random(None if seed is None else seed + 1)
        # The synchronous routes draw apart, so that they leave the async jobs' draws (ids) as they were.
        self.sync_rng = random.Random(None if seed is None else seed + 2)
        self._huge: bytes | None = None
        # What the synchronous routes answered, byte for byte: there is no job to ask about afterwards.
        self.sync_answers: deque[tuple[float, str, int, bytes]] = deque(maxlen=RECENT_ANSWERS)
        self.down_changed: Callable[[], Awaitable[None]] | None = None

    # -- jobs ------------------------------------------------------------------------------------
    def create(self, kind: str, params: dict[str, Any], created: float | None = None) -> Job:
        job = draw_job(kind, self._rng, time.time() if created is None else created, params)
        self.jobs[job.id] = job
        return job

    def truth(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """What each job is at `now`, for tests that compare the exporter with the ground truth."""
        moment = time.time() if now is None else now
        return {job.id: result_body(job, moment, self.speed, "epoch-s") | {"kind": job.kind, "phases": [
                    [job.created + offset / self.speed, status] for offset, status in job.phases]}
                for job in self.jobs.values()}

    # -- faults ----------------------------------------------------------------------------------
    def huge_body(self) -> bytes:
        if self._huge is None or len(self._huge) != self.faults.huge_body_bytes:
            filler = b"x" * max(0, self.faults.huge_body_bytes - 40)
            self._huge = b'{"id": "huge", "padding": "' + filler + b'"}'
        return self._huge

    def malformed(self) -> web.Response:
        kind = self._fault_rng.choice(self.faults.malformed_kinds)
        if kind == "not_json":
            return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>",
                                content_type="text/html")
        if kind == "wrong_shape":
            return _json(200, self._fault_rng.choice(
                [[1, 2, 3], {"status": 7, "created": "yesterday"}, {"data": None}, "COMPLETED"]))
        return web.Response(status=200, body=self.huge_body(), content_type=_JSON)


def build_app(sim: Simulator) -> web.Application:
    """The aiohttp application answering the async API and the `/__admin/` endpoints."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app["sim"] = sim
    for kind in KINDS:
        app.router.add_post(f"/async/{kind}/create", _create_handler(kind))
        app.router.add_post(f"/async/{kind}/result", _result_handler(kind))
    app.router.add_post("/v1/chat/completions", _guarded(_chat_completion, OPENAI))
    app.router.add_post("/v1/images/generations", _guarded(_image_generation, OPENAI))
    app.router.add_get("/__admin/stats", _get_stats)
    app.router.add_post("/__admin/stats/reset", _reset_stats)
    app.router.add_get("/__admin/faults", _get_faults)
    app.router.add_post("/__admin/faults", _set_faults)
    app.router.add_delete("/__admin/faults", _reset_faults)
    app.router.add_post("/__admin/jobs", _admin_create_jobs)
    app.router.add_get("/__admin/jobs", _admin_truth)
    app.router.add_get("/__admin/answers", _admin_answers)
    app.router.add_get("/", _index)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Callable[[Simulator, web.Request], Awaitable[tuple[web.StreamResponse, str | None]]],
             dialect: Dialect = ASYNC) -> Handler:
    """Wrap an API handler (`/async/` or `/v1/`) with auth, fault injection and stats."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        sim: Simulator = request.app["sim"]
        try:
            response, job_id = await _answer(sim, request, handler, dialect)
        except asyncio.CancelledError:  # the client gave up on a hanging request
            sim.stats.record(request.path, 499, None)
            raise
        sim.stats.record(request.path, response.status, job_id, request.headers.get("User-Agent", ""))
        body = response.body if isinstance(response, web.Response) else None
        if dialect is OPENAI and isinstance(body, bytes) and len(body) <= ANSWER_KEPT_BYTES:
            sim.sync_answers.append((time.time(), request.path, response.status, body))
        return response

    return wrapped


async def _answer(sim: Simulator, request: web.Request, handler: Any,
                  dialect: Dialect) -> tuple[web.StreamResponse, str | None]:
    faults = sim.faults
    if faults.latency_ms or faults.latency_jitter_ms:
        await asyncio.sleep(faults.delay(sim._fault_rng))
    fault = faults.pick(sim._fault_rng)
    if fault == "503":
        return dialect.error(503, "Service Unavailable"), None
    if sim.api_key is not None and not dialect.authorized(request.headers.get("authorization"), sim.api_key):
        return dialect.error(401, "Unauthorized"), None
    if fault == "hang":
        await asyncio.sleep(HANG_SECONDS)
    if fault == "500":
        return dialect.error(500, "Internal Server Error"), None
    if fault == "429":
        retry = f"{faults.retry_after_seconds:g}"
        return dialect.error(429, "Too Many Requests", {"Retry-After": retry}), None
    response, job_id = await handler(sim, request)
    if fault == "malformed" and response.status == 200 and not request.path.endswith("/create"):
        return sim.malformed(), job_id
    return response, job_id


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


_NOT_JSON = object()


def _create_handler(kind: str) -> Handler:
    async def create(sim: Simulator, request: web.Request) -> tuple[web.StreamResponse, str | None]:
        body = await _read_json(request)
        if body is _NOT_JSON:
            return _message(400, "body must be JSON"), None
        try:
            params = validate_create(kind, body)
        except CreateBodyError as exc:
            return _message(400, str(exc)), None
        job = sim.create(kind, params)
        return _json(200, {"id": job.id}), None

    return _guarded(create)


def _result_handler(kind: str) -> Handler:
    async def result(sim: Simulator, request: web.Request) -> tuple[web.StreamResponse, str | None]:
        body = await _read_json(request)
        if not isinstance(body, dict) or set(body) != {"id"} or not is_uuid4(body["id"]):
            return _message(400, "body must be {\"id\": <UUID v4>} and nothing else"), None
        job_id = body["id"]
        job = sim.jobs.get(job_id.lower())
        if job is None or job.kind != kind:
            return _message(404, "Not Found"), job_id.lower()
        return _json(200, result_body(job, time.time(), sim.speed, sim.timestamps)), job.id

    return _guarded(result)


async def _chat_completion(sim: Simulator, request: web.Request) -> tuple[web.StreamResponse, None]:
    try:
        params = check_chat(await _read_json(request))
    except OpenAIRequestError as exc:
        return _json(400, error_body(str(exc), param=exc.param)), None
    return _json(200, chat_completion(params, sim.sync_rng)), None


async def _image_generation(sim: Simulator, request: web.Request) -> tuple[web.StreamResponse, None]:
    try:
        params = check_images(await _read_json(request))
    except OpenAIRequestError as exc:
        return _json(400, error_body(str(exc), param=exc.param)), None
    return _json(200, image_generation(params, sim.sync_rng)), None


async def _get_stats(request: web.Request) -> web.Response:
    sim: Simulator = request.app["sim"]
    with_ids = request.query.get("ids", "1") not in ("0", "false")
    flag = lambda name: request.query.get(name, "0") not in ("0", "false")  # noqa: E731
    return _json(200, sim.stats.as_dict(with_ids, request.query.get("id"), flag("recent"), flag("agents")))


async def _reset_stats(request: web.Request) -> web.Response:
    request.app["sim"].stats = Stats()
    return _json(200, {"reset": True})


async def _get_faults(request: web.Request) -> web.Response:
    return _json(200, request.app["sim"].faults.as_dict())


async def _set_faults(request: web.Request) -> web.Response:
    sim: Simulator = request.app["sim"]
    body = await _read_json(request)
    if not isinstance(body, dict):
        return _message(400, "body must be a JSON object of fault settings")
    was_down = sim.faults.down
    try:
        sim.faults.update(body)
    except FaultError as exc:
        return _message(400, str(exc))
    if sim.faults.down != was_down and sim.down_changed is not None:
        # After this answer has gone out: "refuse" closes the connection it travels on.
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(sim.down_changed()))
    return _json(200, sim.faults.as_dict())


async def _reset_faults(request: web.Request) -> web.Response:
    sim: Simulator = request.app["sim"]
    was_down = sim.faults.down
    sim.faults = Faults()
    if was_down and sim.down_changed is not None:
        await sim.down_changed()
    return _json(200, sim.faults.as_dict())


async def _admin_create_jobs(request: web.Request) -> web.Response:
    """Create `count` jobs of one kind at once (tests and benchmarks), optionally back-dated."""
    sim: Simulator = request.app["sim"]
    body = await _read_json(request)
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        return _message(400, "body must be {\"kind\": chat|images|speech, \"count\": n}")
    count = body.get("count", 1)
    age = body.get("age_seconds", 0)
    if not isinstance(count, int) or not 1 <= count <= 1_000_000 or not isinstance(age, (int, float)):
        return _message(400, "count must be 1..1000000 and age_seconds a number")
    params = dict(SAMPLE_CREATE_BODIES[body["kind"]])
    if isinstance(body.get("model"), str):
        params["model"] = body["model"]
    created = time.time() - age
    ids = [sim.create(body["kind"], validate_create(body["kind"], params), created).id
           for _ in range(count)]
    return _json(200, {"ids": ids})


async def _admin_truth(request: web.Request) -> web.Response:
    return _json(200, request.app["sim"].truth())


async def _admin_answers(request: web.Request) -> web.Response:
    """The last answers of the OpenAI-compatible routes, oldest first: body as sent (UTF-8 text)."""
    return _json(200, [{"time": at, "path": path, "status": status, "body": body.decode("utf-8", "replace")}
                       for at, path, status, body in request.app["sim"].sync_answers])


async def _index(request: web.Request) -> web.Response:
    sim: Simulator = request.app["sim"]
    lines = ["Distribute.ai async API simulator", "",
             f"jobs: {len(sim.jobs)}", f"timestamps: {sim.timestamps}", f"speed: {sim.speed:g}",
             "endpoints: POST /async/{chat,images,speech}/{create,result}",
             f"           POST {CHAT_PATH}, POST {IMAGES_PATH} (OpenAI-compatible, synchronous)",
             "admin: GET/POST/DELETE /__admin/faults, GET /__admin/stats, POST /__admin/stats/reset,",
             "       POST /__admin/jobs {kind,count,age_seconds,model}, GET /__admin/jobs,",
             "       GET /__admin/answers (the last OpenAI-compatible answers, as sent)"]
    return web.Response(text="\n".join(lines) + "\n")


# ---- the generator -------------------------------------------------------------------------------

async def generate(sim: Simulator, rate: float, ids_out: Path | None,
                   rng: random.Random | None = None) -> None:
    """Create jobs at `rate` per second across the kinds, appending each id to `ids_out/<kind>.txt`."""
    draw = rng or random.Random()
    if ids_out is not None:
        ids_out.mkdir(parents=True, exist_ok=True)
    files = {kind: (ids_out / f"{kind}.txt") if ids_out else None for kind in KINDS}
    while True:
        await asyncio.sleep(draw.expovariate(rate))
        kind = draw.choices(KINDS, weights=(5, 2, 3))[0]
        job = sim.create(kind, validate_create(kind, SAMPLE_CREATE_BODIES[kind]))
        path = files[kind]
        if path is not None:
            with path.open("a", encoding="utf-8") as out:
                out.write(job.id + "\n")
