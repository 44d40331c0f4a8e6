"""The proxy's create journal on real files: what a crash leaves is taken into the state file at
start-up, a retired id stays retired, a torn line is skipped, and a durable flush deletes what it
covers (and only that)."""

from __future__ import annotations

import asyncio
import os

from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.create_journal import CreateJournal, Entry
from exporter.tracking.jobs import TrackedJobs
from exporter.tracking.proxied import ProxiedJobs
from exporter.tracking.store import StateStore

IDS = [f"{n:08x}-0000-4000-8000-000000000000" for n in range(4)]


def entry(job_id: str, model: str = "Llama-X") -> Entry:
    return Entry(job_id, "chat", "team-a", "proxy", model, 1000.0, 1015.0)


async def opened(path: str) -> tuple[StateStore, TrackedJobs]:
    store = StateStore(path)
    await store.call(store.open)
    jobs = TrackedJobs(store, JobAggregates((1.0, 10.0)))
    await jobs.load()
    return store, jobs


def segments(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("state.db-creates.*"))


def test_what_a_crash_left_is_stored_at_start_up_and_the_journal_dropped(tmp_path):
    path = str(tmp_path / "state.db")

    async def scenario() -> None:
        store, jobs = await opened(path)
        proxied = ProxiedJobs(jobs, lambda: False)
        for job_id in IDS[:3]:
            proxied.store_created(job_id, "speech", "g1", "Kokoro", 2000.0, 15.0)
        # No flush, no shutdown: the process "dies" here (the store is only let go).
        store.shutdown()
        assert segments(tmp_path) == ["state.db-creates.1"]
        store, jobs = await opened(path)
        try:
            assert segments(tmp_path) == []
            assert sorted(jobs.open) == sorted(IDS[:3])
            job = jobs.open[IDS[0]]
            assert (job.kind, job.group, job.source, job.model, job.status) == ("speech", "g1", "proxy", "Kokoro",
                                                                                "UNKNOWN")
            assert (job.first_tracked, job.next_due) == (2000.0, 2015.0)
            rows = await store.call(lambda: store.db.execute("SELECT count(*) FROM jobs").fetchone()[0])
            assert rows == 3  # in the file itself, not only in memory
        finally:
            store.shutdown()

    asyncio.run(scenario())


def test_a_durable_flush_deletes_the_segments_it_covers_and_only_those(tmp_path):
    async def scenario() -> None:
        store, jobs = await opened(str(tmp_path / "state.db"))
        proxied = ProxiedJobs(jobs, lambda: False)
        try:
            proxied.store_created(IDS[0], "chat", "g", None, 10.0, 15.0)
            assert segments(tmp_path) == ["state.db-creates.1"]
            await jobs.flush()
            assert segments(tmp_path) == []
            # A create during a flush that fails stays in its segment until a flush succeeds.
            proxied.store_created(IDS[1], "chat", "g", None, 10.0, 15.0)
            real_write = store.write
            store.write = lambda *a: (_ for _ in ()).throw(OSError("disk full"))  # type: ignore[method-assign]
            try:
                await jobs.flush()
            except OSError:
                pass
            else:
                raise AssertionError("the flush should have failed")
            proxied.store_created(IDS[2], "chat", "g", None, 10.0, 15.0)
            assert segments(tmp_path) == ["state.db-creates.2", "state.db-creates.3"]
            store.write = real_write  # type: ignore[method-assign]
            await jobs.flush()
            assert segments(tmp_path) == []
            stored = await store.call(store.known, IDS[:3])
            assert stored == set(IDS[:3])
        finally:
            store.shutdown()

    asyncio.run(scenario())


def test_a_retired_id_stays_retired_and_a_torn_line_is_skipped(tmp_path):
    path = str(tmp_path / "state.db")

    async def scenario() -> None:
        store, jobs = await opened(path)
        await store.call(lambda: store.db.execute("INSERT INTO retired VALUES (?, 1.0)", (IDS[0],)))
        store.shutdown()
        journal = CreateJournal(path)
        journal.append(entry(IDS[0]))
        journal.append(entry(IDS[1]))
        journal.close()
        with open(path + "-creates.1", "ab") as segment:
            segment.write(b'["' + IDS[2][:10].encode())  # a power cut in the middle of a line
        store, jobs = await opened(path)
        try:
            assert sorted(jobs.open) == [IDS[1]]
            assert segments(tmp_path) == []
        finally:
            store.shutdown()

    asyncio.run(scenario())


def test_fsync_creates_waits_for_an_fsync_of_the_journal(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])

    async def scenario() -> None:
        store, jobs = await opened(str(tmp_path / "state.db"))
        try:
            await ProxiedJobs(jobs, lambda: False).track_proxied(IDS[0], "chat", "g", None, 1.0, 15.0)
            assert synced == []
            proxied = ProxiedJobs(jobs, lambda: True)
            await asyncio.gather(*(proxied.track_proxied(i, "chat", "g", None, 1.0, 15.0) for i in IDS[1:]))
            assert len(synced) == 1  # one fsync of the one segment, shared by the creates waiting together
        finally:
            store.shutdown()

    asyncio.run(scenario())


def test_a_create_appended_while_a_flush_writes_is_kept_until_a_flush_covers_it(tmp_path):
    """The flush deletes only the segments its batch covers: a create journaled while its batch was
    being written is in a newer segment, which must outlive that flush (and a crash right after)."""
    path = str(tmp_path / "state.db")

    async def scenario() -> None:
        store, jobs = await opened(path)
        proxied = ProxiedJobs(jobs, lambda: False)
        proxied.store_created(IDS[0], "chat", "g", None, 10.0, 15.0)
        writing, release = asyncio.Event(), asyncio.Event()
        real = store.write_durably

        async def slow_write(batch):  # type: ignore[no-untyped-def]
            writing.set()
            await release.wait()
            await real(batch)

        store.write_durably = slow_write  # type: ignore[method-assign]
        flush = asyncio.create_task(jobs.flush())
        await writing.wait()
        proxied.store_created(IDS[1], "chat", "g", None, 10.0, 15.0)  # while the batch is written
        release.set()
        await flush
        assert segments(tmp_path) == ["state.db-creates.2"]
        store.shutdown()  # a crash: no further flush
        store, jobs = await opened(path)
        try:
            assert sorted(jobs.open) == sorted(IDS[:2])
        finally:
            store.shutdown()

    asyncio.run(scenario())


def test_an_fsync_taken_before_a_segment_is_retired_still_succeeds(tmp_path):
    """The fsync runs on a thread while the loop may retire (close) the segment: it works on
    descriptors of its own, so it neither fails nor touches a file that reused the number."""
    journal = CreateJournal(str(tmp_path / "state.db"))
    journal.append(entry(IDS[0]))
    sync = journal.syncer()
    journal.retire(journal.rotate())
    reused = os.open(tmp_path / "other", os.O_WRONLY | os.O_CREAT)  # may take the closed number
    try:
        sync()  # raised EBADF or EINVAL when it used the segment's own descriptor
    finally:
        os.close(reused)
    assert segments(tmp_path) == []
