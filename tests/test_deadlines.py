"""distribute_jobs_deadline_exceeded_total: each job unfinished past metrics.job_deadline_seconds is
counted exactly once, by the tracking layer against a real SQLite file, and by a real exporter
process across a kill -9 and a restart."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.store import StateStore
from helpers import holds_for, http, total, wait_for, write_config
from test_exporter import config_text
from test_tracking import Recorder, ids

LIMIT = 100.0
T0 = 1_000_000.0  # the tests' clock: jobs are created around it


async def opened(path: Path) -> tuple[StateStore, TrackedJobs]:
    store = StateStore(str(path))
    await store.call(store.open)
    jobs = TrackedJobs(store, JobAggregates((1.0, 10.0)))
    jobs.deadline_seconds = LIMIT
    await jobs.load()
    return store, jobs


def exceeded(jobs: TrackedJobs) -> dict[tuple[str, str], int]:
    return {k: v for k, v in jobs.agg.deadline_exceeded.items() if v}


def test_a_sweep_counts_each_stuck_job_once_and_a_restart_counts_none_again(tmp_path):
    path = tmp_path / "state.db"

    async def first_run():
        store, jobs = await opened(path)
        recorder = Recorder(store)
        accepted, _ = await jobs.track(ids(4), "chat", "g", "file:x", T0)
        for n, job_id in enumerate(accepted):  # created T0 + 0, 10, 20, 30; all still running
            jobs.apply(jobs.open[job_id], JobResult("PROCESSING", "m", T0 + 10 * n), T0 + 1)
        assert jobs.sweep_deadlines(T0 + LIMIT + 15) == 2  # the deadlines of the first two passed
        assert jobs.sweep_deadlines(T0 + LIMIT + 15) == 0  # nothing new
        await jobs.flush()
        # the counts and the cutoff that covers them went in one transaction
        families = {family for family, _, _ in recorder.writes[-1].counters}
        assert {"deadline_exceeded", "deadline_cutoff"} <= families
        # the first job finishes late: it was counted already, and is not counted again
        jobs.apply(jobs.open[accepted[0]], JobResult("COMPLETED", "m", T0, T0 + LIMIT + 50), T0 + LIMIT + 60)
        await jobs.flush()
        store.shutdown()
        return accepted, exceeded(jobs)

    accepted, counts = asyncio.run(first_run())
    assert counts == {("chat", "g"): 2}

    async def second_run():
        store, jobs = await opened(path)
        after_restart = exceeded(jobs)
        # a sweep after the restart counts only the two whose deadline had not passed
        swept = jobs.sweep_deadlines(T0 + LIMIT + 45)
        await jobs.flush()
        store.shutdown()
        return after_restart, swept, exceeded(jobs)

    after_restart, swept, counts = asyncio.run(second_run())
    assert after_restart == {("chat", "g"): 2}
    assert swept == 2 and counts == {("chat", "g"): 4}


def test_a_job_first_seen_late_is_counted_by_what_its_answer_says(tmp_path):
    async def scenario():
        store, jobs = await opened(tmp_path / "state.db")
        jobs.sweep_deadlines(T0 + 1000)  # cutoff T0 + 900
        stuck, late, quick, fresh = (await jobs.track(ids(4, seed=9), "images", "r", "api", T0 + 1000))[0]
        jobs.apply(jobs.open[stuck], JobResult("QUEUED", "m", T0), T0 + 1001)  # unfinished, past its deadline
        jobs.apply(jobs.open[late], JobResult("ERROR", "m", T0, T0 + LIMIT + 1), T0 + 1001)  # finished late
        jobs.apply(jobs.open[quick], JobResult("COMPLETED", "m", T0, T0 + LIMIT - 1), T0 + 1001)  # in time
        jobs.apply(jobs.open[fresh], JobResult("QUEUED", "m", T0 + 950), T0 + 1001)  # deadline still ahead
        after_answers = exceeded(jobs)
        jobs.apply(jobs.open[stuck], JobResult("QUEUED", "m", T0), T0 + 1002)  # asked again: no change
        again = exceeded(jobs)
        swept = jobs.sweep_deadlines(T0 + 950 + LIMIT)  # now the fresh one's deadline passed
        store.shutdown()
        return after_answers, again, swept, exceeded(jobs)

    after_answers, again, swept, final = asyncio.run(scenario())
    assert after_answers == again == {("images", "r"): 2}
    assert swept == 1 and final == {("images", "r"): 3}


def test_a_job_finishing_past_its_deadline_before_any_sweep_counts_once(tmp_path):
    async def scenario():
        store, jobs = await opened(tmp_path / "state.db")
        [job_id], _ = await jobs.track(ids(1, seed=3), "speech", "s", "api", T0)
        jobs.apply(jobs.open[job_id], JobResult("PROCESSING", "m", T0), T0 + 1)
        jobs.apply(jobs.open[job_id], JobResult("COMPLETED", "m", T0, T0 + LIMIT + 5), T0 + LIMIT + 6)
        counted = exceeded(jobs)
        swept = jobs.sweep_deadlines(T0 + 10 * LIMIT)  # it is final: the sweep does not see it
        store.shutdown()
        return counted, swept, exceeded(jobs)

    counted, swept, final = asyncio.run(scenario())
    assert counted == final == {("speech", "s"): 1} and swept == 0


def test_a_shorter_limit_counts_the_jobs_between_the_cutoffs_and_a_longer_one_waits(tmp_path):
    async def scenario():
        store, jobs = await opened(tmp_path / "state.db")
        accepted, _ = await jobs.track(ids(3, seed=5), "chat", "g", "api", T0)
        for n, job_id in enumerate(accepted):  # created T0, T0 + 50, T0 + 80
            jobs.apply(jobs.open[job_id], JobResult("QUEUED", "m", T0 + (0, 50, 80)[n]), T0)
        jobs.sweep_deadlines(T0 + LIMIT + 10)  # cutoff T0 + 10: the first
        jobs.deadline_seconds = LIMIT / 2
        shorter = jobs.sweep_deadlines(T0 + LIMIT + 10)  # cutoff T0 + 60: the second
        jobs.deadline_seconds = LIMIT * 2
        longer = jobs.sweep_deadlines(T0 + LIMIT + 60)  # cutoff would go back to T0 - 140: stays
        store.shutdown()
        return shorter, longer, exceeded(jobs), jobs.agg.deadline_cutoff_value

    shorter, longer, counts, cutoff = asyncio.run(scenario())
    assert (shorter, longer, counts, cutoff) == (1, 0, {("chat", "g"): 2}, T0 + 60)


def test_declared_groups_export_a_zero_series():
    agg = JobAggregates((1.0,))
    agg.declare_group("chat", "nightly")
    assert agg.deadline_exceeded == {("chat", "nightly"): 0}


def test_the_exporter_counts_stuck_jobs_once_across_kill_9_and_a_restart(simulator, exporter, tmp_path):
    # At a ten-thousandth of real speed no simulated job finishes during the test: a stuck queue.
    sim = simulator("--seed", "4", "--speed", "0.0001")
    stuck = sim.create("chat", 5)
    groups = f"  - {{kind: chat, group: stuck, ids: {json.dumps(stuck)}}}\n"
    text = config_text(sim.url, groups).replace("jobs:\n", "metrics: {job_deadline_seconds: 2}\njobs:\n", 1)
    config = write_config(tmp_path, text)
    proc = exporter(config)
    counted = lambda p: total(p.samples("distribute_jobs_deadline_exceeded_total"), group="stuck")  # noqa: E731
    wait_for(lambda: counted(proc) == 5, 30, what="five stuck jobs counted")
    holds_for(lambda: counted(proc) == 5, 1.5, what="each counted once")
    # the counts reach the state file with the next batch (flush_interval_seconds 0.2), then kill -9
    wait_for(lambda: _stored_count(tmp_path / "state.db") == 5, 30, what="the counts stored")
    proc.stop(signal.SIGKILL)

    proc = exporter(config)
    assert counted(proc) == 5
    polls = total(proc.samples("distribute_exporter_polls_total"))
    wait_for(lambda: total(proc.samples("distribute_exporter_polls_total")) >= polls + 10, 30,
             what="the restarted exporter polls and sweeps")
    assert counted(proc) == 5
    more = sim.create("chat", 2)
    config.write_text(text + f"  - {{kind: chat, group: stuck, ids: {json.dumps(more)}}}\n")
    assert http("POST", f"{proc.url}/-/reload")[0] == 200
    wait_for(lambda: counted(proc) == 7, 30, what="the two new stuck jobs counted")
    holds_for(lambda: counted(proc) == 7, 1.5, what="no job counted twice")


def _stored_count(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM counters WHERE family = 'deadline_exceeded' AND labels = ?",
                         (json.dumps(["chat", "stuck"], separators=(",", ":")),)).fetchone()
    return int(json.loads(row[0])) if row else 0


def test_a_schema_7_file_is_migrated_and_keeps_its_counts(tmp_path):
    """Schema 8 marks files that may hold the deadline families: a file of schema 7 is carried over
    with its counters, and counts deadlines from then on."""
    import sqlite3

    from exporter.tracking.migrations import SCHEMA_VERSION

    path = tmp_path / "state.db"

    async def write_old():
        store, jobs = await opened(path)
        [job_id], _ = await jobs.track(ids(1, seed=11), "chat", "g", "api", T0)
        jobs.apply(jobs.open[job_id], JobResult("COMPLETED", "m", T0, T0 + 5), T0 + 6)
        await jobs.flush()
        store.shutdown()

    asyncio.run(write_old())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        db.execute("DELETE FROM counters WHERE family LIKE 'deadline_%'")

    async def reopen():
        store, jobs = await opened(path)
        finished = dict(jobs.agg.finished)
        version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        cutoff = jobs.agg.deadline_cutoff_value
        store.shutdown()
        return finished, version, cutoff

    finished, version, cutoff = asyncio.run(reopen())
    assert SCHEMA_VERSION >= 8 and version == str(SCHEMA_VERSION)  # 8: the deadline families; later ones too
    assert finished == {("chat", "g", "m", "COMPLETED"): 1} and cutoff == 0.0
