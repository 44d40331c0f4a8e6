"""What the proxy reads of the OpenAI-compatible routes: `POST /v1/chat/completions` and
`POST /v1/images/generations`, which answer synchronously (no job id: the answer is the result).

Each call is counted once, when its answer has gone back, by kind, group, model and the status the
application got (the proxy's own 502/504/413 included); a 200's `usage` (chat) or `data` items
(images) are added by model. Nothing is tracked or stored: there is no job to poll. The paths are
the ones an OpenAI client sends with `base_url` ending in `/v1`, forwarded unchanged like any other.

Label values stay bounded whatever applications send: a model name becomes a label only once the
API answered 200 for it (a refused or failed call of a name never answered is counted as model "").
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from exporter.metrics.proxy import ProxyStats

log = logging.getLogger("distribute.proxy")

ROUTES = {"/v1/chat/completions": "chat", "/v1/images/generations": "images"}
MAX_MODEL = 128  # characters of a model name kept as a label value, as for proxied creates
MAX_KNOWN_MODELS = 1000  # model names asked for that the API answered 200; past this, no new ones

Readable = Callable[[bytes, str], "bytes | None"]  # (answer, Content-Encoding) -> the bytes to read


def openai_kind(method: str | bytes, target: str) -> str | None:
    """`chat` or `images` for a POST to an OpenAI-compatible route (query ignored), else None."""
    if method not in ("POST", b"POST"):
        return None
    return ROUTES.get(target.split("?", 1)[0])


class OpenAICounts:
    """Counts the calls of one proxy; remembers which model names may be label values."""

    def __init__(self, stats: ProxyStats, readable: Readable) -> None:
        self.stats = stats
        self.readable = readable
        self.models: dict[str, str] = {}  # model asked for -> the model a 200 answer named

    def call(self, kind: str, group: str, request_body: Callable[[], bytes | None]) -> OpenAICall:
        return OpenAICall(self, kind, group, request_body)

    def count(self, kind: str, group: str, request_body: bytes | None, status: int, answer: bytes | None,
              encoding: str) -> None:
        asked, stream = _request_fields(request_body)
        if status != 200:
            self.stats.openai_answered(kind, group, self.models.get(asked, ""), str(status))
            return
        known = self.models.get(asked) or asked  # the name a 200 answer gave it, when one did
        if stream or answer is None:
            # A stream (server-sent events) or an answer too long to keep: counted, its usage not read.
            self._counted(kind, group, asked, known, "200")
            return
        readable = self.readable(answer, encoding)
        read = _read_answer(kind, readable) if readable is not None else None
        if read is None:
            self.stats.error("observe")
            self._counted(kind, group, asked, known, "200")
            return
        named, tokens, results = read
        self._counted(kind, group, asked, named or known, "200", tokens, results)

    def _counted(self, kind: str, group: str, asked: str, model: str, code: str,
                 tokens: tuple[int, int] | None = None, results: int | None = None) -> None:
        if asked and asked not in self.models and len(self.models) < MAX_KNOWN_MODELS:
            self.models[asked] = model
        self.stats.openai_answered(kind, group, model, code, tokens, results)


class OpenAICall:
    """One request to an OpenAI-compatible route, as the proxy forwards it."""

    __slots__ = ("counts", "kind", "group", "request_body", "done")

    def __init__(self, counts: OpenAICounts, kind: str, group: str,
                 request_body: Callable[[], bytes | None]) -> None:
        self.counts, self.kind, self.group, self.request_body = counts, kind, group, request_body
        self.done = False

    def answered(self, status: int, answer: bytes | None = None, encoding: str = "identity") -> None:
        """The answer went back (or the proxy answered itself); counted once, never raises.
        `answer`: a 200's body when it was kept whole."""
        if self.done:
            return
        self.done = True
        try:
            self.counts.count(self.kind, self.group, self.request_body(), status, answer, encoding)
        except Exception:  # a bug must not reach the forwarding path
            self.counts.stats.error("observe")
            log.exception("counting a call of an OpenAI-compatible route failed kind=%s", self.kind)


def _request_fields(body: bytes | None) -> tuple[str, bool]:
    """The model the request asked for ("" when none or unreadable) and whether it asked for a stream."""
    data = json_object(body)
    if data is None:
        return "", False
    model = data.get("model")
    return (model[:MAX_MODEL] if isinstance(model, str) else ""), data.get("stream") is True


def _read_answer(kind: str, body: bytes) -> tuple[str | None, tuple[int, int] | None, int | None] | None:
    """(model named by the answer, (prompt, completion) tokens, result items) of a 200 answer, or None
    when it is not the OpenAI shape of its route."""
    data = json_object(body)
    if data is None:
        return None
    if kind == "images":
        items = data.get("data")
        return (None, None, len(items)) if isinstance(items, list) else None
    if not isinstance(data.get("choices"), list):
        return None
    model = data.get("model")
    named = model[:MAX_MODEL] if isinstance(model, str) and model else None
    return named, _usage(data.get("usage")), None


def _usage(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return None
    return prompt, completion


def json_object(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
