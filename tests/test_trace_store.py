"""Owed traces in both backends: owed by the transaction that makes a job final, exactly once
whoever brings the final answer, taken by one replica at a time, settled, and bounded oldest first
(SQLite file and a real PostgreSQL, tests/pg.py)."""

from __future__ import annotations

import asyncio
import time

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.contract import Applied
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.local import LocalJobStore
from exporter.tracking.store import StateStore
from exporter.tracking.trace_queue import SqliteOwedTraces

BUCKETS = (1.0, 10.0)


def final(status: str = "COMPLETED") -> JobResult:
    now = time.time()
    return JobResult(status, model="m", created=now - 2, finished=now, prompt_tokens=3, completion_tokens=4)


def test_sqlite_owes_a_trace_with_the_final_row_once_and_survives_reopening(tmp_path):
    path = str(tmp_path / "state.db")

    async def first_run():
        store = StateStore(path)
        await store.call(store.open)
        tracked = TrackedJobs(store, JobAggregates(BUCKETS))
        tracked.owe_traces = True
        await tracked.load()
        local = LocalJobStore(tracked)
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]
        await local.register(ids, "chat", "g", "config")
        assert await local.apply_final(ids[0], final()) is Applied.FINAL
        assert await local.apply_final(ids[0], final()) is Applied.ALREADY_FINAL
        assert await local.apply_final(ids[1], final("ERROR")) is Applied.FINAL
        owed = SqliteOwedTraces(store)
        assert await owed.take(10, 60) == []  # not written yet: owed with the row, by the flush
        await tracked.flush()
        taken = await owed.take(10, 60)
        for job_id in ids[2:]:
            await local.apply_final(job_id, final())
        await tracked.flush()
        store.shutdown()
        return ids, taken

    ids, taken = asyncio.run(first_run())
    assert [job_id for job_id, _ in taken] == ids[:2]
    assert taken[1][1]["status"] == "ERROR" and taken[0][1]["prompt_tokens"] == 3

    async def second_run():
        store = StateStore(path)
        await store.call(store.open)
        owed = SqliteOwedTraces(store)
        assert await owed.trim(10) == (0, 6)
        await owed.settle(ids[:1])
        assert await owed.trim(3) == (2, 3)  # the oldest went: ids[1] and ids[2]
        left = [job_id for job_id, _ in await owed.take(10, 60)]
        store.shutdown()
        return left

    assert asyncio.run(second_run()) == ids[3:]


def test_postgresql_owes_once_whoever_applies_and_replicas_take_disjoint_batches(pg_db):
    from test_pg_store import opened

    from exporter.tracking.pg.traces import PgOwedTraces

    url, pw = pg_db
    ids = [f"job-{i:03d}" for i in range(30)]

    async def go():
        replicas = [await opened(url, pw, size=3) for _ in range(3)]
        for r in replicas:
            r.owe_traces = True
        await replicas[0].register(ids, "chat", "g", "config")
        outcomes = await asyncio.gather(*(r.apply_final(i, final()) for r in replicas for i in ids))
        owed = [PgOwedTraces(r.pool, f"replica-{n}") for n, r in enumerate(replicas)]
        assert await owed[0].trim(1000) == (0, len(ids))
        first, second = await asyncio.gather(owed[0].take(12, 60), owed[1].take(12, 60))
        third = await owed[2].take(100, 60)
        again = await owed[0].take(100, 60)  # its own lease: the same batch again (a retry)
        await owed[0].settle([i for i, _ in first])
        dropped = await owed[1].trim(5)
        for r in replicas:
            await r.pool.close()
        return outcomes, first, second, third, again, dropped

    outcomes, first, second, third, again, dropped = asyncio.run(go())
    assert outcomes.count(Applied.FINAL) == len(ids)
    taken = [i for batch in (first, second, third) for i, _ in batch]
    assert sorted(taken) == ids  # each owed once, each taken by one replica
    assert all(row is not None and row["status"] == "COMPLETED" for _, row in first)
    assert [i for i, _ in again] == [i for i, _ in first]
    assert dropped == (len(ids) - 12 - 5, 5)
