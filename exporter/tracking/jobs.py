"""Tracked jobs: which ids the exporter follows, what it last learned of each, and its totals.

Unfinished jobs live in memory (the poller needs them); finished ones only in the state file, with
their share of the gauges and counters kept in JobAggregates. Every change is queued for the next
batch that `flush` writes, so the file never lags the metrics by more than one batch.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import contextmanager
from operator import attrgetter
from typing import Callable, Iterable, Iterator

from exporter import FINAL_STATUSES
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.created_index import CreatedIndex
from exporter.tracking.exemplars import Exemplars
from exporter.api.results import JobResult
from exporter.config.pricing import PriceTable
from exporter.tracking.cost import charge
from exporter.tracking.create_journal import CreateJournal
from exporter.tracking import deadlines
from exporter.tracking.job import FINISHED, GONE, OPEN, Job  # noqa: F401 (Job is part of this module's interface)
from exporter.tracking.store import JOB_COLUMNS, Batch, StateStore

log = logging.getLogger("distribute.state")

FLUSH_CHUNK = 20_000  # rows of still-polled jobs per transaction beyond the first

_by_id = attrgetter("id")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cycle collector while many jobs are created at once.

    Otherwise it runs hundreds of times over an ever larger heap while a million-line ids file is
    read: two thirds of the time. Jobs hold only strings and numbers, so they form no cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class TrackedJobs:
    """The set of tracked jobs, their aggregates, and the batches that persist them."""

    def __init__(self, store: StateStore, aggregates: JobAggregates) -> None:
        self.store = store
        self.agg = aggregates
        self.open: dict[str, Job] = {}
        self._pending: dict[str, Job] = {}
        self._deleted: set[str] = set()
        self._retire: dict[str, float] = {}
        # The batch a flush is writing: the jobs list (tracking/queries.py) reads it too, so a job
        # that just finished is in memory or in the file at every moment, never in neither.
        self.writing: dict[str, Job] = {}
        self.exemplars = Exemplars(aggregates.bounds)
        self.by_created = CreatedIndex()  # unfinished jobs by `created` (tracking/queries.py)
        # Tracked ids whose row the file does not hold yet: written whole, the others by UPDATE.
        self._unwritten: set[str] = set()
        self._flush_lock = asyncio.Lock()
        # False while every row of the file is an open job held in `open`: then a new id needs no
        # look-up in the file (the first load of a million-line ids file makes no queries).
        self._file_has_more = True
        self.on_new: Callable[[list[Job]], None] = lambda jobs: None
        self.prices: PriceTable | None = None  # pricing.file: jobs finishing from now on use it
        self.deadline_seconds = deadlines.DEFAULT_LIMIT  # metrics.job_deadline_seconds
        self.journal = CreateJournal(store.path)  # the proxy's creates until a flush wrote their rows
        self.owe_traces = False  # tracing.endpoint: a job final here owes a trace, kept with its final row

    # -- start-up --------------------------------------------------------------------------------
    async def load(self) -> None:
        """Read the state file: open jobs into memory, counts and counters into the aggregates."""
        await self.store.call(self.journal.recover_into, self.store)  # creates a crash kept from a flush
        rows = await self.store.call(self.store.load_open_jobs)
        self._file_has_more = await self.store.call(self.store.has_closed)
        with _collector_paused():
            jobs = [Job.from_row(row) for row in rows]
        self.by_created.build((job.created, job.id) for job in jobs)
        for job in jobs:
            self.open[job.id] = job
            self.agg.move(None, job.labels)
            if job.created is not None:
                self.agg.note_unfinished(job.kind, job.group, job.created, job.id)
        for family, labels, value in await self.store.call(self.store.load_counters):
            if not self.agg.restore(family, labels, value):
                log.warning("duration buckets changed since the state was written; "
                            "the duration histogram of %s starts again from zero", "/".join(labels))
        self.agg.add_counts(list(self.agg.closed.items()))

    @property
    def closed_total(self) -> int:
        """Jobs in the file that are no longer polled."""
        return self.agg.closed_total

    # -- tracking ----------------------------------------------------------------------------------
    async def track(self, ids: Iterable[str], kind: str, group: str, source: str,
                    now: float) -> tuple[list[str], int]:
        """Start tracking those of `ids` that are new; answer (accepted ids, duplicates)."""
        ids = list(ids)
        fresh = [i for i in dict.fromkeys(ids) if i not in self.open and i not in self._pending
                 and i not in self._retire]
        if fresh and self._file_has_more:
            known = await self.store.call(self.store.known, fresh)
            if known:
                fresh = [i for i in fresh if i not in known or i in self._deleted]
        accepted: list[Job] = []
        with _collector_paused():
            for job_id in fresh:
                # The id may meanwhile have arrived by another source during the await.
                if job_id in self.open or job_id in self._pending:
                    continue
                job = Job(job_id, kind, group, source, first_tracked=now, next_due=now)
                self.open[job_id] = job
                self._pending[job_id] = job
                accepted.append(job)
            if accepted:
                self.add_new(accepted)
        return [j.id for j in accepted], len(ids) - len(accepted)

    def in_memory(self, job_id: str) -> Job | None:
        """The job if it is polled or has changes not yet written (a final one until the flush)."""
        return self.open.get(job_id) or self._pending.get(job_id)

    def dropped(self) -> set[str]:
        """Ids untracked or retired since the last flush: their rows in the file no longer count."""
        return self._deleted | set(self._retire) if self._deleted or self._retire else set()

    def adopt(self, job: Job) -> None:
        """Start tracking a new job built by the caller (an id no file can hold yet)."""
        self.open[job.id] = job
        self._pending[job.id] = job
        self.add_new([job])

    def add_new(self, jobs: list[Job]) -> None:
        """Count and schedule new jobs of one (kind, group, model) that are already in `open`."""
        self._unwritten.update(j.id for j in jobs)
        if self._deleted:
            self._deleted.difference_update(j.id for j in jobs)
        self.agg.add_counts([(jobs[0].labels, len(jobs))])
        self.on_new(jobs)

    async def _take_out(self, job_id: str) -> Job | None:
        """Take a job out of memory and the gauges (and a final one out of the closed count); None
        when it is not held here. What becomes of its row is the caller's to say."""
        job = self.open.pop(job_id, None) or self._pending.get(job_id)
        if job is None:
            if job_id in self._deleted or job_id in self._retire:
                return None
            row = await self.store.call(self.store.get, job_id)
            if row is None:
                return None
            job = Job.from_row(row)
        self._pending.pop(job_id, None)
        self.by_created.moved(job_id, job.created, None)
        self._unwritten.discard(job_id)
        self.agg.move(job.labels, None)
        if job.final != OPEN:
            self.agg.close(job.labels, -1)
        return job

    async def untrack(self, job_id: str, now: float) -> bool:
        """Stop tracking one id. A finished job stays a tombstone so it is never counted twice."""
        job = await self._take_out(job_id)
        if job is None:
            return False
        if job.final == OPEN:
            self._deleted.add(job_id)
        else:
            self._retire[job_id] = now
            self._file_has_more = True
        return True

    async def lookup(self, job_id: str) -> Job | None:
        job = self.in_memory(job_id)
        if job is not None:
            return job
        if job_id in self._deleted or job_id in self._retire:
            return None
        row = await self.store.call(self.store.get, job_id)
        return Job.from_row(row) if row else None

    async def group_of(self, job_id: str) -> tuple[str, str] | None:
        """The (kind, group) of a tracked job, None when it is not tracked."""
        job = await self.lookup(job_id)
        return (job.kind, job.group) if job is not None else None

    def is_current(self, job_id: str, created: float) -> bool:
        """True while `job_id` is unfinished with this `created` (for the oldest-job gauge)."""
        job = self.open.get(job_id)
        return job is not None and job.created == created

    # -- what the poller learns --------------------------------------------------------------------
    def apply(self, job: Job, result: JobResult, now: float) -> bool:
        """Record an answer; True when the status changed."""
        old_labels, old_created = job.labels, job.created
        changed = result.status != job.status
        if changed:
            job.note_status(result.status, now)
        # An answer that names no model keeps the one a proxied create's request named.
        job.status, job.model = result.status, result.model or job.model
        job.created, job.finished = result.created, result.finished
        job.last_polled, job.polls = now, job.polls + 1
        if job.created != old_created:
            self.by_created.moved(job.id, old_created, job.created)
            if job.created is not None:
                self.agg.note_unfinished(job.kind, job.group, job.created, job.id)
        deadlines.on_answer(self.agg, job, old_created, self.deadline_seconds)
        if result.status in FINAL_STATUSES:
            self._finish(job, result, now)
        self.agg.move(old_labels, job.labels)
        self._pending[job.id] = job
        return changed

    def _finish(self, job: Job, result: JobResult, now: float) -> None:
        job.final, job.ended = FINISHED, result.finished or now
        job.prompt_tokens, job.completion_tokens = result.prompt_tokens, result.completion_tokens
        job.results, job.tool_calls, job.choices = result.results, result.tool_calls, result.choices or None
        duration = (result.finished - result.created) if result.finished and result.created else None
        job.duration = duration if duration is not None and duration >= 0 else None
        self.agg.record_finished(job.labels, duration, result.prompt_tokens, result.completion_tokens,
                                 result.results, result.choices, result.tool_calls)
        if self.prices is not None:
            charge(job, self.prices, self.agg, now)
        self.exemplars.note(job.labels, job.id, job.duration, job.ended)
        self._close(job)

    def sweep_deadlines(self, now: float) -> int:  # unfinished jobs newly past their deadline: deadlines.py
        return deadlines.sweep(self.agg, self.by_created, self.open, now - self.deadline_seconds)

    def not_found(self, job: Job, now: float, grace: float) -> bool:
        """Record a 404; True when the grace is over and the job is now NOT_FOUND."""
        job.last_polled, job.polls = now, job.polls + 1
        self._pending[job.id] = job
        if now - job.first_tracked < grace:
            return False
        old = job.labels
        job.note_status("NOT_FOUND", now)
        job.status, job.final, job.ended = "NOT_FOUND", GONE, now
        self.agg.move(old, job.labels)
        self._close(job)
        return True

    def touched(self, job: Job) -> None:
        """The job's schedule changed: persist it with the next batch."""
        self._pending[job.id] = job

    def _close(self, job: Job) -> None:
        self._file_has_more = True
        self.open.pop(job.id, None)
        self.by_created.moved(job.id, job.created, None)
        self._unwritten.discard(job.id)  # a final row is always written whole
        self.agg.close(job.labels)

    # -- persistence -----------------------------------------------------------------------------
    async def flush(self) -> int:
        """Write everything changed since the last flush; answer how many jobs were written."""
        async with self._flush_lock:
            pending, deleted, retire = self._pending, self._deleted, self._retire
            self._pending, self._deleted, self._retire = {}, set(), {}
            self.writing = pending
            journaled = self.journal.rotate()  # every create appended so far is in `pending` or written
            # Rows of finished jobs go with the counters they changed, in one transaction. Rows of
            # jobs still polled carry no counts, so past the first FLUSH_CHUNK they may follow in
            # transactions of their own: a million new ids from a file then neither make one huge
            # transaction nor hold the event loop. Key order writes the B-trees front to back.
            counted = [j for j in pending.values() if j.final != OPEN]
            polled = self._polled_order(pending.values())
            whole, updates = self._rows(polled[:FLUSH_CHUNK])
            batch = Batch(upserts=[j.row() for j in counted] + whole, deletes=list(deleted), updates=updates,
                          retire=list(retire.items()), counters=self.agg.take_dirty(),
                          traces=[(j.id, j.ended) for j in counted if j.final == FINISHED] if self.owe_traces else [])
            if batch:
                try:
                    await self.store.write_durably(batch)
                except BaseException:
                    # A failed write, or a flush cancelled at shutdown: keep the changes for the
                    # next attempt (writing a row or a counter twice is harmless; losing it is not).
                    self._requeue(batch, polled[FLUSH_CHUNK:])
                    raise
                finally:
                    self.writing = {}
            written = len(batch.upserts) + len(batch.updates)
            for start in range(FLUSH_CHUNK, len(polled), FLUSH_CHUNK):
                # A job that finished meanwhile is in the next batch, with its counts.
                whole, updates = self._rows(j for j in polled[start:start + FLUSH_CHUNK] if j.final == OPEN)
                try:
                    await self.store.write_durably(Batch(upserts=whole, updates=updates))
                except BaseException:
                    self._requeue(Batch(upserts=whole, updates=updates), polled[start:])
                    raise
                written += len(whole) + len(updates)
            self.journal.retire(journaled)
            return written

    def _polled_order(self, pending: Iterable[Job]) -> list[Job]:
        """Still-polled jobs in the order they are written: those the file already has first (what
        their last polls saw exists nowhere else), then the new ids (a stop that runs out of time
        leaves those, and they come back from their ids file, the config or the create journal);
        each part in key order."""
        unwritten, pending = self._unwritten, list(pending)
        known = sorted((j for j in pending if j.final == OPEN and j.id not in unwritten), key=_by_id)
        new = sorted((j for j in pending if j.final == OPEN and j.id in unwritten), key=_by_id)
        return known + new

    def _rows(self, polled: Iterable[Job]) -> tuple[list[tuple], list[tuple]]:
        """Rows of jobs still polled: (whole rows of those the file lacks, rows of the others)."""
        whole, updates, unwritten = [], [], self._unwritten
        for job in polled:
            if job.id in unwritten:
                unwritten.discard(job.id)  # back by `_requeue` if the write fails
                whole.append(job.row())
            else:
                updates.append(job.row())
        return whole, updates

    def _requeue(self, batch: Batch, unwritten: list[Job]) -> None:
        self._unwritten.update(row[0] for row in batch.upserts if row[0] in self.open)
        for row in batch.upserts + batch.updates:
            job_id = row[0]
            job = self.open.get(job_id)
            if job is not None and job_id not in self._pending:
                self._pending[job_id] = job
            elif job is None:
                self._pending.setdefault(job_id, Job.from_row(dict(zip(JOB_COLUMNS, row))))
        for job in unwritten:
            if job.id in self.open:
                self._pending.setdefault(job.id, job)
        self._deleted.update(batch.deletes)
        self._retire.update(dict(batch.retire))
        for family, labels, _ in batch.counters:
            self.agg.dirty.add((family, labels))

    async def retire_old(self, retention: float, now: float) -> int:
        """Drop jobs final for longer than `retention`; counters keep their totals."""
        await self.flush()
        async with self._flush_lock:
            # The file's closed counts drop in the same transaction; the memory's before the lock
            # is released, so no batch can write the old ones back.
            counts = await self.store.call(self.store.retire_ended_before, now - retention, now)
            self.agg.add_counts((labels, -n) for labels, n in counts)
            for labels, n in counts:
                self.agg.closed[labels] -= n
        return sum(n for _, n in counts)

    async def ids_from_source(self, source: str) -> set[str]:
        ids = {j.id for j in self.open.values() if j.source == source}
        ids.update(j.id for j in self._pending.values() if j.source == source and not j.final)
        stored = await self.store.call(self.store.ids_from_source, source)
        return (ids | stored) - self.dropped()

    async def count_by_source(self) -> dict[str, int]:
        await self.flush()
        return dict(await self.store.call(self.store.sources))
