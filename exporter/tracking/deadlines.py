"""Jobs past their deadline: each job still unfinished `limit` seconds after its `created` is counted
once, in `distribute_jobs_deadline_exceeded_total{kind, group}`, so that a stuck queue burns an SLO's
error budget although no job finishes.

Which jobs were counted is not kept per job. One number is: the cutoff, a `created` time such that
every job created at or before it that was unfinished at its deadline has been counted. It only
grows, and it is persisted with the counter in the same transaction (both are job-derived counters of
JobAggregates), so after a restart or a `kill -9` a job is neither counted again nor forgotten:

- a sweep moves the cutoff to `now - limit` and counts the unfinished jobs created since the old one;
- a job whose `created` is first learned at or before the cutoff (it was tracked late) is counted
  then, if it is still unfinished, or if it finished more than `limit` after it was created;
- a job that finishes more than `limit` after `created`, before a sweep reached it, is counted then.

Keeping the cutoff in `created` time (rather than in deadline time) keeps it right when the limit is
changed: a shorter limit counts the jobs between the old and the new cutoff, a longer one waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from exporter import FINAL_STATUSES
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.created_index import CreatedIndex

if TYPE_CHECKING:
    from exporter.tracking.job import Job

DEFAULT_LIMIT = 3600.0


def already_counted(agg: JobAggregates, created: float | None) -> bool:
    """True when a job with this (previously known) `created` was counted, or could have been:
    unfinished jobs created at or before the cutoff all were."""
    return created is not None and created <= agg.deadline_cutoff_value


def on_answer(agg: JobAggregates, job: "Job", old_created: float | None, limit: float) -> None:
    """Count a job, once, from what an answer (already applied to `job`) says (see the module's rules)."""
    created, finished = job.created, job.finished
    if already_counted(agg, old_created) or created is None:
        return
    if job.status in FINAL_STATUSES:
        if finished is not None and finished - created > limit:
            agg.count_deadline(job.kind, job.group)
    elif created <= agg.deadline_cutoff_value:
        agg.count_deadline(job.kind, job.group)


def sweep(agg: JobAggregates, by_created: CreatedIndex, unfinished: Mapping[str, "Job"], cutoff: float) -> int:
    """Count the unfinished jobs created after the old cutoff and at or before `cutoff`, and move the
    cutoff there; answer how many were counted. Walks only those jobs, in `created` order."""
    old = agg.deadline_cutoff_value
    if cutoff <= old:
        return 0
    counted = 0
    for _created, job_id in by_created.keys.irange((old, "\uffff"), (cutoff, "\uffff"), inclusive=(False, True)):
        job = unfinished.get(job_id)
        if job is not None:
            agg.count_deadline(job.kind, job.group)
            counted += 1
    agg.move_deadline_cutoff(cutoff)
    return counted
