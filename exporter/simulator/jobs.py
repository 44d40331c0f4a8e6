"""Simulated jobs: per-model duration and outcome distributions, the lifecycle, and result bodies.

A job's whole future is drawn when it is created (from a random generator seeded by the simulator's
seed and the job's sequence number), so the same seed gives the same ids, models, durations and
outcomes, and a job's status is a pure function of the wall-clock time since it was created.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from exporter.api.timestamps import format_timestamp


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How long a model's jobs wait and run (log-normal: median and sigma), and how often they fail."""

    name: str
    queue_median: float
    queue_sigma: float
    run_median: float
    run_sigma: float
    error_ratio: float
    postpone_ratio: float = 0.05
    weight: float = 1.0


# "Llama-3.1 8B" and "Chatterbox" are the model names the API reference shows; the others are
# plausible stand-ins so that dashboards have several models per kind to draw.
PROFILES: dict[str, tuple[ModelProfile, ...]] = {
    "chat": (
        ModelProfile("Llama-3.1 8B", 2.0, 1.0, 8.0, 1.0, 0.03, weight=3),
        ModelProfile("Llama-3.3 70B", 4.0, 1.0, 25.0, 1.1, 0.05, weight=2),
        ModelProfile("Qwen2.5 7B", 2.0, 0.9, 6.0, 0.9, 0.04),
    ),
    "images": (
        ModelProfile("FLUX.1 schnell", 3.0, 0.8, 15.0, 0.5, 0.04, weight=2),
        ModelProfile("SDXL", 3.0, 0.8, 25.0, 0.5, 0.06),
    ),
    "speech": (
        ModelProfile("Chatterbox", 1.0, 0.7, 3.0, 0.5, 0.02, weight=3),
        ModelProfile("Kokoro", 1.0, 0.7, 2.0, 0.5, 0.03),
    ),
}

MAX_PHASE_SECONDS = 2 * 3600.0  # no job waits or runs longer than this, however long the tail
STATUSES_IN_ORDER = ("CREATED", "QUEUED", "POSTPONED", "ASSIGNED_CONNECTIONS", "PROCESSING")


def profile_for(kind: str, model: str | None, rng: random.Random) -> ModelProfile:
    """The named model's profile, or one drawn by weight when no (or an unknown) model is named."""
    profiles = PROFILES[kind]
    for profile in profiles:
        if profile.name == model:
            return profile
    chosen = rng.choices(profiles, weights=[p.weight for p in profiles])[0]
    if model:  # an unknown model name keeps its name but behaves like a known one
        return ModelProfile(model, chosen.queue_median, chosen.queue_sigma, chosen.run_median,
                            chosen.run_sigma, chosen.error_ratio, chosen.postpone_ratio)
    return chosen


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return min(MAX_PHASE_SECONDS, rng.lognormvariate(0.0, sigma) * median)


@dataclass(slots=True)
class Job:
    """One simulated job; `phases` holds (seconds after creation, status entered) in order."""

    id: str
    kind: str
    model: str
    created: float
    phases: tuple[tuple[float, str], ...]
    seed: int
    params: dict[str, Any]

    @property
    def duration(self) -> float:
        """Seconds from creation to the final status."""
        return self.phases[-1][0]

    @property
    def outcome(self) -> str:
        return self.phases[-1][1]

    def status_at(self, now: float, speed: float = 1.0) -> str:
        """The status at wall-clock `now`; `speed` > 1 runs the lifecycle that many times faster."""
        elapsed = (now - self.created) * speed
        current = "CREATED"
        for offset, status in self.phases:
            if elapsed < offset:
                break
            current = status
        return current

    def finished_at(self, speed: float = 1.0) -> float:
        return self.created + self.duration / speed


def draw_job(kind: str, rng: random.Random, created: float, params: dict[str, Any]) -> Job:
    """Draw a new job's id, model, phase durations and outcome from `rng`."""
    job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    profile = profile_for(kind, params.get("model"), rng)
    offset = rng.uniform(0.05, 0.5)
    phases = [(offset, "QUEUED")]
    offset += _lognormal(rng, profile.queue_median, profile.queue_sigma)
    if rng.random() < profile.postpone_ratio:
        phases.append((offset, "POSTPONED"))
        offset += _lognormal(rng, profile.queue_median * 3, profile.queue_sigma)
    phases.append((offset, "ASSIGNED_CONNECTIONS"))
    offset += rng.uniform(0.1, 1.0)
    phases.append((offset, "PROCESSING"))
    run = _lognormal(rng, profile.run_median, profile.run_sigma)
    failed = rng.random() < profile.error_ratio
    offset += run * rng.uniform(0.1, 0.9) if failed else run
    phases.append((offset, "ERROR" if failed else "COMPLETED"))
    return Job(job_id, kind, profile.name, created, tuple(phases), rng.getrandbits(64), params)


def result_body(job: Job, now: float, speed: float, style: str) -> dict[str, Any]:
    """The 200 answer of `/async/<kind>/result` for `job` at wall-clock `now`."""
    status = job.status_at(now, speed)
    body: dict[str, Any] = {
        "id": job.id,
        "status": status,
        "created": format_timestamp(job.created, style),
        "model": job.model,
    }
    final = status in ("COMPLETED", "ERROR")
    if final:
        body["finished"] = format_timestamp(job.finished_at(speed), style)
    if job.kind == "chat":
        body["service_tier"] = "default"
        if status == "COMPLETED":
            body.update(chat_payload(job))
    elif job.kind == "images":
        body["results"] = image_results(job) if status == "COMPLETED" else []
    else:  # speech: the schema requires `results` in every answer
        body["results"] = _speech_results(job) if status == "COMPLETED" else []
    return body


def chat_payload(job: Job) -> dict[str, Any]:
    rng = random.Random(job.seed)
    messages = job.params.get("messages") or []
    prompt_chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    prompt_tokens = max(1, prompt_chars // 4) + 8 * len(messages) + rng.randint(0, 400)
    limit = job.params.get("max_completion_tokens") or 2048
    completion_tokens = max(1, min(int(limit), int(rng.lognormvariate(0, 0.9) * 180)))
    if rng.random() < 0.2:
        message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{rng.getrandbits(48):012x}", "type": "function",
             "function": {"name": rng.choice(["get_weather", "search_docs", "run_sql"]),
                          "arguments": '{"query": "simulated"}'}}
            for _ in range(rng.randint(1, 3))]}
        choice = {"finish_reason": "tool_calls", "index": 0, "message": message}
    else:
        text = "Simulated answer. " * max(1, completion_tokens // 40)
        choice = {"finish_reason": "stop", "index": 0,
                  "message": {"role": "assistant", "content": text.strip()}}
    return {
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "choices": [choice],
    }


def image_results(job: Job) -> list[dict[str, str]]:
    count = int(job.params.get("n") or 1)
    prompt = str(job.params.get("prompt") or "a simulated picture")
    return [{"url": f"https://cdn.simulator.invalid/images/{job.id}/{i}.png",
             "revised_prompt": f"{prompt[:200]}, highly detailed"} for i in range(count)]


def _speech_results(job: Job) -> list[dict[str, str]]:
    return [{"url": f"https://cdn.simulator.invalid/speech/{job.id}.wav"}]


# ---- create bodies ---------------------------------------------------------------------------

class CreateBodyError(ValueError):
    """A create request whose body the real API would refuse with 400."""


def validate_create(kind: str, body: object) -> dict[str, Any]:
    """Check a `/async/<kind>/create` body and return the parameters the job depends on."""
    if not isinstance(body, dict):
        raise CreateBodyError("body must be a JSON object")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise CreateBodyError("model must be a non-empty string")
    return {"model": model, **_CREATE_CHECKS[kind](body)}


def _check_chat(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise CreateBodyError("messages must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise CreateBodyError(f"messages[{i}] must be an object with a role")
    limit = body.get("max_completion_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise CreateBodyError("max_completion_tokens must be a positive integer")
    return {"messages": messages, "max_completion_tokens": limit}


def _check_images(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise CreateBodyError("prompt must be a non-empty string")
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise CreateBodyError("n must be an integer from 1 to 10")
    size = body.get("size", "768x768")
    width, _, height = str(size).partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise CreateBodyError("size must look like 768x768")
    return {"prompt": prompt, "n": n, "size": size}


def _check_speech(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("input")
    if not isinstance(text, str) or not 2 <= len(text) <= 4096:
        raise CreateBodyError("input must be a string of 2 to 4096 characters")
    voice = body.get("voice", "leo")
    if voice not in ("leo", "nora"):
        raise CreateBodyError("voice must be leo or nora")
    return {"input_chars": len(text), "voice": voice}


_CREATE_CHECKS = {"chat": _check_chat, "images": _check_images, "speech": _check_speech}

SAMPLE_CREATE_BODIES: dict[str, dict[str, Any]] = {
    "chat": {"model": None, "messages": [{"role": "user", "content": "Summarise last night's logs."}],
             "max_completion_tokens": 1024},
    "images": {"model": None, "prompt": "a lighthouse at dawn", "n": 2},
    "speech": {"model": None, "input": "Your nightly report is ready.", "voice": "nora"},
}
"""Bodies the generator submits, as a client would (model None: drawn by the profiles' weights)."""
