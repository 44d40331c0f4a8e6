"""The poll loop of a replica on PostgreSQL (polling/shared_poller.py) on a real server: answers are
written behind the workers, which keep asking the API while a batch is being written, and a final
answer written late is still counted exactly once."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from exporter.api.results import JobResult
from exporter.config.model import PollConfig
from exporter.polling.ratelimit import RateLimiter
from exporter.polling.shared_poller import AHEAD, QUEUE_SECONDS, UNWRITTEN, DatabaseHealth, SharedPoller
from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.pg.connect import create_pool
from exporter.tracking.pg.store import PgJobStore

STEPS = ("QUEUED", "PROCESSING", "COMPLETED")
WORKERS = 4


class Api:
    """Answers each id QUEUED, PROCESSING, then COMPLETED, at once; counts the requests."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}

    async def fetch(self, kind: str, job_id: str):
        await asyncio.sleep(0)
        n = self.asked[job_id] = self.asked.get(job_id, 0) + 1
        now = time.time()
        result = JobResult(STEPS[min(n, 3) - 1], model="m", created=now - 3, finished=now if n >= 3 else None,
                           prompt_tokens=1)
        return result, SimpleNamespace(code="200", seconds=0.001)


class GatedStore(PgJobStore):
    """The real store, whose batches of final answers wait for a gate."""

    gate: asyncio.Event

    async def finish_many(self, answers):
        await self.gate.wait()
        return await super().finish_many(answers)


async def until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def poller_of(store: PgJobStore, api: "Api", interval: float, lease: float) -> SharedPoller:
    """A replica's poll loop on `store` with WORKERS workers, no rate limit, polls every `interval`."""
    return SharedPoller(store, api, RateLimiter(0), ApiAggregates((0.1, 1.0)),  # type: ignore[arg-type]
                        PollConfig(interval_seconds=interval, max_interval_seconds=2 * interval), WORKERS, lease,
                        DatabaseHealth())


def test_workers_keep_polling_while_finals_are_written_and_each_is_counted_once(pg_db):
    url, pw = pg_db
    ids = [f"p{i:03d}" for i in range(3 * WORKERS * UNWRITTEN)]

    async def go():
        store = GatedStore(await create_pool(url, pw, max_size=4), (1.0, 10.0))
        store.gate = asyncio.Event()
        await store.migrate()
        await store.register(ids, "chat", "g", "config")
        api = Api()
        poller = poller_of(store, api, interval=0.05, lease=30.0)
        loop = asyncio.create_task(poller.run())
        try:
            # No final answer is written yet, and the workers went on: far more final answers are in
            # hand than there are workers (each worker waiting for its write would stop at one)...
            def finals_asked() -> int:
                return sum(1 for n in api.asked.values() if n >= 3)
            await until(lambda: finals_asked() >= WORKERS * UNWRITTEN, 60, "unwritten final answers to pile up")
            # ... up to the bound of unwritten answers (plus one in each blocked worker's hand).
            await asyncio.sleep(0.5)
            held = finals_asked()
            assert held <= WORKERS * UNWRITTEN + WORKERS < len(ids)
            await asyncio.sleep(0.3)
            assert finals_asked() == held
            assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE final <> 0") == 0
            store.gate.set()
            await until(lambda: all(api.asked.get(i, 0) >= 3 for i in ids) and poller.leases == 0, 60,
                        "every job answered final and written")
            facts = await store.facts()
            finals = await store.pool.fetchval("SELECT count(*) FROM jobs WHERE final = 1")
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await store.pool.close()
        return api, facts, finals, poller
    api, facts, finals, poller = asyncio.run(go())
    assert finals == len(ids)
    assert facts.finished[("chat", "g", "m", "COMPLETED")] == len(ids)
    assert facts.tokens[("g", "m", "prompt")] == len(ids)
    assert max(api.asked.values()) == 3 and poller.stale == 0


def test_jobs_registered_while_the_claimers_find_nothing_due_are_polled(pg_db):
    """Both claimers find nothing due for a while (each asks while the other's claim is in flight);
    ids registered then are still claimed and polled to the end: no claimer is left waiting for
    room that nobody will announce."""
    url, pw = pg_db
    ids = [f"late{i:03d}" for i in range(40)]

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=4), (1.0, 10.0))
        await store.migrate()
        api = Api()
        poller = poller_of(store, api, interval=0.05, lease=30.0)
        loop = asyncio.create_task(poller.run())
        try:
            await asyncio.sleep(0.5)  # several empty claims by each claimer
            await store.register(ids, "chat", "g", "config")
            await until(lambda: all(api.asked.get(i, 0) >= 3 for i in ids) and poller.leases == 0, 60,
                        "the late ids polled to the end")
            finals = await store.pool.fetchval("SELECT count(*) FROM jobs WHERE final = 1")
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await store.pool.close()
        return finals
    assert asyncio.run(go()) == len(ids)


class SlowApi(Api):
    """Api, each answer after `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def fetch(self, kind: str, job_id: str):
        await asyncio.sleep(self.seconds)
        return await super().fetch(kind, job_id)


def test_with_a_slow_api_few_claims_wait_ahead_of_the_workers(pg_db):
    """The queue ahead is sized by how fast the workers answer: with answers taking 0.1 s, four
    workers answer 20 in QUEUE_SECONDS, so about that many claims wait ahead, not 8 per worker
    (whose leases would run out in the queue on a slower API)."""
    url, pw = pg_db
    ids = [f"slow{i:03d}" for i in range(300)]

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=4), (1.0, 10.0))
        await store.migrate()
        await store.register(ids, "chat", "g", "config")
        poller = poller_of(store, SlowApi(0.1), interval=5, lease=60.0)
        loop = asyncio.create_task(poller.run())
        try:
            await until(lambda: poller.polls >= 150, 60, "the moving average of the answers' time to settle")
            held = []
            for _ in range(50):
                held.append(poller.leases)
                await asyncio.sleep(0.02)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await store.pool.close()
        return held
    held = asyncio.run(go())
    ahead = WORKERS * QUEUE_SECONDS / 0.1
    assert max(held) <= WORKERS + ahead * 1.5 < WORKERS * (1 + AHEAD), held
