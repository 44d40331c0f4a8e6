"""Turning a 200 answer of `/async/<kind>/result` into the facts the exporter counts.

Everything the API sends is untrusted: a body that is not JSON, or not the documented shape, raises
InvalidBody with a short reason, and never anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from exporter.api.timestamps import TimestampError, parse_timestamp

# An unknown status is kept as a label value, so it must look like one of the API's statuses; this
# keeps garbage (or a hostile value) from minting unbounded or unreadable series.
_STATUS = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")
_MAX_LABEL = 128


class InvalidBody(ValueError):
    """A body that is not JSON or not the documented shape of a job."""


@dataclass(slots=True)
class JobResult:
    """What one answer says about a job."""

    status: str
    model: str = ""
    created: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    results: int = 0
    tool_calls: int = 0
    choices: dict[str, int] = field(default_factory=dict)  # finish_reason -> count


def parse_result(body: bytes, kind: str | None = None) -> JobResult:
    """Parse and check one answer of `kind`'s result endpoint; raise InvalidBody (only) when it
    cannot be used."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidBody("not JSON") from None
    if not isinstance(data, dict):
        raise InvalidBody("not a JSON object")
    # The schema requires an id string; it is not compared with the one asked for, so that a fixed
    # answer (a load-test server, a cache in front of the API) still counts.
    if not isinstance(data.get("id"), str):
        raise InvalidBody("id missing")
    status = data.get("status")
    if not isinstance(status, str) or not _STATUS.match(status):
        raise InvalidBody("status missing or not a status")
    result = JobResult(status=status, model=_model(data.get("model")))
    try:
        result.created = parse_timestamp(data.get("created"))
        result.finished = parse_timestamp(data.get("finished"))
    except TimestampError as exc:
        raise InvalidBody(str(exc)) from None
    if result.created is None:
        raise InvalidBody("created missing")
    _read_usage(data.get("usage"), result)
    _read_choices(data.get("choices"), result)
    # A chat answer has no `results` in the API's schema, which allows extra keys: whatever a chat
    # answer carries under that name is not a result (images and speech answers must give an array).
    if kind != "chat":
        _read_results(data.get("results"), result)
    return result


def _model(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidBody("model not a string")
    return value[:_MAX_LABEL]  # a label value, not a payload: keep it short


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise InvalidBody(f"{what} not a non-negative number")
    return int(value)


def _read_usage(usage: Any, result: JobResult) -> None:
    if usage is None:
        return
    if not isinstance(usage, dict):
        raise InvalidBody("usage not an object")
    result.prompt_tokens = _count(usage.get("prompt_tokens", 0), "usage.prompt_tokens")
    result.completion_tokens = _count(usage.get("completion_tokens", 0), "usage.completion_tokens")


def _read_choices(choices: Any, result: JobResult) -> None:
    if choices is None:
        return
    if not isinstance(choices, list):
        raise InvalidBody("choices not an array")
    for choice in choices:
        if not isinstance(choice, dict):
            raise InvalidBody("choices[] not an object")
        reason = choice.get("finish_reason")
        reason = reason if isinstance(reason, str) and 0 < len(reason) <= 40 else "unknown"
        result.choices[reason] = result.choices.get(reason, 0) + 1
        message = choice.get("message")
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if isinstance(calls, list):
            result.tool_calls += len(calls)


def _read_results(items: Any, result: JobResult) -> None:
    if items is None:
        return
    if not isinstance(items, list):
        raise InvalidBody("results not an array")
    result.results = len(items)
