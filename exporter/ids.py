"""Job ids: the UUID v4 pattern the API enforces, and the one-id-per-line file format."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

# The exact pattern of the API's request schema (shared/distribute-api/README.md).
UUID4_PATTERN = r"^[a-fA-F0-9]{8}-[a-fA-F0-9]{4}-4[a-fA-F0-9]{3}-[89abAB][a-fA-F0-9]{3}-[a-fA-F0-9]{12}$"
_UUID4 = re.compile(UUID4_PATTERN)


def is_uuid4(value: object) -> bool:
    """True when `value` is a string the API would accept as a job id."""
    return isinstance(value, str) and _UUID4.match(value) is not None and not value.endswith("\n")


def normalise(job_id: str) -> str:
    """The canonical (lower-case) spelling, so that one job is never tracked twice."""
    return job_id.lower()


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of an ids file that is not a UUID v4."""

    line_no: int
    text: str


def parse_id_lines(lines: Iterable[str], first_line_no: int = 1) -> Iterator[str | BadLine]:
    """Yield the ids of an ids file (lower-cased) and a BadLine for each invalid line.

    One id per line; blank lines and everything after '#' are ignored.
    """
    for offset, raw in enumerate(lines):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if is_uuid4(text):
            yield normalise(text)
        else:
            yield BadLine(first_line_no + offset, text[:80])
