"""The job facts read by what changed (tracking/pg/facts.py, schema version 4), on a real PostgreSQL:
a replica that keeps its decoded counters between reads answers exactly what a whole read answers,
whatever order writers commit in, after deletions, and with the same version while nothing changed."""

from __future__ import annotations

import asyncio
import time

import pytest

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.pg.connect import create_pool
from exporter.tracking.pg.export import recount_closed
from exporter.tracking.pg.store import PgJobStore, add_counters

BUCKETS = (1.0, 10.0)


def facts_of(agg: JobAggregates) -> dict:
    """Every value an answer carries, as plain data (zero series included: they are exported too)."""
    return {"jobs": dict(agg.jobs), "finished": dict(agg.finished), "closed": dict(agg.closed),
            "tokens": dict(agg.tokens), "results": dict(agg.results), "deadline": dict(agg.deadline_exceeded),
            "durations": {k: (list(h.counts), h.total, h.count) for k, h in agg.durations.items()},
            "oldest": agg.oldest_unfinished(lambda job_id, created: True)}


async def whole(url: str, pw: str) -> dict:
    """What a replica that has never read before (so reads every row) answers now."""
    fresh = PgJobStore(await create_pool(url, pw, max_size=1), BUCKETS)
    try:
        return facts_of(await fresh.facts())
    finally:
        await fresh.pool.close()


def final(now: float, seconds: float, model: str = "m") -> JobResult:
    return JobResult("COMPLETED", model=model, created=now - seconds, finished=now, prompt_tokens=3,
                     completion_tokens=4)


def counters_of(facts: dict) -> dict:
    return {k: v for k, v in facts.items() if k not in ("jobs", "oldest")}


@pytest.mark.parametrize("max_age", [None, 600.0])  # the transaction's reads; the one statement's
def test_a_writer_committing_after_a_later_one_is_still_read(pg_db, max_age):
    """Writer A takes its transaction id first and commits last: a reader that looked in between
    (and saw B) must find A's rows at its next read, though A's id is below B's."""
    url, pw = pg_db

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=3), BUCKETS)
        await store.migrate()
        try:
            await store.register(["x", "y"], "chat", "g", "config")
            await store.refresh_gauges()
            await store.facts()
            async with store.pool.acquire() as a:
                slow = a.transaction()
                await slow.start()
                # Other rows than B's, or B would wait for A's row locks.
                await add_counters(a, [("finished", ("chat", "g", "other", "COMPLETED"), 5.0),
                                       ("duration_bucket", ("chat", "g", "other", "COMPLETED", "10.0"), 5.0),
                                       ("duration_count", ("chat", "g", "other", "COMPLETED"), 5.0)])
                await store.apply_final("x", final(time.time(), 2.0))  # B: a later id, committed first
                between = facts_of(await store.facts(max_age))
                await slow.commit()
            after = facts_of(await store.facts(max_age))
            return between, after, await whole(url, pw), store._facts.full_reads
        finally:
            await store.pool.close()
    between, after, truth, full_reads = asyncio.run(go())
    assert between["finished"] == {("chat", "g", "m", "COMPLETED"): 1}  # B only
    assert after["finished"][("chat", "g", "other", "COMPLETED")] == 5  # A's found after all
    assert after["durations"][("chat", "g", "other", "COMPLETED")] == ([0, 5, 0], 0.0, 5)
    assert counters_of(after) == counters_of(truth)
    assert full_reads == 1  # the later reads read what changed


def test_deleted_counter_rows_are_dropped_by_a_replica_that_keeps_its_counters(pg_db):
    """`state export` recounts `closed` by deleting its rows and adding them again: a row that is not
    added again must leave a replica's answer too."""
    url, pw = pg_db

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=2), BUCKETS)
        await store.migrate()
        try:
            await store.register(["a", "b"], "chat", "g", "config")
            now = time.time()
            await store.apply_final("a", final(now, 2.0))
            await store.apply_final("b", final(now, 20.0, model="gone"))
            before = facts_of(await store.facts())
            await store.pool.execute("DELETE FROM jobs WHERE id = 'b'")  # as if never there
            await recount_closed(store)
            after = facts_of(await store.facts())
            return before, after, await whole(url, pw)
        finally:
            await store.pool.close()
    before, after, truth = asyncio.run(go())
    assert before["closed"][("chat", "g", "gone", "COMPLETED")] == 1
    assert ("chat", "g", "gone", "COMPLETED") not in after["closed"]
    assert after == truth


def test_nothing_changed_keeps_the_version_and_a_change_moves_it(pg_db):
    url, pw = pg_db

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=2), BUCKETS)
        await store.migrate()
        try:
            await store.register(["a", "b"], "chat", "g", "config")
            await store.refresh_gauges()
            first = await store.facts(max_age=60)
            await store.refresh_gauges()  # the same gauges written again
            same = await store.facts(max_age=60)
            await store.apply_final("a", final(time.time(), 2.0))
            moved = await store.facts(max_age=60)
            return first, same, moved
        finally:
            await store.pool.close()
    first, same, moved = asyncio.run(go())
    assert same.version == first.version and facts_of(same) == facts_of(first)
    assert moved.version > same.version
    assert moved.finished[("chat", "g", "m", "COMPLETED")] == 1 and not first.finished
    # Each answer is its own: the earlier ones kept their values when later reads changed the counters.
    assert first.durations == {} and moved.durations[("chat", "g", "m", "COMPLETED")].count == 1


def test_many_interleaved_writers_read_incrementally_equal_a_whole_read(pg_db):
    """Finals, retention's negative `closed` deltas and deadline counts from concurrent sessions,
    read in between by one replica: its answer equals a whole read's at the end."""
    url, pw = pg_db

    async def go():
        store = PgJobStore(await create_pool(url, pw, max_size=6), BUCKETS)
        await store.migrate()
        try:
            ids = [f"j{i:03d}" for i in range(120)]
            for n, start in enumerate(range(0, len(ids), 40)):
                await store.register(ids[start:start + 40], "chat", f"g{n}", "config")
            now = time.time()

            async def finish(chunk: list[str]) -> None:
                for k, job_id in enumerate(chunk):
                    await store.apply_final(job_id, final(now, 0.5 + k % 15, model=f"m{k % 4}"))

            async def reader() -> int:
                reads = 0
                while not done.is_set():
                    await store.facts(max_age=600.0 if reads % 2 else None)  # both ways of reading
                    reads += 1
                    await asyncio.sleep(0)
                return reads
            await store.refresh_gauges()
            done = asyncio.Event()
            reading = asyncio.ensure_future(reader())
            await asyncio.gather(*(finish(ids[i:i + 20]) for i in range(0, 100, 20)))
            await store.pool.execute("UPDATE jobs SET ended = ended - 7200 WHERE id < 'j030'")
            await store.retire_ended_before(3600)
            done.set()
            reads = await reading
            return facts_of(await store.facts()), await whole(url, pw), reads, store._facts.full_reads
        finally:
            await store.pool.close()
    mine, truth, reads, full_reads = asyncio.run(go())
    assert reads > 3 and full_reads == 1
    assert sum(mine["finished"].values()) == 100
    assert mine == truth
