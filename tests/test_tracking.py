"""Tracked jobs against a real SQLite file: big batches, failed writes, and look-ups skipped safely."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import exporter.tracking.jobs as state_module
from exporter.tracking.aggregates import JobAggregates
from exporter.api.results import JobResult
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.store import StateStore


def ids(n: int, seed: int = 7) -> list[str]:
    return [f"{seed:08x}-{i * 7919 % 65536:04x}-4000-8000-{i:012x}" for i in range(n)]


class Recorder:
    """Wraps a store's `write` and `known` to see what reaches the file, and fails on request."""

    def __init__(self, store: StateStore, fail_on_write: int | None = None) -> None:
        self.writes: list = []
        self.known_calls = 0
        self.fail_on_write = fail_on_write
        self._write, self._known = store.write, store.known
        store.write, store.known = self.write, self.known  # type: ignore[method-assign]

    def write(self, batch) -> None:
        if self.fail_on_write == len(self.writes) + 1:
            self.fail_on_write = None
            raise sqlite3.OperationalError("disk I/O error")
        self.writes.append(batch)
        self._write(batch)

    def known(self, job_ids):
        self.known_calls += 1
        return self._known(job_ids)


def rows_in(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, final FROM jobs"))


def run(coro):
    return asyncio.run(coro)


async def opened(path: Path) -> tuple[StateStore, TrackedJobs]:
    store = StateStore(str(path))
    await store.call(store.open)
    jobs = TrackedJobs(store, JobAggregates((1.0, 10.0)))
    await jobs.load()
    return store, jobs


def test_a_big_batch_goes_in_key_order_chunks_with_the_counts_in_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "FLUSH_CHUNK", 10)
    path = tmp_path / "state.db"

    async def scenario():
        store, jobs = await opened(path)
        recorder = Recorder(store)
        accepted, duplicates = await jobs.track(ids(35), "chat", "g", "file:x", 1.0)
        done = jobs.open[accepted[20]]
        jobs.apply(done, JobResult("COMPLETED", "m", 1.0, 3.0, 5, 7), 4.0)
        written = await jobs.flush()
        store.shutdown()
        return accepted, duplicates, done.id, recorder, written

    accepted, duplicates, done_id, recorder, written = run(scenario())
    assert (len(accepted), duplicates, written) == (35, 0, 35)
    first, *rest = recorder.writes
    assert first.counters and done_id in [r[0] for r in first.upserts]
    assert [len(b.upserts) for b in recorder.writes] == [11, 10, 10, 4]
    assert all(not b.counters for b in rest)
    later = [r[0] for b in rest for r in b.upserts]
    assert later == sorted(later)
    stored = rows_in(path)
    assert set(stored) == set(accepted) and stored[done_id] == 1


def test_a_failed_chunk_keeps_every_unwritten_job_for_the_next_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "FLUSH_CHUNK", 10)
    path = tmp_path / "state.db"

    async def scenario():
        store, jobs = await opened(path)
        recorder = Recorder(store, fail_on_write=3)
        accepted, _ = await jobs.track(ids(35), "speech", "g", "file:x", 1.0)
        with pytest.raises(sqlite3.OperationalError):
            await jobs.flush()
        after_failure = len(rows_in(path))
        await jobs.flush()
        store.shutdown()
        return accepted, after_failure, [len(b.upserts) for b in recorder.writes]

    accepted, after_failure, sizes = run(scenario())
    assert after_failure == 20  # the first two transactions landed
    assert sizes == [10, 10, 10, 5]  # the 15 left over, and nothing twice
    assert set(rows_in(path)) == set(accepted)


def test_a_fresh_file_needs_no_lookups_yet_a_finished_id_is_never_tracked_twice(tmp_path):
    path = tmp_path / "state.db"
    job_id, other = ids(2, seed=9)

    async def first_life():
        store, jobs = await opened(path)
        recorder = Recorder(store)
        await jobs.track([job_id], "chat", "g", "config", 1.0)
        lookups_while_fresh = recorder.known_calls
        jobs.apply(jobs.open[job_id], JobResult("ERROR", "m", 1.0, 2.0), 3.0)
        await jobs.flush()
        again, _ = await jobs.track([job_id], "chat", "g", "config", 4.0)
        await jobs.untrack(job_id, 5.0)  # finished: it stays a tombstone
        await jobs.flush()
        after_retire, _ = await jobs.track([job_id, other], "chat", "g", "config", 6.0)
        await jobs.flush()
        store.shutdown()
        return lookups_while_fresh, recorder.known_calls, again, after_retire

    lookups_while_fresh, lookups, again, after_retire = run(first_life())
    assert lookups_while_fresh == 0 and lookups > 0
    assert again == [] and after_retire == [other]

    async def second_life():
        store, jobs = await opened(path)
        accepted, duplicates = await jobs.track([job_id], "chat", "g", "config", 7.0)
        store.shutdown()
        return accepted, duplicates

    assert run(second_life()) == ([], 1)


def test_a_flush_cancelled_at_shutdown_leaves_the_rest_for_the_last_flush(tmp_path, monkeypatch):
    monkeypatch.setattr(state_module, "FLUSH_CHUNK", 10)
    path = tmp_path / "state.db"
    started = threading.Event()

    async def scenario():
        store, jobs = await opened(path)
        real_write = store.write

        def slow_write(batch):  # the second transaction is still running when the flush is cancelled
            if started.is_set():
                time.sleep(0.3)
            started.set()
            real_write(batch)

        store.write = slow_write  # type: ignore[method-assign]
        accepted, _ = await jobs.track(ids(35), "chat", "g", "file:x", 1.0)
        flushing = asyncio.create_task(jobs.flush())
        deadline = time.monotonic() + 10
        while not started.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await jobs.flush()  # what stop() does after cancelling the background tasks
        store.shutdown()
        return accepted

    accepted = run(scenario())
    assert set(rows_in(path)) == set(accepted)


def test_a_row_follows_the_column_order_and_reads_back_the_same():
    from dataclasses import fields

    from exporter.tracking.jobs import Job
    from exporter.tracking.store import JOB_COLUMNS

    job = Job("id-1", "chat", "grp-1", "src-1", "PROCESSING", "model-1", 1.5, 2.5, 1, 3.5, 11, 12, 13, 14,
              {"stop": 2}, 4.5, 5.5, 6.5, 7.5, 8, 9)
    row = dict(zip(JOB_COLUMNS, job.row()))
    assert len(job.row()) == len(JOB_COLUMNS) == len(fields(Job))
    assert row["grp"] == "grp-1" and row["choices"] == '{"stop": 2}' and row["polls"] == 9
    again = Job.from_row(row)
    assert [getattr(again, f.name) for f in fields(Job)] == [getattr(job, f.name) for f in fields(Job)]


def test_rows_of_polled_jobs_are_updated_in_place_and_match_memory(tmp_path):
    """The first write of a job is its whole row, later ones an UPDATE of what can change while it is
    polled; either way the file ends up with exactly Job.row(). A job untracked and tracked again
    under another group is written whole again, so the file never keeps the old group."""
    path = tmp_path / "state.db"

    async def go():
        store, jobs = await opened(path)
        recorder = Recorder(store)
        first, second = ids(2)
        await jobs.track([first, second], "chat", "a", "config", 100.0)
        await jobs.flush()
        assert [len(b.upserts) for b in recorder.writes] == [2] and not recorder.writes[0].updates
        job = jobs.open[first]
        jobs.apply(job, JobResult("PROCESSING", model="m1", created=90.0), 101.0)
        job.next_due, job.interval = 116.0, 15.0
        await jobs.untrack(second, 101.0)
        await jobs.track([second], "speech", "b", "file:x", 102.0)
        await jobs.flush()
        last = recorder.writes[-1]
        assert [r[0] for r in last.updates] == [first] and [r[0] for r in last.upserts] == [second]
        with sqlite3.connect(path) as db:
            columns = [d[0] for d in db.execute("SELECT * FROM jobs").description]
            stored = {r[0]: dict(zip(columns, r)) for r in db.execute("SELECT * FROM jobs")}
        for job in (jobs.open[first], jobs.open[second]):
            assert tuple(stored[job.id][c] for c in state_module.JOB_COLUMNS) == job.row()
        assert stored[second]["grp"] == "b" and stored[second]["kind"] == "speech"
        await store.call(store.close)

    run(go())


def test_an_update_row_the_file_lacks_is_written_whole(tmp_path):
    store = StateStore(str(tmp_path / "state.db"))
    store.open()
    from exporter.tracking.job import Job
    from exporter.tracking.store import Batch

    job = Job(ids(1)[0], "chat", "g", "config", status="QUEUED", first_tracked=5.0, next_due=6.0)
    store.write(Batch(updates=[job.row()]))
    assert store.get(job.id)["status"] == "QUEUED" and store.get(job.id)["first_tracked"] == 5.0
    store.close()


def test_known_jobs_rows_go_before_new_ids_rows(tmp_path, monkeypatch):
    """A stop that runs out of time after the first transaction has still written what the last
    polls saw of jobs the file already had; what it leaves are new ids, which come back from their
    source."""
    monkeypatch.setattr(state_module, "FLUSH_CHUNK", 10)
    path = tmp_path / "state.db"
    known_ids, new_ids = ids(8, seed=2), ids(30, seed=1)
    assert min(known_ids) > max(new_ids)  # key order alone would write new ids first

    async def scenario():
        store, jobs = await opened(path)
        await jobs.track(known_ids, "chat", "g", "file:x", 1.0)
        await jobs.flush()
        for job_id in known_ids:
            jobs.apply(jobs.open[job_id], JobResult("PROCESSING", "m", 1.0), 2.0)
        await jobs.track(new_ids, "chat", "g", "file:x", 2.0)
        Recorder(store, fail_on_write=2)  # the second transaction never lands (the stop's time is up)
        with pytest.raises(sqlite3.OperationalError):
            await jobs.flush()
        store.shutdown()

    run(scenario())
    with sqlite3.connect(path) as db:
        status = dict(db.execute("SELECT id, status FROM jobs"))
    assert all(status[j] == "PROCESSING" for j in known_ids)
    # The first transaction: the 8 known rows, then the first 2 new ids in key order.
    assert sorted(set(new_ids) & set(status)) == sorted(new_ids)[:2]
