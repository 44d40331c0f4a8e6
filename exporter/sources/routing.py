"""Routing by ownership: an id this shard owns is applied here; one another shard owns is queued
durably for its owner (the outbox) and never waits for it.

The proxy gets `created` and `observed` from here (they wrap the local implementation), the
registration route `hand_off`, and start-up `reshard`: after a change of shard count, every id held
here that another shard now owns goes to it with its whole state, and is forgotten here once the
entry is in the outbox (in the same transaction that deletes it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from exporter.sources.handoff import Sink, apply, entry, state_of
from exporter.sources.intake import Created, Observed
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.outbox import HandoffStats, Outbox
from exporter.tracking.proxied import GroupCommit
from exporter.tracking.ownership import Ring

log = logging.getLogger("distribute.handoff")

Row = tuple[str, int, str, float]  # job id, target shard, payload, next_try
MAX_HANDED_ANSWER = 256 * 1024  # base64 makes it a third larger; the owner's body limit is 1 MiB by default


class Router:
    def __init__(self, ring: Ring, jobs: TrackedJobs, outbox: Outbox, local: Sink, stats: HandoffStats,
                 wake: Callable[[], None], local_created: Created, local_observed: Observed,
                 clock: Callable[[], float] = time.time) -> None:
        self.ring = ring
        self.jobs = jobs
        self.outbox = outbox
        self.local = local  # the owner's side, for what the outbox owes this shard after a reshard
        self.local_created = local_created
        self.local_observed = local_observed
        self.stats = stats
        self.wake = wake
        self.clock = clock
        self._commit: GroupCommit[Row] = GroupCommit(lambda rows: jobs.store.call(outbox.add, rows), "handoff-commit")

    def _queue(self, job_id: str, payload: str) -> None:
        self.jobs.queue_handoff(job_id, self.ring.owner(job_id), payload, self.clock())
        self.stats.pending += 1

    # -- the proxy's callables -------------------------------------------------------------------
    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        """A create answered through the proxy: stored here or in the outbox before this returns."""
        if self.ring.owns(job_id):
            await self.local_created(job_id, kind, group, model)
            return
        row = (job_id, self.ring.owner(job_id), entry("created", job_id, kind, group, model or "", "proxy"),
               self.clock())
        try:
            await self._commit.add(row)  # concurrent creates share one transaction
        except Exception as exc:  # the disk refuses: the next flush retries it; the answer goes back
            log.error("hand-off of a proxied create not stored before its answer job_id=%s: %s", job_id, exc)
            self.jobs.queue_handoff(*row)
        self.stats.pending += 1
        self.wake()

    def observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        """A 200 result answer seen through the proxy: applied (or queued) off the application's path;
        the flush loop writes a queued one with its next batch."""
        if self.ring.owns(job_id):
            self.local_observed(job_id, kind, group, model, body)
            return
        if len(body) > MAX_HANDED_ANSWER:
            # Too big to travel in a hand-off request: the owner tracks the id and asks the API itself.
            self._queue(job_id, entry("created", job_id, kind, group, model or "", "proxy"))
            return
        self._queue(job_id, entry("observed", job_id, kind, group, model or "", "proxy", answer=body))

    # -- the registration route ------------------------------------------------------------------
    def hand_off(self, ids: list[str], kind: str, group: str) -> int:
        """Queue registered ids other shards own (written by the caller's flush); how many."""
        for job_id in ids:
            self._queue(job_id, entry("registered", job_id, kind, group))
        if ids:
            self.wake()  # the sender waits for the caller's flush, then delivers at once
        return len(ids)

    # -- start-up ----------------------------------------------------------------------------------
    async def reshard(self) -> int:
        """Hand away what this shard no longer owns; take what the outbox owes this shard now."""
        store = self.jobs.store
        if await store.call(self.outbox.shard_count) == self.ring.count:
            return 0
        moved = 0
        for job_id in sorted(set(self.jobs.open) | set(await store.call(self.outbox.all_ids))):
            if self.ring.owns(job_id):
                continue
            job = await self.jobs.release(job_id)
            if job is not None:
                self._queue(job_id, entry("state", job_id, job.kind, job.group, job.model, job.source,
                                          state=state_of(job)))
                moved += 1
        own = await store.call(self.outbox.retarget, self.ring.owner, self.ring.index)
        if own:
            await apply(self.local, [json.loads(e.payload) for e in own])
        await self.jobs.flush()
        if own:
            await store.call(self.outbox.done, [e.row for e in own])
        await store.call(self.outbox.set_shard_count, self.ring.count)
        self.stats.pending = await store.call(self.outbox.count)
        if moved or own:
            log.info("shard count is now %d: handing %d jobs to their new owners, took back %d queued "
                     "hand-offs", self.ring.count, moved, len(own))
        return moved
