"""What this replica does with an id it owns, from whichever way it came: the owner's side of a
registration and of a hand-off. A create or a result answer seen through a proxy (this replica's or a
peer's) is applied by the proxy's own hooks (`ProxyTracking`), handed to `OwnerSide` by the wiring.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from exporter.tracking.jobs import Job, TrackedJobs

Created = Callable[[str, str, str, str | None], Awaitable[None]]  # job id, kind, group, model
Observed = Callable[[str, str, str, str | None, bytes], None]  # ... and the answer body
ApplyObserved = Callable[[str, str, str, str | None, bytes], Awaitable[None]]


class OwnerSide:
    """The hand-off route's sink: what the owner does with an id registered or held elsewhere, with
    the proxy's hooks for a handed-off create or answer (so it is applied exactly as a local one)."""

    def __init__(self, jobs: TrackedJobs, created: Created, apply_observed: ApplyObserved,
                 clock: Callable[[], float] = time.time) -> None:
        self.jobs = jobs
        self._created = created
        self._observe = apply_observed
        self.clock = clock

    async def registered(self, job_id: str, kind: str, group: str) -> None:
        await self.jobs.track([job_id], kind, group, "api", self.clock())

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        await self._created(job_id, kind, group, model)

    async def observe(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        await self._observe(job_id, kind, group, model, body)

    async def take_over(self, job: Job) -> bool:
        return await self.jobs.take_over(job)

    async def flush(self) -> int:
        return await self.jobs.flush()
