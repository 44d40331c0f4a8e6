"""The poll loop: asks the API about each tracked job when it is due, within the request budget.

One dispatcher takes due jobs off a heap, waits for the rate limiter and hands them to
`max_concurrency` workers. Whatever the API answers, a worker records it and reschedules the job;
nothing the API sends can end the loop, and a task that dies anyway is restarted and logged.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Callable, Iterable

from exporter.tracking.aggregates import ApiAggregates
from exporter.polling.client import ApiClient, ApiError, NotFound, RateLimited, Unauthorized
from exporter.polling.health import ApiHealth
from exporter.config import PollConfig
from exporter.polling.ratelimit import RateLimiter
from exporter.polling.schedule import auth_pause, error_delay, next_interval
from exporter.tracking.jobs import Job, TrackedJobs

log = logging.getLogger("distribute.poller")

DEFAULT_RETRY_AFTER = 5.0  # a 429 without (or with an unreadable) Retry-After


class Poller:
    def __init__(self, jobs: TrackedJobs, client: ApiClient, limiter: RateLimiter,
                 api: ApiAggregates, config: PollConfig, concurrency: int,
                 clock: Callable[[], float] = time.time, health: ApiHealth | None = None) -> None:
        self.jobs = jobs
        self.client = client
        self.limiter = limiter
        self.api = api
        self.config = config
        self.concurrency = concurrency
        self.clock = clock
        self.restarts = 0
        self.polls = 0
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=concurrency)
        self._auth_failures = 0
        self._rate_limited = False
        self.health = health or ApiHealth(lambda: "the API", lambda: self.config.interval_seconds, clock=clock)
        jobs.on_new = self.schedule_many

    # -- scheduling ------------------------------------------------------------------------------
    def schedule(self, job: Job) -> None:
        """(Re)enter a job in the heap at its `next_due`."""
        heapq.heappush(self._heap, (job.next_due, next(self._seq), job.id))
        if self._heap[0][2] == job.id:
            self._wake.set()

    def schedule_many(self, jobs: Iterable[Job]) -> None:
        """Enter many jobs at once (new ids, start-up)."""
        entries = [(job.next_due, next(self._seq), job.id) for job in jobs]
        if len(entries) * 8 < len(self._heap):
            for entry in entries:
                heapq.heappush(self._heap, entry)
        else:  # linear, where a push each would be n log n
            self._heap.extend(entries)
            heapq.heapify(self._heap)
        self._wake.set()

    def schedule_all(self) -> None:
        self.schedule_many(self.jobs.open.values())

    def defer(self, job: Job, until: float) -> None:
        """Push the job's next own poll back to `until` (never earlier than it was): the application
        has just fetched its answer through the proxy. The old heap entry is skipped as stale."""
        if job.next_due < until and self.jobs.open.get(job.id) is job:
            job.next_due = until
            self.jobs.touched(job)
            self.schedule(job)

    def credentials_changed(self) -> None:
        """A new API key: lift the pause after refused keys and ask the refused jobs again now."""
        if not self._auth_failures:
            return
        self._auth_failures = 0
        self.limiter.resume()
        now = self.clock()
        for job in self.jobs.open.values():
            if job.next_due > now:
                self._reschedule(job, 0.0, now)
        log.info("the API key changed; polling resumes at once")

    def _reschedule(self, job: Job, delay: float, now: float) -> None:
        job.next_due = now + delay
        self.jobs.touched(job)
        self.schedule(job)

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run the dispatcher and the workers until cancelled, restarting any that die."""
        tasks = {self._start("dispatcher", self._dispatch)}
        tasks |= {self._start(f"worker-{i}", self._work) for i in range(self.concurrency)}
        try:
            while True:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = task.get_name()
                    exc = task.exception() if not task.cancelled() else None
                    log.error("poll loop task %s died (%r); restarting it", name, exc)
                    self.restarts += 1
                    tasks.add(self._start(name, self._dispatch if name == "dispatcher" else self._work))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _start(name: str, fn: Callable[[], object]) -> asyncio.Task:
        return asyncio.create_task(fn(), name=name)  # type: ignore[arg-type]

    async def _dispatch(self) -> None:
        while True:
            job = await self._next_due()
            await self.limiter.acquire()
            await self._queue.put(job)

    async def _next_due(self) -> Job:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, job_id = self._heap[0]
            wait = due - self.clock()
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(wait, 60.0))
                except asyncio.TimeoutError:
                    pass
                continue
            heapq.heappop(self._heap)
            job = self.jobs.open.get(job_id)
            if job is not None and job.next_due == due:  # else a stale entry: moved or finished
                return job

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            # A job handed over just before a 429 or a refused key waits out the pause too.
            await self.limiter.wait_pause()
            try:
                await self.poll(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not cost the job: log it and try again later
                log.exception("unexpected error while polling job_id=%s kind=%s", job.id, job.kind)
                if self.jobs.open.get(job.id) is job:
                    self._reschedule(job, self.config.max_interval_seconds, self.clock())

    # -- one poll ------------------------------------------------------------------------------------
    async def poll(self, job: Job) -> None:
        """Ask about one job and record what the answer means."""
        try:
            result, answer = await self.client.fetch(job.kind, job.id)
        except NotFound as exc:
            self._record(job, exc.answer, None)  # type: ignore[attr-defined]
            self.health.ok()
            if self.jobs.open.get(job.id) is job:
                self._on_not_found(job)
            return
        except ApiError as exc:
            self._record(job, exc.answer, exc.reason)  # type: ignore[attr-defined]
            if not isinstance(exc, (Unauthorized, RateLimited)):  # each has its own line
                self.health.failed(exc.reason, str(exc) or type(exc).__name__)
            if self.jobs.open.get(job.id) is job:
                self._on_error(job, exc)
            return
        self._record(job, answer, None)
        self.health.ok()
        if self.jobs.open.get(job.id) is not job:
            return  # untracked while the request was in flight
        self._auth_ok()
        old_status = job.status
        changed = self.jobs.apply(job, result, self.clock())
        if changed:
            log.debug("job_id=%s kind=%s status=%s (was %s)", job.id, job.kind, job.status, old_status)
        if job.final:
            log.debug("job finished job_id=%s kind=%s group=%s model=%s status=%s",
                     job.id, job.kind, job.group, job.model, job.status)
            return
        job.errors = 0
        job.interval = next_interval(job.interval, changed, self.config.interval_seconds,
                                     self.config.max_interval_seconds)
        self._reschedule(job, job.interval, self.clock())

    def _record(self, job: Job, answer: object, reason: str | None) -> None:
        self.polls += 1
        code = answer.code  # type: ignore[attr-defined]
        job.last_answer_code = int(code) if code.isdigit() else None  # None: no answer came
        self.api.record(job.kind, answer.code, answer.seconds, reason, self.clock())  # type: ignore[attr-defined]

    def _on_not_found(self, job: Job) -> None:
        self._auth_ok()
        now = self.clock()
        if self.jobs.not_found(job, now, self.config.not_found_grace_seconds):
            log.warning("job not found past the grace period job_id=%s kind=%s", job.id, job.kind)
            return
        job.interval = next_interval(job.interval, False, self.config.interval_seconds,
                                     self.config.max_interval_seconds)
        self._reschedule(job, job.interval, now)

    def _on_error(self, job: Job, exc: ApiError) -> None:
        now = self.clock()
        cfg = self.config
        if isinstance(exc, Unauthorized):
            # Requests already in flight when the first refusal came do not lengthen the pause.
            if self.limiter.paused_for <= 0:
                self._auth_failures += 1
                pause = auth_pause(self._auth_failures, cfg.interval_seconds, cfg.auth_backoff_max_seconds)
                if self._auth_failures == 1:
                    log.error("the API refused the key (%s); pausing all requests, backing off up to %gs",
                              exc, cfg.auth_backoff_max_seconds)
                self.limiter.pause_until(time.monotonic() + pause)
            self._reschedule(job, self.limiter.paused_for, now)
            return
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
            if not self._rate_limited or self.limiter.paused_for < wait:
                log.warning("rate limited by the API; no requests for %gs", wait)
            self._rate_limited = True
            self.limiter.pause_until(time.monotonic() + wait)
            self._reschedule(job, wait, now)
            return
        job.errors += 1
        log.debug("poll failed job_id=%s kind=%s reason=%s (%s)", job.id, job.kind, exc.reason, exc)
        self._reschedule(job, error_delay(job.errors, cfg.interval_seconds, cfg.max_interval_seconds), now)

    def _auth_ok(self) -> None:
        if self._auth_failures:
            log.info("the API accepts the key again; polling resumes")
        self._auth_failures = 0
        self._rate_limited = False
