"""The proxy's two hooks as the exporter implements them: a create is tracked and committed before
its answer goes back; a result answer is queued and applied by a task of its own, off the
application's path, and pushes the exporter's own next poll of that job back.

Neither hook lets a failure reach the forwarding path: it is logged (ids, never headers) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from exporter.api.results import InvalidBody
from exporter.config import Config
from exporter.metrics.proxy import ProxyStats
from exporter.tracking.jobs import Job
from exporter.tracking.proxied import ProxiedJobs

log = logging.getLogger("distribute.proxy")

OBSERVE_QUEUE = 50_000  # answers waiting to be applied; past this they are dropped and counted
OBSERVE_BYTES = 64 * 1024 * 1024  # ... and their bodies together: an answer may be up to max_response_bytes


class ProxyTracking:
    def __init__(self, proxied: ProxiedJobs, defer: Callable[[Job, float], None], stats: ProxyStats,
                 config: Callable[[], Config], clock: Callable[[], float] = time.time) -> None:
        self.proxied = proxied
        self.defer = defer
        self.stats = stats
        self.config = config
        self.clock = clock
        self._queue: asyncio.Queue[tuple[str, str, str, str | None, bytes]] = asyncio.Queue(OBSERVE_QUEUE)
        self.queued_bytes = 0

    def created_now(self, job_id: str, kind: str, group: str, model: str | None) -> bool:
        """Track and journal a job created through this replica's proxy, at once (no await): True
        when its answer need wait for nothing more, False when it waits for `synced` first
        (proxy.fsync_creates). Never raises."""
        try:
            self.proxied.store_created(job_id, kind, group, model, self.clock(), self.config().poll.interval_seconds)
        except Exception as exc:  # the disk is full or gone: the job is tracked, the flush keeps trying
            self._not_stored(job_id, kind, exc)
            return True
        return not self.proxied.must_sync

    async def synced(self, job_id: str, kind: str) -> None:
        """Wait for the fsync of what `created_now` journaled; never raises."""
        try:
            await self.proxied.synced()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._not_stored(job_id, kind, exc)

    async def created(self, job_id: str, kind: str, group: str, model: str | None) -> None:
        """Track and durably store a job created through this replica's proxy; never raises."""
        if not self.created_now(job_id, kind, group, model):
            await self.synced(job_id, kind)

    def _not_stored(self, job_id: str, kind: str, exc: Exception) -> None:
        self.stats.error("commit")
        log.error("proxied create not stored before its answer job_id=%s kind=%s: %s", job_id, kind, exc)

    def observed(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        """Queue a result answer the application got; never blocks, never raises."""
        if self.queued_bytes + len(body) > OBSERVE_BYTES:
            self.stats.error("dropped")  # the exporter's own poll covers the job
            return
        try:
            self._queue.put_nowait((job_id, kind, group, model, body))
        except asyncio.QueueFull:
            self.stats.error("dropped")
            return
        self.queued_bytes += len(body)

    async def run(self) -> None:
        """Apply queued answers until cancelled."""
        while True:
            await self._apply_queued(await self._queue.get())

    async def _apply_queued(self, item: tuple[str, str, str, str | None, bytes]) -> None:
        """Apply one queued answer; a failure is counted and logged, never raised."""
        self.queued_bytes -= len(item[4])
        job_id, kind, group, model, body = item
        try:
            await self._apply(job_id, kind, group, model, body)
        except asyncio.CancelledError:
            raise
        except InvalidBody as exc:
            self.stats.error("observe")
            log.debug("proxied answer not used job_id=%s kind=%s: %s", job_id, kind, exc)
        except Exception:  # a bug must not stop the loop: the poller still covers the job
            self.stats.error("observe")
            log.exception("applying a proxied answer failed job_id=%s kind=%s", job_id, kind)

    async def _apply(self, job_id: str, kind: str, group: str, model: str | None, body: bytes) -> None:
        config = self.config()
        now = self.clock()
        job = await self.proxied.apply_observed(job_id, kind, group, model, body, now, config.proxy.track_results)
        if job is None:
            return
        self.stats.observed_answer(job.kind)
        self.defer(job, now + config.poll.interval_seconds)

    async def drain(self) -> None:
        """Apply what is queued (at shutdown, before the last flush)."""
        while not self._queue.empty():
            await self._apply_queued(self._queue.get_nowait())
