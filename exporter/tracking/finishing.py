"""What a job's final answer adds to the job-derived counters, as numbers one can add up.

Both backends count a final answer once; PostgreSQL adds these deltas to shared rows in the same
transaction that marks the job final, so the counters can be summed by any replica (and across
SQLite files by `state export`). A histogram becomes one row per bucket (keyed by its `le`), its
sum and its count: additions commute, a JSON blob of counts would not.
"""

from __future__ import annotations

from typing import Iterable

from exporter import FINAL_STATUSES
from exporter.api.results import JobResult
from exporter.config.pricing import PriceTable
from exporter.tracking.aggregates import Histogram, JobAggregates
from exporter.tracking.cost import charge
from exporter.tracking.job import FINISHED, GONE, Job

Delta = tuple[str, tuple[str, ...], float]  # family, labels, amount

# Families whose series are plain numbers in JobAggregates (durations are split up, see below).
PLAIN_FAMILIES = ("finished", "tokens", "results", "choices", "tool_calls", "cost", "unpriced", "closed")


def finish(job: Job, result: JobResult | None, bounds: tuple[float, ...], prices: PriceTable | None,
           now: float) -> list[Delta]:
    """Mark `job` final with `result` (as TrackedJobs does; None: NOT_FOUND past its grace) and
    answer what that adds to the counters."""
    scratch = JobAggregates(bounds)
    if result is not None:
        job.status, job.model = result.status, result.model or job.model
        job.created, job.finished = result.created, result.finished
    else:
        job.status = "NOT_FOUND"
    if result is not None and result.status in FINAL_STATUSES:
        job.final, job.ended = FINISHED, result.finished or now
        job.prompt_tokens, job.completion_tokens = result.prompt_tokens, result.completion_tokens
        job.results, job.tool_calls, job.choices = result.results, result.tool_calls, result.choices or None
        duration = (result.finished - result.created) if result.finished and result.created else None
        job.duration = duration if duration is not None and duration >= 0 else None
        scratch.record_finished(job.labels, duration, result.prompt_tokens, result.completion_tokens,
                                result.results, result.choices, result.tool_calls)
        if prices is not None:
            charge(job, prices, scratch, now)
    else:  # NOT_FOUND past its grace
        job.final, job.ended = GONE, now
    scratch.close(job.labels)
    return deltas(scratch)


def deltas(agg: JobAggregates) -> list[Delta]:
    """Every non-zero series of `agg`'s counters as additive rows."""
    out: list[Delta] = []
    for family in PLAIN_FAMILIES:
        out.extend((family, labels, float(v)) for labels, v in getattr(agg, family).items() if v)
    for labels, hist in agg.durations.items():
        out.extend(histogram_rows(labels, hist))
    return out


def histogram_rows(labels: tuple[str, ...], hist: Histogram) -> list[Delta]:
    rows: list[Delta] = []
    for (le, _), n in zip(hist.cumulative(), hist.counts):
        if n:
            rows.append(("duration_bucket", (*labels, le), float(n)))
    if hist.count:
        rows.append(("duration_sum", labels, float(hist.total)))
        rows.append(("duration_count", labels, float(hist.count)))
    return rows


def restore(agg: JobAggregates, rows: Iterable[Delta]) -> int:
    """Put summed rows back into `agg`; answer how many bucket rows matched no configured bucket."""
    les = {le: i for i, (le, _) in enumerate(Histogram(agg.bounds).cumulative())}
    unmatched = 0
    for family, labels, value in rows:
        if family in PLAIN_FAMILIES:
            getattr(agg, family)[labels] = value if family == "cost" else int(value)
        elif family == "duration_bucket":
            index = les.get(labels[-1])
            if index is None:
                unmatched += 1
                continue
            agg.duration_histogram(labels[:-1]).counts[index] = int(value)  # type: ignore[arg-type]
        elif family == "duration_sum":
            agg.duration_histogram(labels).total = value  # type: ignore[arg-type]
        elif family == "duration_count":
            agg.duration_histogram(labels).count = int(value)  # type: ignore[arg-type]
    agg.version += 1
    return unmatched


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES
