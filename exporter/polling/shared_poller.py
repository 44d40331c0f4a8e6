"""The poll loop of a replica sharing its state in PostgreSQL: no heap of its own, the database
says what is due.

A dispatcher claims as many due jobs as the workers are free for and the rate limit will let go
within a second; each claim is a lease (the job comes due again by itself if this replica dies).
Workers ask the API and apply the answer under the claim's epoch. While the database cannot be
reached nothing is claimed: polling pauses, answers already in hand that cannot be written are
dropped (the lease brings the job back), and the loop resumes once a claim succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Protocol

from exporter.config import PollConfig
from exporter.polling.client import ApiClient, ApiError, NotFound, RateLimited, Unauthorized
from exporter.polling.ratelimit import RateLimiter
from exporter.polling.schedule import auth_pause, error_delay, next_interval
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.contract import Applied, Claim

log = logging.getLogger("distribute.poller")

DEFAULT_RETRY_AFTER = 5.0
IDLE_SECONDS = 0.2  # how often an idle replica asks whether anything came due
DB_BACKOFF_MAX = 10.0
JITTER = 0.1  # next due times spread by +-10%, so jobs created together are not polled together


class ClaimingStore(Protocol):
    async def claim(self, limit: int, lease: float) -> list[Claim]: ...
    async def apply(self, claim: Claim, result, delay: float) -> Applied: ...
    async def apply_error(self, claim: Claim, code: int | None, delay: float) -> Applied: ...
    async def not_found(self, claim: Claim, grace: float, delay: float) -> Applied: ...


class DatabaseHealth:
    """Whether the state database answered lately, and how many times it did not."""

    def __init__(self) -> None:
        self.up = False
        self.errors = 0
        self._logged = False

    def ok(self) -> None:
        if not self.up and self._logged:
            log.info("state database reachable again; polling resumes")
        self.up, self._logged = True, False

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.up or not self._logged:
            log.error("state database unreachable (%s); polling paused until it is back", type(exc).__name__)
            self._logged = True
        self.up = False


class SharedPoller:
    def __init__(self, store: ClaimingStore, client: ApiClient, limiter: RateLimiter, api: ApiAggregates,
                 config: PollConfig, concurrency: int, lease: float, health: DatabaseHealth) -> None:
        self.store = store
        self.client = client
        self.limiter = limiter
        self.api = api
        self.config = config
        self.concurrency = concurrency
        self.lease = lease
        self.health = health
        self.polls = 0
        self.restarts = 0
        self.stale = 0  # answers that came after their lease was taken over: dropped
        self.leases = 0  # claims in hand (claimed, not yet answered)
        self._queue: asyncio.Queue[Claim] = asyncio.Queue()
        self._idle = concurrency  # workers without a claim: the dispatcher claims no more than these
        self._room = asyncio.Event()
        self._room.set()
        self._auth_failures = 0

    async def run(self) -> None:
        tasks = {asyncio.create_task(self._dispatch(), name="dispatcher")}
        tasks |= {asyncio.create_task(self._work(), name=f"worker-{i}") for i in range(self.concurrency)}
        try:
            while True:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = task.get_name()
                    log.error("poll loop task %s died (%r); restarting it", name,
                              task.exception() if not task.cancelled() else None)
                    self.restarts += 1
                    tasks.add(asyncio.create_task(self._dispatch() if name == "dispatcher" else self._work(),
                                                  name=name))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch(self) -> None:
        backoff = 0.5
        while True:
            await self.limiter.wait_pause()
            await self._room.wait()
            # No more than the free workers, nor than the rate limit lets go within about a second:
            # a claim waiting in this replica's queue is a lease running out unused.
            limit = self._idle if self.limiter.rate <= 0 else max(1, min(self._idle, int(self.limiter.burst)))
            try:
                claims = await self.store.claim(limit, self.lease)
            except Exception as exc:  # the database is down or slow: pause, keep serving
                self.health.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DB_BACKOFF_MAX)
                continue
            backoff = 0.5
            self.health.ok()
            self._idle -= len(claims)
            if self._idle <= 0:
                self._room.clear()
            self.leases += len(claims)
            for claim in claims:
                self._queue.put_nowait(claim)
            if not claims:
                await asyncio.sleep(IDLE_SECONDS)

    async def _work(self) -> None:
        while True:
            claim = await self._queue.get()
            try:
                await self.limiter.acquire()
                await self.poll(claim)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away while writing: the lease brings it back
                self.health.failed(exc)
            finally:
                self.leases -= 1
                self._idle += 1
                self._room.set()

    async def poll(self, claim: Claim) -> None:
        job, cfg = claim.job, self.config
        try:
            result, answer = await self.client.fetch(job.kind, job.id)
        except NotFound as exc:
            self._record(job.kind, exc.answer, None)  # type: ignore[attr-defined]
            delay = _jitter(next_interval(job.interval, False, cfg.interval_seconds, cfg.max_interval_seconds))
            self._outcome(await self.store.not_found(claim, cfg.not_found_grace_seconds, delay))
            return
        except ApiError as exc:
            self._record(job.kind, exc.answer, exc.reason)  # type: ignore[attr-defined]
            code = exc.answer.code  # type: ignore[attr-defined]
            self._outcome(await self.store.apply_error(claim, int(code) if code.isdigit() else None,
                                                       self._error_delay(job.errors + 1, exc)))
            return
        self._record(job.kind, answer, None)
        self._auth_failures = 0
        changed = result.status != job.status
        delay = _jitter(next_interval(job.interval, changed, cfg.interval_seconds, cfg.max_interval_seconds))
        self._outcome(await self.store.apply(claim, result, delay))

    def _outcome(self, applied: Applied) -> None:
        self.health.ok()
        if applied is Applied.STALE:
            self.stale += 1

    def _error_delay(self, errors: int, exc: ApiError) -> float:
        cfg = self.config
        if isinstance(exc, Unauthorized):
            self._auth_failures += 1
            pause = auth_pause(self._auth_failures, cfg.interval_seconds, cfg.auth_backoff_max_seconds)
            if self._auth_failures == 1:
                log.error("the API refused the key (%s); pausing all requests, backing off up to %gs",
                          exc, cfg.auth_backoff_max_seconds)
            self.limiter.pause_until(time.monotonic() + pause)
            return pause
        if isinstance(exc, RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
            self.limiter.pause_until(time.monotonic() + wait)
            return wait
        return error_delay(errors, cfg.interval_seconds, cfg.max_interval_seconds)

    def _record(self, kind: str, answer: object, reason: str | None) -> None:
        self.polls += 1
        self.api.record(kind, answer.code, answer.seconds, reason, time.time())  # type: ignore[attr-defined]


def _jitter(delay: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    return delay * rng(1 - JITTER, 1 + JITTER)
