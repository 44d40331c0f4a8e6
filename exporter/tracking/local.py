"""The JobStore of one process: the tracked jobs in memory with the SQLite file behind them.

The poller of a single replica keeps its own heap of due jobs (polling/poller.py), as before; this
gives the same words as the PostgreSQL store (register, claim for a lease, apply under the claim's
epoch, count a final answer once), so that both are held to one contract and callers that need
only those words need not know which backend they have.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.contract import Applied, Claim
from exporter.tracking.job import Job
from exporter.tracking.jobs import TrackedJobs


class LocalJobStore:
    def __init__(self, tracked: TrackedJobs, clock: Callable[[], float] = time.time) -> None:
        self.tracked = tracked
        self.clock = clock
        self._epochs: dict[str, int] = {}  # leases handed out, per job (only while it is unfinished)

    async def register(self, ids: Iterable[str], kind: str, group: str, source: str) -> tuple[list[str], int]:
        return await self.tracked.track(ids, kind, group, source, self.clock())

    async def get(self, job_id: str) -> Job | None:
        return await self.tracked.lookup(job_id)

    async def claim(self, limit: int, lease: float) -> list[Claim]:
        now = self.clock()
        due = sorted((j for j in self.tracked.open.values() if j.next_due <= now), key=lambda j: j.next_due)
        claims = []
        for job in due[:limit]:
            epoch = self._epochs.get(job.id, 0) + 1
            self._epochs[job.id] = epoch
            job.next_due = now + lease
            self.tracked.touched(job)
            claims.append(Claim(job, epoch, now))
        return claims

    async def apply(self, claim: Claim, result: JobResult, delay: float) -> Applied:
        job = self.tracked.open.get(claim.job.id)
        if job is None:
            return await self._gone(claim.job.id)
        if self._epochs.get(job.id) != claim.epoch:
            return Applied.STALE
        return self._apply(job, result, delay)

    async def apply_final(self, job_id: str, result: JobResult) -> Applied:
        job = self.tracked.open.get(job_id)
        if job is None:
            return await self._gone(job_id)
        return self._apply(job, result, 0.0)

    def _apply(self, job: Job, result: JobResult, delay: float) -> Applied:
        now = self.clock()
        self.tracked.apply(job, result, now)
        if job.final:
            self._epochs.pop(job.id, None)
            return Applied.FINAL
        job.errors, job.interval, job.next_due = 0, delay, now + delay
        self.tracked.touched(job)
        return Applied.MOVED

    async def _gone(self, job_id: str) -> Applied:
        return Applied.UNKNOWN if await self.tracked.lookup(job_id) is None else Applied.ALREADY_FINAL

    async def facts(self) -> JobAggregates:
        return self.tracked.agg

    def is_current(self, job_id: str, created: float) -> bool:
        return self.tracked.is_current(job_id, created)
