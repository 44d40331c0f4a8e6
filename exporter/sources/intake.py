"""What this replica does with an id it owns, from whichever way it came: the owner's side of a
registration, of a create or a result answer seen through the proxy, and of a hand-off.

`created` and `observe` follow the proxy decisions: a proxied create is tracked (and stored before
it returns) with its first poll `poll.interval_seconds` later, not at once; a 200 result answer the
application got is applied like a poll of the exporter's own, deferring the next one by
`poll.interval_seconds`. These are stand-ins for the proxy's own implementation of the two hooks:
`Replication` takes the proxy's instead when the wiring hands them over (`local_created`,
`local_observed`, `apply_observed`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from exporter.api.results import InvalidBody, parse_result
from exporter.tracking.jobs import Job, TrackedJobs

Created = Callable[[str, str, str, str | None], Awaitable[None]]  # job id, kind, group, model
Observed = Callable[[str, str, str, str | None, bytes], None]  # ... and the answer body
ApplyObserved = Callable[[str, str, str, str | None, bytes], Awaitable[None]]


class Intake:
    def __init__(self, jobs: TrackedJobs, schedule: Callable[[Job], None], interval: Callable[[], float],
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self.schedule = schedule
        self.interval = interval
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def registered(self, job_id: str, kind: str, group: str) -> None:
        await self.jobs.track([job_id], kind, group, "api", self.clock())

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        await self._track(job_id, kind, group, model or "")
        await self.jobs.flush()  # stored before the create's answer goes back

    def observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        """The hook's shape: applied by a task of its own, off the caller's path."""
        task = asyncio.get_running_loop().create_task(self.observe(job_id, kind, group, model, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def observe(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        try:
            result = parse_result(body)
        except InvalidBody:
            return  # the application got it; the exporter's own poll will learn what it means
        job = self.jobs.open.get(job_id) or await self._track(job_id, kind, group, model or "")
        if job is None or job.final:
            return  # final here already: counted once, never again
        if not result.model:
            result.model = job.model
        now = self.clock()
        self.jobs.apply(job, result, now)
        if not job.final:
            self._defer(job, now)

    async def take_over(self, job: Job) -> bool:
        return await self.jobs.take_over(job)

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


class OwnerSide:
    """The hand-off route's sink: the stand-in Intake, with the proxy's hooks in place of its own
    when they are given (so a handed-off create or answer is applied exactly as a local one)."""

    def __init__(self, intake: Intake, created: Created | None = None, apply_observed: ApplyObserved | None = None) -> None:
        self.intake = intake
        self._created = created or intake.created
        self._observe = apply_observed or intake.observe

    async def registered(self, job_id: str, kind: str, group: str) -> None:
        await self.intake.registered(job_id, kind, group)

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        await self._created(job_id, kind, group, model)

    async def observe(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        await self._observe(job_id, kind, group, model, body)

    async def take_over(self, job: Job) -> bool:
        return await self.intake.take_over(job)

    async def flush(self) -> int:
        return await self.intake.flush()
