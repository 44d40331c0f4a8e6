"""The jobs of a query held in memory: the unfinished ones, and the finished ones whose rows the
state file may not have yet (the pending batch and the one being written).

Sorted by `created`, unfinished jobs are walked in the order of TrackedJobs.by_created from the
cursor on, so a page costs about its own length; other sorts scan the unfinished jobs once.
"""

from __future__ import annotations

import heapq
from itertools import chain
from operator import attrgetter
from typing import Callable, Iterable, Iterator

from exporter.tracking.job import OPEN, Job
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.query import SORTS, JobQuery, Position, has_filters, matches, open_may_match, position


def finished_in_memory(jobs: TrackedJobs, gone: set[str]) -> dict[str, Job]:
    """Finished jobs not (surely) in the file yet, but for `gone` (TrackedJobs.dropped); the
    memory's copy is the newer one."""
    return {j.id: j for batch in (jobs.writing, jobs._pending) for j in batch.values()
            if j.final != OPEN and j.id not in gone}


def valued(jobs: TrackedJobs, q: JobQuery, finished: dict[str, Job]) -> list[tuple[Position, Job]]:
    """Up to limit+1 matching jobs with a value of the sort column, in order, past the cursor."""
    if q.after is not None and q.after[0] == 1:
        return []  # the cursor is already among the jobs without a value
    match = matches(q) if has_filters(q) else None
    want = q.limit + 1
    found: list[tuple[Position, Job]] = []
    if q.unfinished is not True and finished:
        found += _scan(list(finished.values()), q, match, want)
    column = SORTS[q.sort][0]
    if q.unfinished is not False and open_may_match(q) and column != "duration":  # unfinished: no duration
        if column == "created":
            found += _walk(jobs, q, match, want)
        else:
            found += _scan(jobs.open.values(), q, match, want)
    return heapq.nsmallest(want, found, key=_first)


def _first(pair: tuple[Position, Job]) -> Position:
    return pair[0]


def _scan(candidates: Iterable[Job], q: JobQuery, match: Callable[[Job], bool] | None,
          want: int) -> list[tuple[Position, Job]]:
    column, descending = SORTS[q.sort]
    value = attrgetter(column)
    sign = -1.0 if descending else 1.0
    mark = (q.after[1], q.after[2]) if q.after is not None else None
    keyed = [(sign * v, j.id, j) for j in candidates
             if (v := value(j)) is not None and (match is None or match(j))]
    if mark is not None:
        keyed = [entry for entry in keyed if (entry[0], entry[1]) > mark]
    return [((0, k, i), j) for k, i, j in heapq.nsmallest(want, keyed)]


def _walk(jobs: TrackedJobs, q: JobQuery, match: Callable[[Job], bool] | None,
          want: int) -> list[tuple[Position, Job]]:
    """Unfinished jobs in `created` order from the cursor: stops after `want` matches."""
    descending = SORTS[q.sort][1]
    after = None if q.after is None else (-q.after[1] if descending else q.after[1], q.after[2])
    keys: Iterator[tuple[float, str]] = (jobs.by_created.descending(after) if descending
                                         else jobs.by_created.ascending(after))
    found: list[tuple[Position, Job]] = []
    open_jobs = jobs.open
    for created, job_id in keys:
        job = open_jobs.get(job_id)
        if job is None or job.created != created or (match is not None and not match(job)):
            continue
        found.append(((0, -created if descending else created, job_id), job))
        if len(found) >= want:
            break
    return found


def without_value(jobs: TrackedJobs, q: JobQuery, finished: dict[str, Job],
                  count: int) -> list[tuple[Position, Job]]:
    """Up to `count` matching jobs without a value of the sort column, by id, past the cursor."""
    column = SORTS[q.sort][0]
    value = attrgetter(column)
    match = matches(q) if has_filters(q) else None
    start = q.after[2] if q.after is not None and q.after[0] == 1 else ""
    sources: list[Iterable[Job]] = []
    if q.unfinished is not True:
        sources.append(finished.values())
    # Every unfinished job has a `created` once answered: skip the scan when the index says so.
    if q.unfinished is not False and open_may_match(q) and not (
            column == "created" and len(jobs.by_created) == len(jobs.open)):
        sources.append(jobs.open.values())
    keyed = [(j.id, j) for j in chain(*sources)
             if value(j) is None and j.id > start and (match is None or match(j))]
    return [(position(j, q.sort), j) for _, j in heapq.nsmallest(count, keyed)]
