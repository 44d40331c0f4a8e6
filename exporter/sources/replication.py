"""The pieces that make several replicas one: built together, handed to the wiring as one object."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from exporter.config import Config
from exporter.sources.handoff import HandoffRoute
from exporter.sources.handoff import routes as handoff_routes
from exporter.sources.handoff_sender import Sender
from exporter.sources.intake import ApplyObserved, Created, Intake, Observed, OwnerSide
from exporter.sources.peers import PeerAuth, PeerClient
from exporter.sources.routing import Router
from exporter.tracking.jobs import Job, TrackedJobs
from exporter.tracking.outbox import HandoffStats, Outbox
from exporter.tracking.ownership import Ring


class Replication:
    """Outbox, sender, router and the hand-off route of one replica among its peers."""

    def __init__(self, config: Config, ring: Ring, jobs: TrackedJobs, schedule: Callable[[Job], None],
                 current: Callable[[], Config], local_created: Created | None = None,
                 local_observed: Observed | None = None, apply_observed: ApplyObserved | None = None) -> None:
        """`local_created`, `local_observed` (the proxy's two hooks as implemented here) and
        `apply_observed` (the same as `local_observed`, done before it returns) replace the stand-ins."""
        self.ring = ring
        self.stats = HandoffStats()
        self.outbox = Outbox(jobs.store)
        self.client = PeerClient(ring, lambda: PeerAuth.from_config(current()), config.shard.handoff_timeout_seconds)
        self.intake = Intake(jobs, schedule, lambda: current().poll.interval_seconds)
        self.sender = Sender(jobs.store, self.outbox, self.client, self.stats,
                             lambda: current().shard.handoff_max_backoff_seconds, jobs.flush)
        self.owner_side = OwnerSide(self.intake, local_created, apply_observed)
        self.router = Router(ring, jobs, self.outbox, self.owner_side, self.stats, self.sender.wake,
                             local_created or self.intake.created, local_observed or self.intake.observed)
        self.accepting = False
        self.route = HandoffRoute(lambda: current().registration_token, self.owner_side, lambda: self.accepting,
                                  self.stats)

    def routes(self) -> Callable[[Any], None]:
        return handoff_routes(self.route)

    async def start(self) -> None:
        """After the state is loaded: hand away what this shard no longer owns, then take hand-offs."""
        self.stats.pending = await self.outbox.store.call(self.outbox.count)
        await self.router.reshard()
        self.accepting = True

    async def ask_owner(self, method: str, job_id: str) -> tuple[int, bytes, str]:
        return await self.client.job(self.ring.owner(job_id), job_id, method)

    def tasks(self) -> list[tuple[str, Any]]:
        return [("handoff-sender", self.sender.run())]

    async def close(self) -> None:
        await self.client.close()
        await asyncio.sleep(0)
