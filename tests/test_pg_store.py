"""The PostgreSQL store on a real server: migrations under the advisory lock, a newer schema
refused, the session settings, the password's way in, a database down at start, and exactly-once
counting with concurrent appliers on separate sessions."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from exporter.api.results import JobResult
from exporter.tracking.contract import Applied
from exporter.tracking.pg import connect
from exporter.tracking.pg.connect import StateDatabaseError, create_pool, create_pool_waiting
from exporter.tracking.pg.schema import SCHEMA_VERSION, SchemaError
from exporter.tracking.pg.store import CLAIM, PgJobStore
from helpers import free_port
from pg import PASSWORD

BUCKETS = (1.0, 10.0)


async def opened(url: str, password_file: str, size: int = 4) -> PgJobStore:
    store = PgJobStore(await create_pool(url, password_file, max_size=size), BUCKETS)
    await store.migrate()
    return store


def test_replicas_starting_together_migrate_once(pg_db, pg_server):
    url, pw = pg_db

    async def go():
        stores = [PgJobStore(await create_pool(url, pw, max_size=1), BUCKETS) for _ in range(4)]
        found = await asyncio.gather(*(s.migrate() for s in stores))
        # Under the lock exactly one saw an empty database; the others found it migrated.
        assert sorted(found) == [0] + [SCHEMA_VERSION] * 3
        await asyncio.gather(*(s.pool.close() for s in stores))
    asyncio.run(go())
    name = url.rsplit("/", 1)[1]
    assert pg_server.psql("SELECT value FROM meta WHERE key = 'schema_version'", db=name).strip() == str(SCHEMA_VERSION)


def test_a_newer_schema_is_refused_with_one_line_and_left_alone(pg_db, pg_server):
    url, pw = pg_db
    name = url.rsplit("/", 1)[1]

    async def go():
        store = await opened(url, pw)
        await store.register(["keep"], "chat", "g", "config")
        await store.pool.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(SchemaError) as err:
            await store.migrate()
        await store.pool.close()
        return str(err.value)
    message = asyncio.run(go())
    assert "\n" not in message and "schema 99" in message and str(SCHEMA_VERSION) in message
    assert pg_server.psql("SELECT id FROM jobs", db=name).split() == ["keep"]
    assert pg_server.psql("SELECT value FROM meta WHERE key = 'schema_version'", db=name).strip() == "99"


def test_sessions_cannot_sit_idle_in_a_transaction(pg_db):
    url, pw = pg_db

    async def go():
        pool = await create_pool(url, pw)
        try:
            return await pool.fetchval("SHOW idle_in_transaction_session_timeout")
        finally:
            await pool.close()
    assert asyncio.run(go()) == f"{connect.IDLE_IN_TRANSACTION_MS // 1000}s"


def test_the_password_comes_from_a_file_or_pgpassword_never_the_url(pg_db, tmp_path, monkeypatch):
    url, pw = pg_db
    with pytest.raises(StateDatabaseError) as err:
        connect.check_url(url.replace("postgres@", f"postgres:{PASSWORD}@"))
    assert PASSWORD not in str(err.value) and "state.password_file" in str(err.value)
    with pytest.raises(StateDatabaseError):
        connect.check_url("mysql://x@h/db")

    async def works(password_file):
        pool = await create_pool(url, password_file)
        try:
            return await pool.fetchval("SELECT 1")
        finally:
            await pool.close()
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    assert asyncio.run(works(pw)) == 1
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert asyncio.run(works(None)) == 1
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(StateDatabaseError) as err:  # a wrong password is not waited on
        asyncio.run(create_pool_waiting(url, str(wrong)))
    assert "not-the-password" not in str(err.value) and "127.0.0.1" in str(err.value)


def test_a_database_down_at_start_is_waited_for_with_one_line_naming_the_host(pg_server, caplog, monkeypatch):
    port = free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    monkeypatch.setattr(connect, "BACKOFF_MAX", 0.2)
    caplog.set_level(logging.INFO, logger="distribute.state")

    async def go():
        task = asyncio.create_task(create_pool_waiting(url, str(pg_server.password_file)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(caplog.records) < 1:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # several retries happen meanwhile
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}/postgres" in lines[0] and "not ready" in lines[0] and PASSWORD not in lines[0]


def test_a_final_answer_is_counted_once_however_many_replicas_apply_it(pg_db):
    url, pw = pg_db
    ids = [f"job-{i:03d}" for i in range(40)]

    async def go():
        replicas = [await opened(url, pw, size=3) for _ in range(4)]
        await replicas[0].register(ids, "chat", "g", "config")
        now = time.time()
        answer = JobResult("COMPLETED", model="m", created=now - 2, finished=now, prompt_tokens=3,
                           completion_tokens=4)

        async def applier(store):
            # Each replica claims what it can and also applies every id's final answer as a proxy
            # would: four sources of the same final answers, on separate sessions, at once.
            outcomes = []
            for claim in await store.claim(15, 60):
                outcomes.append(await store.apply(claim, answer, 30))
            outcomes += await asyncio.gather(*(store.apply_final(i, answer) for i in ids))
            return outcomes
        results = await asyncio.gather(*(applier(r) for r in replicas))
        facts = await replicas[1].facts()
        for r in replicas:
            await r.pool.close()
        return [o for rs in results for o in rs], facts
    outcomes, facts = asyncio.run(go())
    assert outcomes.count(Applied.FINAL) == len(ids)
    assert set(outcomes) <= {Applied.FINAL, Applied.ALREADY_FINAL}
    assert facts.finished[("chat", "g", "m", "COMPLETED")] == len(ids)
    assert facts.tokens[("g", "m", "prompt")] == 3 * len(ids)
    assert facts.durations[("chat", "g", "m", "COMPLETED")].count == len(ids)
    assert facts.jobs[("chat", "g", "m", "COMPLETED")] == len(ids)
    assert sum(facts.jobs.values()) == len(ids)


def test_claims_from_concurrent_replicas_never_overlap(pg_db):
    url, pw = pg_db

    async def go():
        replicas = [await opened(url, pw, size=2) for _ in range(3)]
        await replicas[0].register([f"c{i}" for i in range(300)], "images", "g", "config")
        batches = await asyncio.gather(*(r.claim(50, 60) for r in replicas for _ in range(3)))
        for r in replicas:
            await r.pool.close()
        return [c.job.id for b in batches for c in b]
    claimed = asyncio.run(go())
    assert len(claimed) == len(set(claimed)) and len(claimed) >= 150


def test_heartbeats_count_live_replicas_and_one_leader_holds_a_task(pg_db):
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        try:
            assert await store.heartbeat("r1", 5) == 1
            assert await store.heartbeat("r2", 5) == 2
            await store.pool.execute("UPDATE replicas SET seen = seen - 10 WHERE name = 'r1'")
            assert await store.heartbeat("r2", 5) == 1  # r1 stopped beating
            assert await store.lead("retention", "r1", 30) is True
            assert await store.lead("retention", "r2", 30) is False
            assert await store.lead("retention", "r1", 30) is True
            await store.pool.execute("UPDATE leaders SET until = until - 60")
            assert await store.lead("retention", "r2", 30) is True  # r1's term ran out
        finally:
            await store.pool.close()
    asyncio.run(go())


def test_retention_drops_old_final_jobs_keeps_counters_and_never_tracks_them_again(pg_db):
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        try:
            await store.register(["old", "open"], "chat", "g", "config")
            now = time.time()
            await store.apply_final("old", JobResult("COMPLETED", model="m", created=now - 5, finished=now - 4))
            await store.pool.execute("UPDATE jobs SET ended = ended - 3600 WHERE id = 'old'")
            assert await store.retire_ended_before(600) == 1
            facts = await store.facts()
            assert facts.finished[("chat", "g", "m", "COMPLETED")] == 1
            assert facts.jobs[("chat", "g", "m", "COMPLETED")] == 0
            assert await store.register(["old"], "chat", "g", "config") == ([], 1)
        finally:
            await store.pool.close()
    asyncio.run(go())


def test_the_gauges_leader_row_serves_scrapes_and_a_stale_row_is_replaced_by_a_scan(pg_db):
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        try:
            await store.register(["a", "b", "c"], "chat", "g", "config")
            await store.refresh_gauges()
            await store.register(["d", "e"], "chat", "g", "config")
            cached = await store.facts(max_age=60)
            live = await store.facts()
            await store.pool.execute("UPDATE gauges SET at = at - 120")
            stale = await store.facts(max_age=60)
            return cached, live, stale
        finally:
            await store.pool.close()
    cached, live, stale = asyncio.run(go())
    assert cached.jobs[("chat", "g", "", "UNKNOWN")] == 3  # the leader's row, as it was computed
    assert live.jobs[("chat", "g", "", "UNKNOWN")] == 5
    assert stale.jobs[("chat", "g", "", "UNKNOWN")] == 5  # too old: scanned instead


def test_many_answers_in_one_statement_each_under_its_own_claims_epoch(pg_db):
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        try:
            await store.register(["m1", "m2", "m3"], "images", "g", "config")
            claims = {c.job.id: c for c in await store.claim(10, 60)}
            await store.pool.execute("UPDATE jobs SET next_due = 0 WHERE id = 'm3'")  # as if its lease ran out
            newer = {c.job.id: c for c in await store.claim(10, 60)}  # m3 claimed again
            await store.apply_final("m2", JobResult("COMPLETED", model="x"))
            applied = await store.apply_many([(claims[i], JobResult("PROCESSING", model="x"), 30) for i in claims])
            return applied, {i: (await store.get(i)).status for i in ("m1", "m2", "m3")}, newer
        finally:
            await store.pool.close()
    applied, statuses, newer = asyncio.run(go())
    assert set(newer) == {"m3"}
    assert applied == 1  # m1 only: m2 became final, m3 was claimed again
    assert statuses == {"m1": "PROCESSING", "m2": "COMPLETED", "m3": "UNKNOWN"}


def test_a_batch_of_final_answers_is_one_transaction_that_counts_each_job_once(pg_db):
    """`finish_many` (the poll loop's finals): each answer checked under its row lock (unknown,
    already final, stale epoch, the same id twice), the rest made final with their counters, the
    deadline mark and the owed trace; two replicas finishing overlapping batches at once (in
    opposite orders) neither deadlock nor count a job twice."""
    url, pw = pg_db
    ids = [f"f{i}" for i in range(8)]

    async def go():
        a, b = await opened(url, pw), await opened(url, pw)
        for store in (a, b):
            store.owe_traces, store.deadline_seconds = True, 3600.0
        try:
            await a.register(ids, "chat", "g", "config")
            epochs = {c.job.id: c.epoch for c in await a.claim(20, 60)}
            await a.pool.execute("UPDATE jobs SET next_due = 0 WHERE id = 'f1'")  # its lease ran out
            assert [c.job.id for c in await b.claim(20, 60)] == ["f1"]  # f1 claimed again: epochs[f1] stale
            assert await b.apply_final("f2", JobResult("ERROR", model="m")) is Applied.FINAL  # a proxy saw it
            now = await a.now()
            late = JobResult("COMPLETED", model="m", created=now - 7200, finished=now, prompt_tokens=2)
            done = JobResult("COMPLETED", model="m", created=now - 5, finished=now, prompt_tokens=2)
            first = await a.finish_many([("f0", late, epochs["f0"]), ("f1", done, epochs["f1"]),
                                         ("f2", done, epochs["f2"]), ("nobody", done, 1),
                                         ("f3", None, epochs["f3"]), ("f3", done, epochs["f3"])])
            # The rest by both replicas at once, overlapping, in opposite orders, without epochs (as proxies).
            rest = [(i, done, None) for i in ids[4:]]
            both = await asyncio.gather(a.finish_many(rest), b.finish_many(rest[::-1]))
            facts = await b.facts()
            owed = {r["job_id"] for r in await a.pool.fetch("SELECT job_id FROM traces_owed")}
            marked = {r["id"] for r in await a.pool.fetch("SELECT id FROM jobs WHERE deadline_counted")}
            rows = {r["id"]: (r["status"], r["final"])
                    for r in await a.pool.fetch("SELECT id, status, final FROM jobs")}
            return first, both, facts, owed, marked, rows
        finally:
            await a.pool.close()
            await b.pool.close()
    first, both, facts, owed, marked, rows = asyncio.run(go())
    assert first == [Applied.FINAL, Applied.STALE, Applied.ALREADY_FINAL, Applied.UNKNOWN, Applied.FINAL,
                     Applied.ALREADY_FINAL]
    assert sorted(both[0] + both[1], key=lambda o: o.value) == sorted(
        [Applied.FINAL] * 4 + [Applied.ALREADY_FINAL] * 4, key=lambda o: o.value)
    assert facts.finished[("chat", "g", "m", "COMPLETED")] == 5  # f0 and f4..f7, once each
    assert facts.finished[("chat", "g", "m", "ERROR")] == 1  # f2, by the proxy
    assert facts.tokens[("g", "m", "prompt")] == 10
    assert facts.deadline_exceeded[("chat", "g")] == 1 and marked == {"f0"}
    assert owed == {"f0", "f2", "f4", "f5", "f6", "f7"}  # not f3: NOT_FOUND owes no trace
    assert rows["f1"] == ("UNKNOWN", 0) and rows["f3"] == ("NOT_FOUND", 2)
    assert all(rows[i] == ("COMPLETED", 1) for i in ids[4:])


def test_after_a_large_registration_the_claim_walks_the_due_index_in_order(pg_db):
    """A claim must read about its batch's size of rows, not every due job: after an ids file's
    worth of new jobs the planner's statistics are refreshed, so that it plans the ordered walk of
    `jobs_due` (stopping at the limit) instead of a scan of all due jobs and a sort."""
    url, pw = pg_db

    async def go():
        store = await opened(url, pw)
        for start in range(0, 6000, 2000):  # an ids file per group, as at start
            await store.register([f"j{i:05d}" for i in range(start, start + 2000)], "chat", "g", "config")
        plan = "\n".join(r[0] for r in await store.answers.fetch("EXPLAIN " + CLAIM, 64, 60))
        claims = await store.claim(64, 60)
        await store.pool.close()
        return plan, claims
    plan, claims = asyncio.run(go())
    assert "Index Scan using jobs_due" in plan and "Sort" not in plan, plan
    assert len(claims) == 64 and all(c.job.id < "j02000" for c in claims)  # the earliest due: the first file's
