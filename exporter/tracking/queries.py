"""Finding tracked jobs by kind, group, model, status, source, age and duration, one page at a time.

Unfinished jobs come from memory (the poller's dictionary); finished ones from the state file,
through its partial indexes on finished rows (store.py), plus the finished jobs whose rows are not
written yet (the pending batch and the one being written), so that a job that finishes while a
client pages is always in exactly one of the two places. Both sides are read in the same order and
merged; a page ends at a position (the cursor) from which the next one goes on.

Order: by the sort column, ascending or descending, then by id ascending; jobs without a value of
the sort column (no `created` yet, no duration while unfinished) come after all the others.
Paging returns every job exactly once as long as a job's sort value does not change between pages:
`created` never changes once known; a job's duration appears when it finishes and `last_polled`
changes at every poll, so with those sorts a job may move across the cursor. The `last_polled` sorts
are for unfinished jobs only (the query parser sees to it): the file has no index for them.
"""

from __future__ import annotations

import heapq
import sqlite3
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable

from exporter.tracking.job import OPEN, Job
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.store import JOB_COLUMNS

# sort name -> (Job attribute and column, descending)
SORTS: dict[str, tuple[str, bool]] = {
    "created": ("created", False), "-created": ("created", True),
    "duration": ("duration", False), "-duration": ("duration", True),
    "last_polled": ("last_polled", False), "-last_polled": ("last_polled", True),
}
DEFAULT_SORT = "-created"

# A position in the order: (1 when the sort value is missing, else 0; the value, negated when
# descending; the id). Tuples compare in exactly the order the SQL below reads rows.
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


# ---- memory ------------------------------------------------------------------------------------

def _matches(q: JobQuery) -> Callable[[Job], bool]:
    """One predicate for the query's filters (built once: it runs for every unfinished job)."""
    checks: list[Callable[[Job], bool]] = []
    for attr, wanted in (("kind", q.kinds), ("group", q.groups), ("model", q.models),
                         ("status", q.statuses), ("source", q.sources)):
        if wanted:
            allowed = frozenset(wanted)
            checks.append(lambda j, a=attr, w=allowed: getattr(j, a) in w)
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
    return lambda j: all(check(j) for check in checks)


def memory_jobs(jobs: TrackedJobs, q: JobQuery) -> tuple[list[Job], set[str]]:
    """Up to limit+1 matching jobs held in memory, in order, past `q.after`; and the ids of the
    finished jobs in memory (their rows in the file may be older: the memory's copy wins)."""
    gone = jobs._deleted | set(jobs._retire) if jobs._deleted or jobs._retire else set()
    finished = {j.id: j for batch in (jobs.writing, jobs._pending) for j in batch.values()
                if j.final != OPEN and j.id not in gone}
    candidates: Iterable[Job] = jobs.open.values() if q.unfinished is not False else ()
    if q.unfinished is not True and finished:
        candidates = [*candidates, *finished.values()]
    if _has_filters(q):
        match = _matches(q)
        candidates = [j for j in candidates if match(j)]
    # Tight loops: with 100,000 unfinished jobs this is most of a request's time.
    column, descending = SORTS[q.sort]
    value = attrgetter(column)
    sign = -1.0 if descending else 1.0
    after = q.after
    want = q.limit + 1
    found: list[Job] = []
    if after is None or after[0] == 0:
        if after is None:
            keyed = [(sign * v, j.id, j) for j in candidates if (v := value(j)) is not None]
        else:
            mark = (after[1], after[2])
            keyed = [(k, j.id, j) for j in candidates
                     if (v := value(j)) is not None and (k := sign * v, j.id) > mark]
        found = [j for _, _, j in heapq.nsmallest(want, keyed)]
    if len(found) < want:
        start = after[2] if after is not None and after[0] == 1 else ""
        nulls = [(j.id, j) for j in candidates if value(j) is None and j.id > start]
        found += [j for _, j in heapq.nsmallest(want - len(found), nulls)]
    return found, set(finished)


def _has_filters(q: JobQuery) -> bool:
    return bool(q.kinds or q.groups or q.models or q.statuses or q.sources) or any(
        v is not None for v in (q.created_before, q.created_after, q.finished_after, q.min_duration))


# ---- the state file ------------------------------------------------------------------------------

def _where(q: JobQuery) -> tuple[list[str], list[Any]]:
    """The filters as SQL over finished rows (`final != 0` lets the partial indexes serve)."""
    clauses, args = ["final != 0"], []
    for column, wanted in (("kind", q.kinds), ("grp", q.groups), ("model", q.models),
                           ("status", q.statuses), ("source", q.sources)):
        if wanted:
            clauses.append(f"{column} IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
    for clause, value in (("created < ?", q.created_before), ("created > ?", q.created_after),
                          ("ended > ?", q.finished_after), ("duration >= ?", q.min_duration)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return clauses, args


def file_ids(db: sqlite3.Connection, q: JobQuery, count: int) -> list[tuple[Position, str]]:
    """Up to `count` finished jobs of the file in order past `q.after`: (position, id) pairs."""
    column, descending = SORTS[q.sort]
    clauses, args = _where(q)
    after = q.after
    found: list[tuple[Position, str]] = []
    if after is None or after[0] == 0:
        where, wargs = list(clauses), list(args)
        where.append(f"{column} IS NOT NULL")
        if after is not None:
            value = -after[1] if descending else after[1]
            op, strict = ("<=", "<") if descending else (">=", ">")
            where.append(f"{column} {op} ? AND ({column} {strict} ? OR id > ?)")
            wargs += [value, value, after[2]]
        order = f"{column} {'DESC' if descending else 'ASC'}, id ASC"
        sql = f"SELECT {column}, id FROM jobs WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        for value, job_id in db.execute(sql, (*wargs, count)):
            found.append(((0, -value if descending else value, job_id), job_id))
    if len(found) < count:
        where, wargs = list(clauses), list(args)
        where.append(f"{column} IS NULL")
        if after is not None and after[0] == 1:
            where.append("id > ?")
            wargs.append(after[2])
        sql = f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        found += [((1, 0.0, job_id), job_id) for (job_id,) in db.execute(sql, (*wargs, count - len(found)))]
    return found


def file_rows(db: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    sql = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id IN ({','.join('?' * len(ids))})"
    return {row[0]: dict(zip(JOB_COLUMNS, row)) for row in db.execute(sql, ids)}


# ---- both ------------------------------------------------------------------------------------------

async def find(jobs: TrackedJobs, q: JobQuery) -> Page:
    """One page of the jobs matching `q`."""
    in_memory, finished_here = memory_jobs(jobs, q)
    merged: dict[str, tuple[Position, Job | None]] = {j.id: (position(j, q.sort), j) for j in in_memory}
    if q.unfinished is not True:
        # Rows the memory also holds may come back from the file: ask for that many more.
        store = jobs.store
        count = q.limit + 1 + len(finished_here)
        gone = jobs._deleted | set(jobs._retire)
        for pos, job_id in await store.call(file_ids, store.db, q, count):
            if job_id not in merged and job_id not in finished_here and job_id not in gone \
                    and job_id not in jobs.open:
                merged[job_id] = (pos, None)
    ordered = sorted(merged.values(), key=itemgetter(0))
    page, more = ordered[:q.limit], len(ordered) > q.limit
    missing = [pos[2] for pos, job in page if job is None]
    rows = await jobs.store.call(file_rows, jobs.store.db, missing) if missing else {}
    out = [job if job is not None else Job.from_row(rows[pos[2]]) for pos, job in page
           if job is not None or pos[2] in rows]  # a row retired meanwhile is left out
    return Page(out, page[-1][0] if more and page else None)
