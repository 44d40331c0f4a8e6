"""The pieces that make several replicas one: built together, handed to the wiring as one object."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from exporter.config import Config
from exporter.sources.handoff import HandoffRoute
from exporter.sources.handoff import routes as handoff_routes
from exporter.sources.handoff_sender import Sender
from exporter.sources.intake import ApplyObserved, Created, Observed, OwnerSide
from exporter.sources.peers import PeerAuth, PeerClient
from exporter.sources.routing import Router
from exporter.tracking.jobs import Job, TrackedJobs
from exporter.tracking.outbox import HandoffStats, Outbox
from exporter.tracking.ownership import Ring

log = logging.getLogger("distribute.handoff")


class Replication:
    """Outbox, sender, router and the hand-off route of one replica among its peers."""

    def __init__(self, config: Config, ring: Ring, jobs: TrackedJobs, schedule: Callable[[Job], None],
                 current: Callable[[], Config], local_created: Created, local_observed: Observed,
                 apply_observed: ApplyObserved, handed_created: Created) -> None:
        """`local_created`, `local_observed`: the proxy's two hooks as implemented here;
        `apply_observed` is `local_observed` done before it returns, and `handed_created` is
        `local_created` for a create handed over by a peer (which may come again)."""
        self.ring = ring
        self.stats = HandoffStats()
        self.outbox = Outbox(jobs.store)
        self.client = PeerClient(ring, lambda: PeerAuth.from_config(current()), config.shard.handoff_timeout_seconds)
        self.sender = Sender(jobs.store, self.outbox, self.client, self.stats,
                             lambda: current().shard.handoff_max_backoff_seconds, jobs.flush)
        self.owner_side = OwnerSide(jobs, handed_created, apply_observed)
        self.router = Router(ring, jobs, self.outbox, self.owner_side, self.stats, self.sender.wake,
                             local_created, local_observed)
        self.jobs = jobs
        self.schedule = schedule
        self.current = current
        self.accepting = False
        self.resharding = False
        self._held: list[str] = []
        self.route = HandoffRoute(lambda: current().registration_token, self.owner_side, lambda: self.accepting,
                                  self.stats, self.status)

    def routes(self) -> Callable[[Any], None]:
        return handoff_routes(self.route)

    async def start(self) -> None:
        """After the state is loaded: hand away what this shard no longer owns, then take hand-offs."""
        store = self.outbox.store
        self.stats.pending = await store.call(self.outbox.count)
        self.resharding = await store.call(self.outbox.shard_count) != self.ring.count
        await self.router.reshard()
        self.accepting = True

    async def status(self) -> dict[str, Any]:
        pending = await self.outbox.store.call(self.outbox.pending_by_target)
        return {"count": self.ring.count, "pending": {str(k): v for k, v in pending.items()}}

    # -- after a change of shard count: ids from the config and ids files --------------------------
    @contextmanager
    def holding_new_ids(self) -> Iterator[None]:
        """While the config and ids files are read at a start after a change of shard count, hold
        back the first poll of ids new to this replica: an old owner may have counted one finished
        already, and its hand-off (taken over as final, never counted again) must come first."""
        if not self.resharding:
            yield
            return
        schedule_new = self.jobs.on_new
        hold_until = time.time() + self.current().shard.reshard_settle_seconds

        def hold(jobs: list[Job]) -> None:
            for job in jobs:
                if job.source == "config" or job.source.startswith("file"):
                    job.next_due = max(job.next_due, hold_until)
                    self._held.append(job.id)
            schedule_new(jobs)

        self.jobs.on_new = hold
        try:
            yield
        finally:
            self.jobs.on_new = schedule_new

    async def settle(self) -> None:
        """Release the held ids once every peer runs with this shard count and owes this shard
        nothing (or after shard.reshard_settle_seconds, whichever comes first)."""
        deadline = time.monotonic() + self.current().shard.reshard_settle_seconds
        while self._held and time.monotonic() < deadline and not await self._peers_settled():
            await asyncio.sleep(1.0)
        now = time.time()
        released = 0
        for job_id in self._held:
            job = self.jobs.open.get(job_id)
            if job is not None and job.next_due > now:  # still unfinished here, not taken over as final
                job.next_due = now
                self.jobs.touched(job)
                self.schedule(job)
                released += 1
        if self._held:
            log.info("peers settled after the change of shard count; polling %d held ids (%d came as final)",
                     released, len(self._held) - released)
        self._held = []

    async def _peers_settled(self) -> bool:
        for shard in range(self.ring.count):
            if shard == self.ring.index:
                continue
            answer = await self.client.status(shard)
            if (answer is None or answer.get("count") != self.ring.count or not answer.get("ready")
                    or (answer.get("pending") or {}).get(str(self.ring.index))):
                return False
        return True

    async def ask_owner(self, method: str, job_id: str) -> tuple[int, bytes, str]:
        return await self.client.job(self.ring.owner(job_id), job_id, method)

    def tasks(self) -> list[tuple[str, Any]]:
        return [("handoff-sender", self.sender.run()), ("handoff-settle", self.settle())]

    async def close(self) -> None:
        await self.client.close()
        await asyncio.sleep(0)
