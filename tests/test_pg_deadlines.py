"""`distribute_jobs_deadline_exceeded_total` with PostgreSQL (tracking/pg/deadlines.py), on a real
server: stuck jobs counted once while two replicas' sweeps and late final answers race, a late
finish counted once whoever sees it first, a restart counting nothing again, and a replica's
/metrics/jobs serving the series."""

from __future__ import annotations

import asyncio
import json
import time

from exporter.api.results import JobResult
from exporter.tracking.contract import Applied
from exporter.tracking.pg.connect import create_pool
from exporter.tracking.pg.store import PgJobStore
from helpers import http, parse_samples, total, wait_for, write_config

BUCKETS = (1.0, 10.0)
LIMIT = 100.0


async def opened(url: str, password_file: str, size: int = 4) -> PgJobStore:
    store = PgJobStore(await create_pool(url, password_file, max_size=size), BUCKETS)
    await store.migrate()
    store.deadline_seconds = LIMIT
    return store


async def track_created(store: PgJobStore, ids: list[str], group: str, age: float) -> float:
    """Track `ids` and let a (non-final) answer say they were created `age` seconds ago by the
    database's clock; answer that `created`."""
    await store.register(ids, "chat", group, "config")
    created = await store.now() - age
    claims = await store.claim(len(ids) + 10, 60)
    assert {c.job.id for c in claims} >= set(ids)
    for claim in claims:
        if claim.job.id in ids:
            assert await store.apply(claim, JobResult("QUEUED", "m", created), 1000) is Applied.MOVED
    return created


async def counted(store: PgJobStore) -> dict[tuple[str, str], int]:
    return {k: v for k, v in (await store.facts()).deadline_exceeded.items() if v}


def test_two_replicas_sweeping_and_finishing_at_once_count_each_job_once(pg_db):
    url, pw = pg_db

    async def go():
        a, b = await opened(url, pw), await opened(url, pw)
        try:
            stuck = [f"s{i:03}" for i in range(200)]
            fresh = [f"f{i:02}" for i in range(20)]
            created = await track_created(a, stuck, "g", LIMIT + 50)
            await track_created(a, fresh, "g", LIMIT - 60)  # not past their deadline yet
            finishing = stuck[::3]  # these finish late while the sweeps run: counted by one or the other
            late = JobResult("COMPLETED", "m", created, created + LIMIT + 20)
            work = [s.sweep_deadlines() for s in (a, b) for _ in range(5)]
            work += [(a if n % 2 else b).apply_final(i, late) for n, i in enumerate(finishing)]
            results = await asyncio.gather(*work)
            assert results[10:] == [Applied.FINAL] * len(finishing)
            # The sweeps counted every stuck job that did not finish; the late finishes the rest.
            assert sum(results[:10]) >= len(stuck) - len(finishing)
            assert await counted(a) == {("chat", "g"): 200}
            # Later sweeps and answers add nothing; the fresh jobs are still within their deadline.
            assert await a.sweep_deadlines() == 0 and await b.sweep_deadlines() == 0
            assert await b.apply_final(stuck[1], late) is Applied.FINAL  # swept before, finishes late now
            assert await counted(b) == {("chat", "g"): 200}
            marked = await a.pool.fetchval("SELECT count(*) FROM jobs WHERE deadline_counted")
            assert marked == 200
        finally:
            await a.pool.close()
            await b.pool.close()
    asyncio.run(go())


def test_a_late_finish_is_counted_once_an_early_one_never_and_a_restart_repeats_nothing(pg_db):
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        try:
            now = await store.now()
            await store.register(["late", "quick", "gone", "stuck"], "images", "r", "config")
            # First seen final: finished more than the limit after it was created.
            late = JobResult("ERROR", "m", now - 500, now - 500 + LIMIT + 1)
            assert await store.apply_final("late", late) is Applied.FINAL
            assert await store.apply_final("late", late) is Applied.ALREADY_FINAL
            assert await store.apply_final("quick", JobResult("COMPLETED", "m", now - 500, now - 500 + LIMIT - 1)) \
                is Applied.FINAL
            assert await counted(store) == {("images", "r"): 1}
            await track_created(store, ["gone", "stuck"], "r", LIMIT + 5)
            claims = [c for c in await store.claim(10, 60) if c.job.id == "gone"]
            assert not claims  # leased until its next poll: NOT_FOUND is given under a fresh claim
            await store.pool.execute("UPDATE jobs SET next_due = 0, first_tracked = first_tracked - 1000 "
                                     "WHERE id = 'gone'")
            claim = next(c for c in await store.claim(10, 60) if c.job.id == "gone")
            assert await store.not_found(claim, 30, 5) is Applied.FINAL  # NOT_FOUND: never counted
            assert await store.sweep_deadlines() == 1  # "stuck"
            assert await counted(store) == {("images", "r"): 2}
        finally:
            await store.pool.close()
        # A restart: new sessions, a new process's store; the marks are in the rows.
        again = await opened(url, pw)
        try:
            assert await again.migrate() > 0
            assert await again.sweep_deadlines() == 0
            assert await again.apply_final("stuck", JobResult("COMPLETED", "m", now - 5000, now)) is Applied.FINAL
            assert await counted(again) == {("images", "r"): 2}
        finally:
            await again.pool.close()
    asyncio.run(go())


def test_replicas_serve_the_stuck_jobs_in_metrics_jobs_counted_once(simulator, exporter, tmp_path, pg_db):
    url, password_file = pg_db
    # At a ten-thousandth of real speed no simulated job finishes during the test: a stuck queue.
    sim = simulator("--seed", "4", "--speed", "0.0001")
    stuck = sim.create("chat", 5)
    groups = f"  - {{kind: chat, group: stuck, ids: {json.dumps(stuck)}}}\n"
    text = (f"api: {{base_url: '{sim.url}', max_requests_per_second: 0}}\n"
            "poll: {interval_seconds: 0.2, max_interval_seconds: 1, not_found_grace_seconds: 30}\n"
            "metrics: {job_deadline_seconds: 2}\n"
            f"state: {{url: '{url}', password_file: '{password_file}'}}\njobs:\n{groups}")
    procs = []
    for i in range(2):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        procs.append(exporter(write_config(folder, text)))

    def served(proc) -> float:
        status, body, _ = http("GET", f"{proc.url}/metrics/jobs")
        assert status == 200, body
        return total(parse_samples(body.decode(), "distribute_jobs_deadline_exceeded_total"), kind="chat",
                     group="stuck")
    wait_for(lambda: all(served(p) == 5 for p in procs), 60, what="five stuck jobs counted on both replicas")
    for proc in procs:
        proc.stop()
    # Restarted: the marks are in the rows, so the new leader's sweeps find nothing new.
    again = exporter(write_config(tmp_path / "r0", text))
    assert served(again) == 5
    polls = total(again.samples("distribute_exporter_polls_total"))
    wait_for(lambda: total(again.samples("distribute_exporter_polls_total")) >= polls + 10, 30,
             what="the restarted replica polls (and leads the sweep)")
    assert served(again) == 5


def test_a_sqlite_file_exported_keeps_its_count_and_its_counted_jobs_are_not_counted_again(tmp_path, pg_db):
    from exporter.tracking.aggregates import JobAggregates
    from exporter.tracking.jobs import TrackedJobs
    from exporter.tracking.pg.export import export_file
    from exporter.tracking.store import StateStore

    url, pw = pg_db

    async def go():
        store = StateStore(str(tmp_path / "state.db"))
        await store.call(store.open)
        tracked = TrackedJobs(store, JobAggregates(BUCKETS))
        await tracked.load()
        tracked.deadline_seconds = LIMIT
        now = time.time()
        await tracked.track(["old1", "old2", "young"], "chat", "g", "config", now)
        for job_id, age in (("old1", LIMIT + 50), ("old2", LIMIT + 60), ("young", LIMIT - 30)):
            tracked.apply(tracked.open[job_id], JobResult("RUNNING", "m", now - age), now)
        assert tracked.sweep_deadlines(now) == 2
        await tracked.flush()
        store.shutdown()

        pg = await opened(url, pw)
        try:
            await export_file(pg, str(tmp_path / "state.db"))
            assert await counted(pg) == {("chat", "g"): 2}  # the file's count, carried over
            assert await pg.sweep_deadlines() == 0  # its two jobs were counted there
            await pg.pool.execute("UPDATE jobs SET created = created - 60 WHERE id = 'young'")
            assert await pg.sweep_deadlines() == 1  # not counted there: now past its deadline here
            assert await counted(pg) == {("chat", "g"): 3}
        finally:
            await pg.pool.close()
    asyncio.run(go())
