"""The poll loop of a replica sharing its state in PostgreSQL: no heap of its own, the database
says what is due.

Two claimers claim due jobs in batches (disjoint: SKIP LOCKED; one in flight while the other's
rows are used), for the free workers and (without a rate limit) a queue ahead of them; with a rate
limit, no more than it lets go within a second. Each claim is a lease
(the job comes due again by itself if this replica dies). Workers ask the API and hand the answer
to a writer, which applies it under the claim's epoch while the worker asks about the next job:
answers arriving together share a commit (group commit). While the database cannot be reached
nothing is claimed: polling pauses, answers already in hand that cannot be written are dropped (the
lease brings the job back), and the loop resumes once a claim succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

from exporter.config import PollConfig
from exporter.polling.client import ApiClient, ApiError, NotFound, RateLimited, Unauthorized
from exporter.polling.health import ApiHealth
from exporter.polling.ratelimit import RateLimiter
from exporter.polling.schedule import auth_pause, error_delay, next_interval
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.contract import Applied, Claim
from exporter.tracking.finishing import is_final

log = logging.getLogger("distribute.poller")

DEFAULT_RETRY_AFTER = 5.0
IDLE_SECONDS = 0.05  # how often an idle replica asks whether anything came due (an indexed probe)
DB_BACKOFF_MAX = 10.0
# Claims queued ahead of the workers without a rate limit: at most this many per worker, and no
# more than the workers answer in QUEUE_SECONDS at their current pace, so that a queued claim waits
# a small part of its lease however slow the API is. Deep enough on a fast API that a claim's round
# trip on a loaded machine (20-30 ms seen from the replica, bench/NOTES.md) never lets it run dry.
AHEAD = 8
QUEUE_SECONDS = 0.5
ASK_WEIGHT = 0.05  # of each new ask's duration in the moving average
# Claims in flight at once: a claim's round trip on a busy machine lasts as long as the workers take
# to use a batch, and a second claimer keeps the queue from running dry meanwhile (the claims are
# disjoint: SKIP LOCKED).
CLAIMERS = 2
UNWRITTEN = 16  # answers in hand waiting for the database, per worker: they share transactions
JITTER = 0.1  # next due times spread by +-10%, so jobs created together are not polled together


class ClaimingStore(Protocol):
    async def claim(self, limit: int, lease: float) -> list[Claim]: ...
    async def apply(self, claim: Claim, result, delay: float) -> Applied: ...
    async def apply_many(self, answers: list[tuple[Claim, Any, float]]) -> int: ...
    async def finish_many(self, answers: list[tuple[str, Any, int | None]]) -> list[Applied]: ...
    async def apply_error(self, claim: Claim, code: int | None, delay: float) -> Applied: ...
    async def not_found(self, claim: Claim, grace: float, delay: float) -> Applied: ...


T = TypeVar("T")


class Batches(Generic[T]):
    """Answers handed over without waiting: `put` only appends, and one writer task writes whatever
    gathered while its last write ran, by one call of `write` (one statement and commit for many
    answers). No task, future or shield per answer: on one event loop that also asks the API,
    those cost as much as the answer's share of the statement. `settled(n, error)` is told after
    each batch (error: what the write raised, or None)."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]],
                 settled: Callable[[int, Exception | None], None], name: str) -> None:
        self._write = write
        self._settled = settled
        self._name = name
        self._items: list[T] = []
        self.task: asyncio.Task[None] | None = None  # the writer, while there is something to write

    def put(self, item: T) -> None:
        self._items.append(item)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain(), name=self._name)

    async def _drain(self) -> None:
        while self._items:
            batch, self._items = self._items, []
            error: Exception | None = None
            try:
                await self._write(batch)
            except Exception as exc:  # the database went away: the leases bring these jobs back
                error = exc
            self._settled(len(batch), error)


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
                 config: PollConfig, concurrency: int, lease: float, health: DatabaseHealth,
                 api_health: ApiHealth | None = None) -> None:
        self.store = store
        self.client = client
        self.limiter = limiter
        self.api = api
        self.config = config
        self.concurrency = concurrency
        self.lease = lease
        self.health = health  # the database's
        # The API's: says in the log when polling starts and stops failing (as the SQLite poller does).
        self.api_health = api_health or ApiHealth(lambda: "the API", lambda: self.config.interval_seconds)
        self.polls = 0
        self.restarts = 0
        self.stale = 0  # answers that came after their lease was taken over: dropped
        self.leases = 0  # claims in hand (claimed, their answer not yet written)
        self._queue: asyncio.Queue[Claim] = asyncio.Queue()
        self._held = 0  # claims queued or being asked about
        self._claiming = 0  # claims asked of the database, not yet answered
        self._ask_seconds = 0.05  # how long one ask of the API takes, moving average (sizes the queue ahead)
        self._room = asyncio.Event()
        self._room.set()
        self._auth_failures = 0
        self._unwritten = asyncio.Semaphore(UNWRITTEN * concurrency)
        self._settling: set[asyncio.Future[None]] = set()  # answers being written
        # Non-final answers arriving together are written by one statement (a final one has its own
        # transaction with its counters): a commit per answer is what PostgreSQL charges most for.
        self._moves: Batches[tuple[Claim, Any, float]] = Batches(self._write_moves, self._written, "poll-answers")
        # Final answers likewise: one transaction makes a batch final and adds its counters (each job
        # still checked "not final yet" and its epoch under its row lock).
        self._finals: Batches[tuple[str, Any, int | None]] = Batches(self._write_finals, self._written,
                                                                     "poll-finals")

    async def _write_moves(self, answers: list[tuple[Claim, Any, float]]) -> None:
        applied = await self.store.apply_many(answers)
        self.stale += len(answers) - applied  # superseded claims, or jobs a proxy saw final meanwhile
        self.health.ok()

    async def _write_finals(self, answers: list[tuple[str, Any, int | None]]) -> None:
        outcomes = await self.store.finish_many(answers)
        self.stale += sum(1 for o in outcomes if o is Applied.STALE)
        self.health.ok()

    async def run(self) -> None:
        tasks = {asyncio.create_task(self._dispatch(), name=f"dispatcher-{i}") for i in range(CLAIMERS)}
        tasks |= {asyncio.create_task(self._work(), name=f"worker-{i}") for i in range(self.concurrency)}
        try:
            while True:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name = task.get_name()
                    log.error("poll loop task %s died (%r); restarting it", name,
                              task.exception() if not task.cancelled() else None)
                    self.restarts += 1
                    tasks.add(asyncio.create_task(self._dispatch() if name.startswith("dispatcher") else self._work(),
                                                  name=name))
        finally:
            writers = [b.task for b in (self._moves, self._finals) if b.task is not None]
            for task in (*tasks, *self._settling, *writers):
                task.cancel()
            await asyncio.gather(*tasks, *self._settling, *writers, return_exceptions=True)

    async def _dispatch(self) -> None:
        backoff = 0.5
        while True:
            await self.limiter.wait_pause()
            await self._room.wait()
            limit = self._room_for()
            if self.limiter.rate > 0:  # no more than the rate limit lets go within about a second
                limit = min(limit, max(1, int(self.limiter.burst))) if not self._claiming else 0
            if limit <= 0:  # the claimer in flight, or the workers, set it again
                self._room.clear()
                continue
            self._claiming += limit  # reserved: the other claimer takes only what is left
            try:
                claims = await self.store.claim(limit, self.lease)
            except Exception as exc:  # the database is down or slow: pause, keep serving
                self._claiming -= limit
                self._room_changed()
                self.health.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DB_BACKOFF_MAX)
                continue
            self._claiming -= limit
            backoff = 0.5
            self.health.ok()
            self._held += len(claims)
            self._room_changed()
            self.leases += len(claims)
            for claim in claims:
                self._queue.put_nowait(claim)
            if not claims:
                await asyncio.sleep(IDLE_SECONDS)

    def _room_changed(self) -> None:
        """Wake a claimer if there is room for a batch; else let the workers wake one when there is.
        Said after every claim, so that no claimer waits on a clear event while the other, which
        cleared it, has nothing left to claim for."""
        if self._room_for() >= self._claim_at():
            self._room.set()
        else:
            self._room.clear()

    def _room_for(self) -> int:
        """How many more claims to take: one per free worker, and without a rate limit a queue ahead
        (`_ahead`), so that workers never wait for a claim's round trip. A claim waiting in the
        queue is a lease running out unused: with a rate limit, none waits beyond the workers."""
        return self.concurrency + self._ahead() - self._held - self._claiming

    def _ahead(self) -> int:
        if self.limiter.rate > 0:
            return 0
        answered_in_queue_time = self.concurrency * QUEUE_SECONDS / max(self._ask_seconds, 1e-3)
        return min(AHEAD * self.concurrency, int(answered_in_queue_time))

    def _claim_at(self) -> int:
        """Claim again once this many are free, not at every answer: one statement serves many jobs
        (without a rate limit, half the queue ahead, while the other half still feeds the workers)."""
        return max(1, self._ahead() // 2 if self.limiter.rate <= 0 else self.concurrency // 2)

    async def _work(self) -> None:
        while True:
            claim = await self._queue.get()
            handed = False
            try:
                await self.limiter.acquire()
                asked = time.monotonic()
                write = await self.ask(claim)
                self._ask_seconds += (time.monotonic() - asked - self._ask_seconds) * ASK_WEIGHT
                # The answer is written behind the worker, which goes back to the API at once: the
                # database's round trips overlap the next requests instead of adding to each poll.
                # At most UNWRITTEN answers per worker wait for the database; beyond, workers wait too.
                await self._unwritten.acquire()
                single = write()  # a batched answer is only queued (None); a single write is awaited apart
                if single is not None:
                    self._spawn(self._settle(single))
                handed = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fault of our own, not the API nor the database: the lease brings it back
                log.error("poll of a claimed job failed (%s); it comes due again with its lease", type(exc).__name__)
            finally:
                if not handed:
                    self.leases -= 1
                self._held -= 1
                if self._room_for() >= self._claim_at():
                    self._room.set()

    async def _settle(self, write: Awaitable[None]) -> None:
        try:
            await write
        except Exception as exc:  # the database went away while writing: the lease brings the job back
            self.health.failed(exc)
        finally:
            self.leases -= 1
            self._unwritten.release()

    def _written(self, count: int, error: Exception | None) -> None:
        """A batch of answers written (or lost with the database: their leases bring the jobs back)."""
        if error is not None:
            self.health.failed(error)
        self.leases -= count
        for _ in range(count):
            self._unwritten.release()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def ask(self, claim: Claim) -> Callable[[], Awaitable[None] | None]:
        """Ask the API about a claimed job; answer the write that records what it said (not yet run):
        called, it queues a batched answer (and answers None) or answers a single write to await."""
        job, cfg = claim.job, self.config
        try:
            result, answer = await self.client.fetch(job.kind, job.id)
        except NotFound as exc:
            self._record(job.kind, exc.answer, None)  # type: ignore[attr-defined]
            self.api_health.ok()
            delay = _jitter(next_interval(job.interval, False, cfg.interval_seconds, cfg.max_interval_seconds))
            return lambda: self._single(self.store.not_found(claim, cfg.not_found_grace_seconds, delay))
        except ApiError as exc:
            self._record(job.kind, exc.answer, exc.reason)  # type: ignore[attr-defined]
            if not isinstance(exc, (Unauthorized, RateLimited)):  # each has its own line
                self.api_health.failed(exc.reason, str(exc) or type(exc).__name__)
            code = exc.answer.code  # type: ignore[attr-defined]
            error_code, delay = int(code) if code.isdigit() else None, self._error_delay(job.errors + 1, exc)
            return lambda: self._single(self.store.apply_error(claim, error_code, delay))
        self._record(job.kind, answer, None)
        self.api_health.ok()
        self._auth_failures = 0
        changed = result.status != job.status
        delay = _jitter(next_interval(job.interval, changed, cfg.interval_seconds, cfg.max_interval_seconds))
        if is_final(result.status):
            return lambda: self._finals.put((job.id, result, claim.epoch))
        return lambda: self._moves.put((claim, result, delay))

    async def _single(self, write: Awaitable[Applied]) -> None:
        self._outcome(await write)

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
