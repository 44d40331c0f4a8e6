"""The last hour in memory, for the status page's charts: a fixed-size ring of samples of the
aggregates (not of the jobs), taken every few seconds. Memory is bounded by the ring's size times
the number of kinds, statuses and duration buckets, whatever the number of jobs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from exporter import FINAL_STATUSES
from exporter.tracking.aggregates import ApiAggregates, JobAggregates

SAMPLE_SECONDS = 10.0
SAMPLES = 360  # one hour at SAMPLE_SECONDS


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    unfinished: dict[str, int]  # status -> jobs not yet final, all kinds
    finished: dict[str, int]  # kind -> jobs finished so far (a counter)
    durations: dict[str, tuple[int, ...]]  # kind -> jobs per duration bucket so far (not cumulative)
    requests: int  # result requests so far
    errors: int  # of which failed


def take(jobs: JobAggregates, api: ApiAggregates, at: float) -> Sample:
    return sample_of(jobs, at, sum(api.requests.values()), sum(api.errors.values()))


def sample_of(jobs: JobAggregates, at: float, requests: int, errors: int) -> Sample:
    """A sample of `jobs` with the API request totals given (with PostgreSQL: of every replica)."""
    unfinished: dict[str, int] = {}
    for (_kind, _group, _model, status), n in list(jobs.jobs.items()):
        if status not in FINAL_STATUSES and status != "NOT_FOUND":
            unfinished[status] = unfinished.get(status, 0) + n
    finished: dict[str, int] = {}
    for (kind, _group, _model, _status), n in list(jobs.finished.items()):
        finished[kind] = finished.get(kind, 0) + n
    durations: dict[str, list[int]] = {}
    for (kind, _group, _model, _status), histogram in list(jobs.durations.items()):
        into = durations.setdefault(kind, [0] * len(histogram.counts))
        for i, n in enumerate(histogram.counts):
            into[i] += n
    return Sample(at, unfinished, finished, {k: tuple(v) for k, v in durations.items()}, requests, errors)


class Timeline:
    """The ring. `sample` is called by the app every SAMPLE_SECONDS; the page reads `samples`."""

    def __init__(self, jobs: JobAggregates, api: ApiAggregates, size: int = SAMPLES) -> None:
        self.jobs = jobs
        self.api = api
        self.ring: deque[Sample] = deque(maxlen=size)

    def sample(self, at: float) -> None:
        self.ring.append(take(self.jobs, self.api, at))

    def samples(self, now: float) -> list[Sample]:
        """The ring and a sample of this moment, so that the charts reach up to now."""
        return [*self.ring, take(self.jobs, self.api, now)]
