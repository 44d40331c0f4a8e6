"""The OpenAI-compatible routes as the simulator plays them: `POST /v1/chat/completions` and
`POST /v1/images/generations`, answered synchronously (no job id, the answer is the result).

Distribute.ai's pages list these routes ("OpenAI Compatible API": Chat -> Completions, Images ->
Generations) but the project's facts hold none of their fields, so every shape here, request checks,
answers, the error envelope and the `Bearer` form of the key, follows OpenAI's own API reference.
What is drawn (model profile, tokens, tool calls, image URLs) comes from the same per-model draws as
the async jobs (jobs.py), so both families of routes agree on models and sizes.
"""

from __future__ import annotations

import random
import string
import time
from typing import Any

from exporter.simulator.jobs import Job, chat_payload, draw_job, image_results

CHAT_PATH = "/v1/chat/completions"
IMAGES_PATH = "/v1/images/generations"
_ID_CHARS = string.ascii_letters + string.digits


class OpenAIRequestError(ValueError):
    """A request body OpenAI's reference says is refused with 400; `param` names the culprit."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope: `{"error": {message, type, param, code}}`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def authorized(header: str | None, key: str) -> bool:
    """The key as OpenAI clients send it (`Bearer <key>`) or raw, as the async API takes it."""
    if header is None:
        return False
    scheme, _, rest = header.partition(" ")
    return header == key or (scheme.lower() == "bearer" and rest.strip() == key)


def check_chat(body: object) -> dict[str, Any]:
    """The parameters a chat completion depends on; OpenAIRequestError when OpenAI would refuse it."""
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("model must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIRequestError("messages must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIRequestError(f"messages[{i}] must be an object with a role", f"messages[{i}]")
    if body.get("stream") is True:
        raise OpenAIRequestError("stream is not supported by this simulator: ask without stream", "stream")
    if body.get("n") not in (None, 1):
        raise OpenAIRequestError("n: only one choice (n=1) is supported by this simulator", "n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise OpenAIRequestError("max_completion_tokens must be a positive integer", "max_completion_tokens")
    return {"model": model, "messages": messages, "max_completion_tokens": limit}


def check_images(body: object) -> dict[str, Any]:
    """The parameters an image generation depends on; OpenAIRequestError when it would be refused."""
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object", None)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise OpenAIRequestError("model must be a non-empty string", "model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise OpenAIRequestError("prompt must be a non-empty string", "prompt")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise OpenAIRequestError("n must be an integer from 1 to 10", "n")
    size = body.get("size") or "768x768"
    width, _, height = str(size).partition("x")
    if size != "auto" and not (width.isdigit() and height.isdigit()):
        raise OpenAIRequestError("size must be auto or look like 768x768", "size")
    if body.get("response_format") not in (None, "url"):
        raise OpenAIRequestError("response_format: only url is supported by this simulator", "response_format")
    return {"model": model, "prompt": prompt, "n": n, "size": size}


def chat_completion(params: dict[str, Any], rng: random.Random, now: float | None = None) -> dict[str, Any]:
    """A `chat.completion` object for `params`, drawn from the model's profile (always completed)."""
    created = time.time() if now is None else now
    job = draw_job("chat", rng, created, params)
    drawn = chat_payload(job)
    choices = []
    for choice in drawn["choices"]:
        message = dict(choice["message"])
        if message.get("tool_calls"):
            message["content"] = None  # OpenAI's shape: no text beside tool calls
        choices.append({"index": choice["index"], "message": message, "logprobs": None,
                        "finish_reason": choice["finish_reason"]})
    return {"id": "chatcmpl-" + _draw_id(job), "object": "chat.completion", "created": int(created),
            "model": job.model, "choices": choices, "usage": drawn["usage"]}


def image_generation(params: dict[str, Any], rng: random.Random, now: float | None = None) -> dict[str, Any]:
    """An images answer for `params`: `created` and one `{url, revised_prompt}` per image asked for."""
    created = time.time() if now is None else now
    job = draw_job("images", rng, created, params)
    return {"created": int(created), "data": image_results(job)}


def _draw_id(job: Job) -> str:
    draw = random.Random(job.seed)
    return "".join(draw.choice(_ID_CHARS) for _ in range(29))
