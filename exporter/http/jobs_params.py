"""The query string of `GET /api/v1/jobs`: parsed and checked into a JobQuery, or one error naming
the parameter at fault. The cursor is opaque to clients: base64url of the sort and the position."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from multidict import MultiMapping

from exporter import KINDS
from exporter.tracking.queries import SORTS, JobQuery, Position

STATUSES = ("UNKNOWN", "CREATED", "QUEUED", "POSTPONED", "ASSIGNED_CONNECTIONS", "PROCESSING",
            "COMPLETED", "ERROR", "NOT_FOUND")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MULTI = {"kind": "kinds", "group": "groups", "model": "models", "status": "statuses", "source": "sources"}
TIMES = {"created_before": "created_before", "created_after": "created_after", "finished_after": "finished_after"}
SINGLE = {*TIMES, "unfinished", "min_duration_seconds", "sort", "limit", "cursor"}
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadParameter(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def parse_query(params: MultiMapping[str], now: Callable[[], float] = time.time) -> JobQuery:
    """The JobQuery the parameters ask for; BadParameter names the first one that is wrong."""
    for name in params:
        if name not in MULTI and name not in SINGLE:
            raise BadParameter(name, "unknown parameter")
    values: dict[str, Any] = {}
    for name, field in MULTI.items():
        given = tuple(v for v in params.getall(name, []))
        if any(not v or len(v) > 256 for v in given):
            raise BadParameter(name, "must be a non-empty string of at most 256 characters")
        if name == "kind" and any(v not in KINDS for v in given):
            raise BadParameter(name, f"must be one of {', '.join(KINDS)}")
        if name == "status" and any(v not in STATUSES for v in given):
            raise BadParameter(name, f"must be one of {', '.join(STATUSES)}")
        values[field] = given
    one = _singles(params)
    if "unfinished" in one:
        flag = one["unfinished"].lower()
        if flag not in ("true", "false"):
            raise BadParameter("unfinished", "must be true or false")
        values["unfinished"] = flag == "true"
    for name, field in TIMES.items():
        if name in one:
            values[field] = parse_time(name, one[name], now())
    if "min_duration_seconds" in one:
        values["min_duration"] = _number("min_duration_seconds", one["min_duration_seconds"], minimum=0.0)
    sort = one.get("sort", JobQuery.sort)
    if sort not in SORTS:
        raise BadParameter("sort", f"must be one of {', '.join(SORTS)}")
    values["sort"] = sort
    if sort.endswith("last_polled"):  # finished jobs are polled no more: no index for them
        if values.get("unfinished") is False:
            raise BadParameter("sort", "last_polled sorts unfinished jobs only")
        values["unfinished"] = True
    limit = one.get("limit", str(DEFAULT_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        raise BadParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    values["limit"] = int(limit)
    if "cursor" in one:
        values["after"] = decode_cursor(one["cursor"], sort)
    return JobQuery(**values)


def _singles(params: MultiMapping[str]) -> Mapping[str, str]:
    one = {}
    for name in SINGLE:
        given = params.getall(name, [])
        if len(given) > 1:
            raise BadParameter(name, "given more than once")
        if given:
            one[name] = given[0]
    return one


def _number(name: str, text: str, minimum: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(name, "must be a number") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise BadParameter(name, "must be a finite number" + (f" >= {minimum:g}" if minimum is not None else ""))
    return value


def parse_time(name: str, text: str, now: float) -> float:
    """Unix seconds, RFC 3339 (2026-11-24T08:00:00Z), or relative to now: -90s, -30m, -2h, -1d."""
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT[relative.group(2)]
    try:
        return _number(name, text)
    except BadParameter:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter(name, "must be Unix seconds, RFC 3339 or relative like -30m, -2h") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def encode_cursor(sort: str, after: Position) -> str:
    return _encode([sort, *after])


def decode_cursor(text: str, sort: str) -> Position:
    data = _decode(text)
    try:
        name, flag, value, job_id = data
        position = _position([flag, value, job_id])
        if name not in SORTS:
            raise ValueError
    except (ValueError, TypeError):
        raise BadParameter("cursor", "not a cursor this exporter gave out") from None
    if name != sort:
        raise BadParameter("cursor", f"was given out for sort={name}, not sort={sort}")
    return position


def _position(item: Any) -> Position:
    flag, value, job_id = item
    if flag not in (0, 1) or not isinstance(job_id, str) or not isinstance(value, (int, float)) \
            or isinstance(value, bool):
        raise ValueError
    return (flag, float(value), job_id)


def _encode(data: Any) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise BadParameter("cursor", "not a cursor this exporter gave out") from None
