"""A query for tracked jobs (filters, order, page size, start) and the order's positions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from exporter import FINAL_STATUSES
from exporter.tracking.job import Job

FINAL = FINAL_STATUSES | {"NOT_FOUND"}

# sort name -> (Job attribute and column, descending)
SORTS: dict[str, tuple[str, bool]] = {
    "created": ("created", False), "-created": ("created", True),
    "duration": ("duration", False), "-duration": ("duration", True),
    "last_polled": ("last_polled", False), "-last_polled": ("last_polled", True),
}
DEFAULT_SORT = "-created"

# `source` values: what tracked a job ("config", "api", "proxy") or the ids file it came from
# ("file:<path>"); ANY_FILE asks for every ids file at once.
FILE_PREFIX = "file:"
ANY_FILE = "file"
SOURCES = ("config", "api", "proxy", ANY_FILE)

# A position in the order: (1 when the sort value is missing, else 0; the value, negated when
# descending; the id). Tuples compare in exactly the order the SQL of query_file.py reads rows.
Position = tuple[int, float, str]


@dataclass(frozen=True)
class JobQuery:
    """Filters (an empty tuple or None: no filter), order, page size and where the page starts."""

    kinds: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    unfinished: bool | None = None  # True: only unfinished jobs; False: only final ones
    created_before: float | None = None
    created_after: float | None = None
    finished_after: float | None = None  # `ended`: the API's finished time, or when NOT_FOUND was seen
    min_duration: float | None = None
    sort: str = DEFAULT_SORT
    limit: int = 100
    after: Position | None = None


@dataclass
class Page:
    jobs: list[Job] = field(default_factory=list)
    next: Position | None = None  # where the next page starts; None: this was the last


def position(job: Job, sort: str) -> Position:
    column, descending = SORTS[sort]
    value = getattr(job, column)
    if value is None:
        return (1, 0.0, job.id)
    return (0, -value if descending else value, job.id)


def matches(q: JobQuery) -> Callable[[Job], bool]:
    """One predicate for the query's filters (built once: it runs for every unfinished job)."""
    checks: list[Callable[[Job], bool]] = []
    for attr, wanted in (("kind", q.kinds), ("group", q.groups), ("model", q.models),
                         ("status", q.statuses)):
        if wanted:
            allowed = frozenset(wanted)
            checks.append(lambda j, a=attr, w=allowed: getattr(j, a) in w)
    if q.sources:
        sources = frozenset(q.sources)
        if ANY_FILE in sources:
            checks.append(lambda j, w=sources: j.source in w or j.source.startswith(FILE_PREFIX))
        else:
            checks.append(lambda j, w=sources: j.source in w)
    if q.created_before is not None:
        checks.append(lambda j, t=q.created_before: j.created is not None and j.created < t)
    if q.created_after is not None:
        checks.append(lambda j, t=q.created_after: j.created is not None and j.created > t)
    if q.finished_after is not None:
        checks.append(lambda j, t=q.finished_after: j.ended is not None and j.ended > t)
    if q.min_duration is not None:
        checks.append(lambda j, d=q.min_duration: j.duration is not None and j.duration >= d)
    if len(checks) == 1:
        return checks[0]

    def every(job: Job) -> bool:
        for check in checks:
            if not check(job):
                return False
        return True
    return every


def open_may_match(q: JobQuery) -> bool:
    """False when no unfinished job can match: a final status asked for, or a finish or duration."""
    if q.unfinished is False or q.finished_after is not None or q.min_duration is not None:
        return False
    return not q.statuses or any(s not in FINAL for s in q.statuses)


def has_filters(q: JobQuery) -> bool:
    return bool(q.kinds or q.groups or q.models or q.statuses or q.sources) or any(
        v is not None for v in (q.created_before, q.created_after, q.finished_after, q.min_duration))
