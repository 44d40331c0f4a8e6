"""Jobs the proxy saw: creates stored before their answer goes back, and result answers applied
exactly as one of the exporter's own polls would apply them.

A create is appended to the create journal on the event loop (tracking/create_journal.py: one
`write()`, safe against a crash of this process once it returns), and its row goes into the state
file with the next flush. With `proxy.fsync_creates` the answer also waits for an fsync of the
journal; creates waiting at the same moment share it (group commit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Awaitable, Callable, Generic, TypeVar

from exporter.api.results import parse_result
from exporter.tracking.create_journal import Entry
from exporter.tracking.jobs import Job, TrackedJobs

log = logging.getLogger("distribute.proxy")

SOURCE = "proxy"
T = TypeVar("T")
SETTLED_IDS = 100_000  # ids known final or not to be tracked, remembered so that answers need no look-up


class GroupCommit(Generic[T]):
    """Items added while a write runs are written together by the next: a burst costs about one
    disk write, and none waits for the flush interval or for a large batch. The proxy's creates use
    it for their fsync (ProxiedJobs) and for their commit to PostgreSQL.

    `parallel` writes may run at once (each on its own database session): an item that arrives while
    one write runs then starts the next write at once instead of waiting for the running one to end,
    so its wait is about one write, not up to two. Items arriving while all of them run still share
    the next."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], name: str = "group-commit",
                 parallel: int = 1) -> None:
        self.write = write
        self.name = name
        self.parallel = max(1, parallel)
        self._queued: list[T] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._running = 0  # writer tasks alive
        self._starting = False  # a writer created that has not taken its first batch yet

    async def add(self, item: T) -> None:
        """Return once `item` is written; raise what the write raised."""
        loop = asyncio.get_running_loop()
        self._queued.append(item)
        if self._batch_done is None:
            self._batch_done = loop.create_future()
        done = self._batch_done
        # One new writer at most per turn of the loop: a writer not yet started takes everything
        # queued by then, so a second one would find nothing.
        if self._running < self.parallel and not self._starting:
            self._running += 1
            self._starting = True
            loop.create_task(self._write_batches(), name=self.name)
        # Shielded: a caller that goes away (an application that hangs up) must not cancel the write
        # the others wait on.
        await asyncio.shield(done)

    async def _write_batches(self) -> None:
        try:
            while self._queued:
                queued, done = self._queued, self._batch_done
                self._queued, self._batch_done = [], None
                self._starting = False
                assert done is not None
                await self._write_one(queued, done)
        finally:
            self._running -= 1
            self._starting = False

    async def _write_one(self, queued: list[T], done: asyncio.Future[None]) -> None:
        try:
            await self.write(queued)
        except BaseException as exc:  # noqa: B902 - the waiters get it; the flush retries the rows
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("commit cancelled"))
                done.exception()  # retrieved: no "never retrieved" warning when nobody waits
            if not isinstance(exc, Exception):
                raise
            return
        if not done.done():
            done.set_result(None)


class ProxiedJobs:
    """What the proxy's creates and observed answers do to the tracked jobs."""

    def __init__(self, jobs: TrackedJobs, fsync: Callable[[], bool] = lambda: True) -> None:
        self.jobs = jobs
        self.fsync = fsync
        self._syncs: GroupCommit[None] = GroupCommit(self._sync, "proxy-fsync")
        # An application may read a final answer again and again: remember recent ids whose answers
        # change nothing, rather than ask the state file about each one.
        self._settled: OrderedDict[str, None] = OrderedDict()

    async def track_proxied(self, job_id: str, kind: str, group: str, model: str | None, now: float,
                            first_poll_in: float) -> None:
        """Track a job created through the proxy and store it (`store_created`, then `synced`)."""
        self.store_created(job_id, kind, group, model, now, first_poll_in)
        await self.synced()

    def store_created(self, job_id: str, kind: str, group: str, model: str | None, now: float,
                      first_poll_in: float) -> None:
        """Track a job created through the proxy and journal it: safe against a crash of this
        process when this returns. Its first own poll is `first_poll_in` seconds away, by when the
        application has usually asked for itself. Raises OSError when the journal cannot be written."""
        jobs = self.jobs
        job = jobs.in_memory(job_id)
        if job is None:
            # A fresh id the API has just minted: nothing in the file can hold it, so no look-up.
            job = Job(job_id, kind, group, SOURCE, model=model or "", first_tracked=now,
                      next_due=now + first_poll_in)
            jobs.adopt(job)
        jobs.journal.append(Entry(job.id, job.kind, job.group, job.source, job.model, job.first_tracked, job.next_due))

    @property
    def must_sync(self) -> bool:
        """True when a create's answer also waits for an fsync (`synced`)."""
        return self.fsync()

    async def synced(self) -> None:
        """Return once what was journaled is on the disk, when proxy.fsync_creates asks for it."""
        if self.fsync():
            await self._syncs.add(None)

    async def _sync(self, _waiting: list[None]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.jobs.journal.syncer())

    async def apply_observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes,
                             now: float, track_untracked: bool) -> Job | None:
        """Apply a 200 answer of /result the application got; answer the job it was applied to, None
        when it was not used (untracked, or final already: counted once, by whoever saw it first).

        Raises InvalidBody for an answer the exporter's own poll would not have used either.
        """
        jobs = self.jobs
        job = jobs.open.get(job_id)
        if job is None and (not track_untracked or job_id in self._settled or jobs.in_memory(job_id) is not None):
            return None  # untracked by choice, or final already: counted once, by whoever saw it first
        result = parse_result(body, kind)  # before tracking an id: an unusable answer tracks nothing
        if job is None:
            accepted, _ = await jobs.track([job_id], kind, group, SOURCE, now)
            job = jobs.open.get(job_id) if accepted else None
            if job is None:
                self._settle(job_id)
                return None  # in the file already: finished, retired or deleted
            if model and not job.model:
                jobs.agg.move(job.labels, None)
                job.model = model
                jobs.agg.move(None, job.labels)
        jobs.apply(job, result, now)
        if job.final:
            self._settle(job_id)
        return job

    def _settle(self, job_id: str) -> None:
        self._settled[job_id] = None
        if len(self._settled) > SETTLED_IDS:
            self._settled.popitem(last=False)


__all__ = ["GroupCommit", "ProxiedJobs", "SOURCE"]
