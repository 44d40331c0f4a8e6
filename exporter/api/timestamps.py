"""Parsing and writing of the API's `created`/`finished` values.

The first published examples write ISO-8601 UTC strings with milliseconds; the later OpenAPI schema
declares a number without a unit. Numbers are taken as epoch milliseconds when they are too large to
be seconds of any plausible date, else as epoch seconds.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

# 1e11 seconds is the year 5138; 1e11 milliseconds is March 1973. No job runs in either, so the
# threshold cleanly separates the two units for every date this exporter will see.
_MS_THRESHOLD = 1e11


class TimestampError(ValueError):
    """A value that is not a timestamp in any of the API's formats."""


def parse_timestamp(value: object) -> float | None:
    """Epoch seconds for an API timestamp; None for an absent (None) value.

    Raises TimestampError for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TimestampError(f"not a timestamp: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
        if not math.isfinite(number) or number < 0:
            raise TimestampError(f"not a timestamp: {value!r}")
        return number / 1000.0 if number >= _MS_THRESHOLD else number
    if isinstance(value, str):
        return _parse_iso(value)
    raise TimestampError(f"not a timestamp: {type(value).__name__}")


def _parse_iso(text: str) -> float:
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        raise TimestampError(f"not an ISO-8601 timestamp: {text[:40]!r}") from None
    if parsed.tzinfo is None:  # the API writes UTC; a naive value is read as UTC, not local time
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_timestamp(epoch_seconds: float, style: str) -> str | float | int:
    """Write a timestamp the way the API does: 'iso', 'epoch-s' or 'epoch-ms'."""
    if style == "iso":
        moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if style == "epoch-s":
        return round(epoch_seconds, 3)
    if style == "epoch-ms":
        return int(round(epoch_seconds * 1000))
    raise ValueError(f"unknown timestamp style {style!r}")
