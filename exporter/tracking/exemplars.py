"""Exemplars: for each duration bucket, a recent job that fell in it; and the latest finished job.

Metrics cannot carry job ids (one series per job), but an exemplar can: the OpenMetrics exposition
attaches `{job_id="<id>"}` to each bucket of `distribute_job_duration_seconds` and to
`distribute_jobs_finished_total`, so a latency spike on a dashboard leads to a job. Kept in memory
only: a restart starts with none, and the next finished jobs bring them back.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from exporter.tracking.aggregates import JobLabels


@dataclass(frozen=True, slots=True)
class Sighting:
    job_id: str
    value: float  # the job's duration (buckets) or 1 (the finished counter)
    at: float  # when it finished (Unix time)
    trace_id: str | None = None  # the job's trace (tracing.endpoint set): its id without dashes


class Exemplars:
    """The latest job per (labels, bucket) and per labels; bounded by the number of series."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets: dict[JobLabels, list[Sighting | None]] = {}
        self.finished: dict[JobLabels, Sighting] = {}
        self.traced = False  # tracing.endpoint set: each job's trace id goes with its job id

    def note(self, labels: JobLabels, job_id: str, duration: float | None, at: float) -> None:
        trace = job_id.replace("-", "") if self.traced else None
        self.finished[labels] = Sighting(job_id, 1.0, at, trace)
        if duration is None or duration < 0:
            return
        slots = self.buckets.get(labels)
        if slots is None:
            slots = self.buckets[labels] = [None] * (len(self.bounds) + 1)
        # The bucket Histogram.observe counts it in: the exemplar's value is <= its `le`.
        slots[bisect.bisect_left(self.bounds, duration)] = Sighting(job_id, duration, at, trace)
