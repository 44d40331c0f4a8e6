"""The state store's contract, held against both backends: the SQLite file of one process and
PostgreSQL shared by replicas (a real server, tests/pg.py)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import pytest

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.contract import Applied
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.local import LocalJobStore
from exporter.tracking.store import StateStore

BUCKETS = (1.0, 10.0)


@asynccontextmanager
async def backend(kind: str, tmp_path, request):
    if kind == "sqlite":
        store = StateStore(str(tmp_path / "state.db"))
        await store.call(store.open)
        tracked = TrackedJobs(store, JobAggregates(BUCKETS))
        await tracked.load()
        try:
            yield LocalJobStore(tracked)
        finally:
            await tracked.flush()
            store.shutdown()
        return
    from exporter.tracking.pg.connect import create_pool
    from exporter.tracking.pg.store import PgJobStore

    url, password_file = request.getfixturevalue("pg_db")
    pool = await create_pool(url, password_file)
    store = PgJobStore(pool, BUCKETS)
    await store.migrate()
    try:
        yield store
    finally:
        await pool.close()


BACKENDS = pytest.mark.parametrize("kind", ["sqlite", "postgresql"])


def done(status: str = "COMPLETED", **kw) -> JobResult:
    now = time.time()
    return JobResult(status=status, model="m1", created=now - 3, finished=now, prompt_tokens=5,
                     completion_tokens=7, choices={"stop": 1}, **kw)


async def wait_claim(store, limit: int, lease: float, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claims = await store.claim(limit, lease)
        if claims:
            return claims
        await asyncio.sleep(0.05)
    raise AssertionError("nothing came due before the deadline")


@BACKENDS
def test_an_id_is_registered_once(kind, tmp_path, request):
    async def go():
        async with backend(kind, tmp_path, request) as store:
            accepted, dups = await store.register(["a", "b", "a"], "chat", "g", "config")
            assert (accepted, dups) == (["a", "b"], 1)
            assert await store.register(["b", "c"], "chat", "g", "ids_file") == (["c"], 1)
            job = await store.get("c")
            assert (job.kind, job.group, job.source, job.status) == ("chat", "g", "ids_file", "UNKNOWN")
            assert await store.get("zzz") is None
            facts = await store.facts()
            assert facts.jobs[("chat", "g", "", "UNKNOWN")] == 3
    asyncio.run(go())


@BACKENDS
def test_a_claim_leases_due_jobs_and_a_second_claim_takes_the_others(kind, tmp_path, request):
    async def go():
        async with backend(kind, tmp_path, request) as store:
            await store.register([f"j{i}" for i in range(5)], "chat", "g", "config")
            first = await wait_claim(store, 3, 60)
            second = await store.claim(10, 60)
            assert len(first) == 3 and len(second) == 2
            assert {c.job.id for c in first} | {c.job.id for c in second} == {f"j{i}" for i in range(5)}
            assert await store.claim(10, 60) == []  # all leased
    asyncio.run(go())


@BACKENDS
def test_an_answer_moves_the_job_and_a_final_one_is_counted_once(kind, tmp_path, request):
    async def go():
        async with backend(kind, tmp_path, request) as store:
            await store.register(["x", "y"], "chat", "g", "config")
            claims = {c.job.id: c for c in await wait_claim(store, 2, 60)}
            running = JobResult("RUNNING", model="m1", created=time.time() - 100)
            assert await store.apply(claims["x"], running, 30) is Applied.MOVED
            assert (await store.get("x")).status == "RUNNING"
            assert await store.apply(claims["y"], done(), 30) is Applied.FINAL
            assert await store.apply_final("y", done()) is Applied.ALREADY_FINAL
            assert await store.apply(claims["y"], done(), 30) is Applied.ALREADY_FINAL
            assert await store.apply_final("nope", done()) is Applied.UNKNOWN
            facts = await store.facts()
            assert facts.jobs[("chat", "g", "m1", "RUNNING")] == 1
            assert facts.jobs[("chat", "g", "m1", "COMPLETED")] == 1
            assert facts.finished[("chat", "g", "m1", "COMPLETED")] == 1
            assert facts.tokens[("g", "m1", "prompt")] == 5 and facts.tokens[("g", "m1", "completion")] == 7
            assert facts.choices[("g", "m1", "stop")] == 1
            hist = facts.durations[("chat", "g", "m1", "COMPLETED")]
            assert hist.count == 1 and hist.counts == [0, 1, 0] and abs(hist.total - 3) < 0.01
            oldest = facts.oldest_unfinished(store.is_current)
            assert oldest == {("chat", "g"): running.created}  # x's; y's went with its final answer
            y = await store.get("y")
            assert y.final and y.duration is not None and [h for h in y.history.split(";")][-1].startswith("COMPLETED@")
    asyncio.run(go())


@BACKENDS
def test_a_superseded_claim_is_stale_and_changes_nothing(kind, tmp_path, request):
    async def go():
        async with backend(kind, tmp_path, request) as store:
            await store.register(["s"], "images", "g", "config")
            old = (await wait_claim(store, 1, 0.0))[0]
            new = (await wait_claim(store, 1, 60))[0]  # the lease of `old` ran out: claimed again
            assert new.epoch > old.epoch
            assert await store.apply(old, JobResult("RUNNING"), 30) is Applied.STALE
            assert (await store.get("s")).status == "UNKNOWN"
            assert await store.apply(new, JobResult("QUEUED"), 30) is Applied.MOVED
            assert await store.apply(old, JobResult("RUNNING"), 30) is Applied.STALE
            assert (await store.get("s")).status == "QUEUED"
    asyncio.run(go())


@BACKENDS
def test_a_lease_not_answered_comes_due_again_by_itself(kind, tmp_path, request):
    async def go():
        async with backend(kind, tmp_path, request) as store:
            await store.register(["l"], "speech", "g", "config")
            first = await wait_claim(store, 5, 0.5)
            assert [c.job.id for c in first] == ["l"]
            again = await wait_claim(store, 5, 60)  # nobody answered: due again after the lease
            assert [c.job.id for c in again] == ["l"] and again[0].epoch > first[0].epoch
    asyncio.run(go())
