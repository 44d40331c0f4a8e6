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

from operator import itemgetter

from exporter.tracking import query_file, query_memory
from exporter.tracking.job import Job
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.query import (DEFAULT_SORT, FILE_PREFIX, SORTS, SOURCES, JobQuery, Page,  # noqa: F401 (the interface)
                                     Position)


async def find(jobs: TrackedJobs, q: JobQuery) -> Page:
    """One page of the jobs matching `q`: memory and file merged in order, memory winning."""
    want = q.limit + 1
    gone = jobs.dropped()
    finished = query_memory.finished_in_memory(jobs, gone)
    merged: dict[str, tuple[Position, Job | None]] = {
        j.id: (pos, j) for pos, j in query_memory.valued(jobs, q, finished)}
    if q.unfinished is not True:
        # Rows the memory also holds may come back from the file: ask for that many more.
        store = jobs.store
        for pos, job_id in await store.call(query_file.file_ids, store.db, q, want + len(finished)):
            if job_id not in merged and job_id not in finished and job_id not in gone \
                    and job_id not in jobs.open:
                merged[job_id] = (pos, None)
    ordered = sorted(merged.values(), key=itemgetter(0))
    if sum(1 for pos, _ in ordered[:want] if pos[0] == 0) < want:
        # Short of jobs with a value: those without one come next (rare: a scan of memory).
        extra = query_memory.without_value(jobs, q, finished, want)
        ordered = sorted([*ordered, *((p, j) for p, j in extra if j.id not in merged)], key=itemgetter(0))
    page, more = ordered[:q.limit], len(ordered) > q.limit
    missing = [pos[2] for pos, job in page if job is None]
    rows = await jobs.store.call(query_file.file_rows, jobs.store.db, missing, jobs.store.prices) if missing else {}
    out = [job if job is not None else Job.from_row(rows[pos[2]]) for pos, job in page
           if job is not None or pos[2] in rows]  # a row retired meanwhile is left out
    return Page(out, page[-1][0] if more and page else None)
