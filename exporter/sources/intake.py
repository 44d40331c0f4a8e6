"""What this replica does with an id it owns, from whichever way it came: the owner's side of a
registration, of a create or a result answer seen through the proxy, and of a hand-off.

`created` and `observed` follow the proxy decisions: a proxied create is tracked with its first poll
`poll.interval_seconds` later (not at once), and a 200 result answer the application got is applied
like a poll of the exporter's own, deferring the next one by `poll.interval_seconds`. This is the
stand-in for the proxy's own implementation of those two callables until both are wired together
(see the Router): either serves as the owner's local side.
"""

from __future__ import annotations

import time
from typing import Callable

from exporter.api.results import InvalidBody, parse_result
from exporter.tracking.jobs import Job, TrackedJobs


class Intake:
    def __init__(self, jobs: TrackedJobs, schedule: Callable[[Job], None], interval: Callable[[], float],
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.schedule = schedule
        self.interval = interval
        self.clock = clock

    async def registered(self, job_id: str, kind: str, group: str) -> None:
        await self.jobs.track([job_id], kind, group, "api", self.clock())

    async def created(self, job_id: str, kind: str, group: str, model: str) -> None:
        await self._track(job_id, kind, group, model)

    async def observe(self, job_id: str, kind: str, group: str, model: str, body: bytes) -> None:
        try:
            result = parse_result(body)
        except InvalidBody:
            return  # the application got it; the exporter's own poll will learn what it means
        job = self.jobs.open.get(job_id) or await self._track(job_id, kind, group, model)
        if job is None or job.final:
            return  # final here already: counted once, never again
        if not result.model:
            result.model = job.model
        now = self.clock()
        self.jobs.apply(job, result, now)
        if not job.final:
            self._defer(job, now)

    async def adopt(self, job: Job) -> bool:
        return await self.jobs.adopt(job)

    async def flush(self) -> int:
        return await self.jobs.flush()

    async def _track(self, job_id: str, kind: str, group: str, model: str) -> Job | None:
        """Track a new id from the proxy, first poll deferred; None when it is known (and final)."""
        now = self.clock()
        accepted, _ = await self.jobs.track([job_id], kind, group, "proxy", now)
        job = self.jobs.open.get(job_id)
        if not accepted or job is None:
            return job
        if model and not job.model:
            old = job.labels
            job.model = model
            self.jobs.agg.move(old, job.labels)
        self._defer(job, now)
        return job

    def _defer(self, job: Job, now: float) -> None:
        job.interval = self.interval()
        job.next_due = now + job.interval
        self.jobs.touched(job)
        self.schedule(job)
