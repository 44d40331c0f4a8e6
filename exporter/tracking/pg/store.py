"""The PostgreSQL store: every replica reads and writes the same rows, the database decides.

- Any replica registers any id (`ON CONFLICT DO NOTHING`): the first insert wins, the others are
  duplicates.
- Due jobs are claimed with `FOR UPDATE SKIP LOCKED`; the claim moves `next_due` forward by a
  jittered lease and bumps `epoch`. A replica that dies holds nothing: its jobs come due again when
  the lease runs out. An answer is applied only under the epoch it was claimed with, so a late one
  (a replica paused past its lease) changes nothing.
- A final answer, whoever brings it (a claim, a proxy), is applied in one transaction that locks the
  row, checks it is not final yet, writes it final and adds its counters: counted exactly once.
- Every time comes from the database's clock (`NOW`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Iterable

from exporter.api.results import JobResult
from exporter.config.pricing import PriceTable
from exporter.tracking import finishing
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.contract import Applied, Claim
from exporter.tracking.job import FINISHED, OPEN, Job
from exporter.tracking.pg import deadlines, facts, status_page
from exporter.tracking.pg.schema import NOW, migrate
from exporter.tracking.pg.traces import OWE as OWE_TRACE
from exporter.tracking.store import JOB_COLUMNS, labels_key

_COLUMNS = ", ".join(JOB_COLUMNS)
ANALYZE_MIN_ROWS, ANALYZE_SHARE = 500, 0.2  # a registration this large, and this share of the jobs: ANALYZE
LEASE_JITTER = 0.25  # a lease runs 1x to 1.25x its length: a dead replica's jobs come back spread out
# What a claim returns of each job, in this order (PgJobStore.claim builds its Job from them).
_CLAIMED = "j.id, j.kind, j.grp, j.source, j.status, j.model, j.first_tracked, j.interval, j.errors, j.history"
# Up to $1 due jobs leased for $2 seconds (jittered), in due order: a walk of `jobs_due` that stops
# at the batch's size, as long as the planner's statistics are not far off (`_analyze_after`).
CLAIM = (f"WITH due AS (SELECT id FROM jobs WHERE final = 0 AND next_due <= {NOW} "
         f"ORDER BY next_due LIMIT $1 FOR UPDATE SKIP LOCKED) "
         f"UPDATE jobs j SET next_due = {NOW} + $2 * (1 + random() * {LEASE_JITTER}), epoch = j.epoch + 1 "
         f"FROM due WHERE j.id = due.id RETURNING {_CLAIMED}, j.epoch, {NOW} AS at")


Final = tuple[str, "JobResult | None", "int | None"]  # id, result (None: NOT_FOUND), claim's epoch
_MADE_FINAL = object()  # a row already made final earlier in the same batch

# Every final row of a batch written by one statement, one array per column.
_WRITE_FINALS = (
    "UPDATE jobs j SET status = v.status, model = v.model, created = v.created, finished = v.finished, "
    "final = v.final, ended = v.ended, prompt_tokens = v.prompt_tokens, completion_tokens = v.completion_tokens, "
    f"results = v.results, tool_calls = v.tool_calls, choices = v.choices, last_polled = {NOW}, "
    "polls = j.polls + 1, history = v.history, duration = v.duration, estimated_cost = v.estimated_cost, "
    "price_entry = v.price_entry, last_answer_code = v.code, deadline_counted = j.deadline_counted OR v.late "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::smallint[], $7::float8[], "
    "$8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::text[], $14::float8[], "
    "$15::float8[], $16::text[], $17::integer[], $18::boolean[]) AS v(id, status, model, created, finished, final, "
    "ended, prompt_tokens, completion_tokens, results, tool_calls, choices, history, duration, estimated_cost, "
    "price_entry, code, late) WHERE j.id = v.id")


class _FinalWrites:
    """The columns of `_WRITE_FINALS`, filled one job at a time."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._rows: list[tuple[Any, ...]] = []

    def add(self, job: Job, answered: bool, late: bool) -> None:
        self.ids.append(job.id)
        self._rows.append((job.id, job.status, job.model, job.created, job.finished, job.final, job.ended,
                           job.prompt_tokens, job.completion_tokens, job.results, job.tool_calls,
                           json.dumps(job.choices) if job.choices else None, job.history, job.duration,
                           job.estimated_cost, job.price_entry, 200 if answered else 404, late))

    def columns(self) -> list[list[Any]]:
        return [list(column) for column in zip(*self._rows)]


def _job(row: Any) -> Job:
    return Job.from_row({c: row[c] for c in JOB_COLUMNS})


class PgJobStore:
    """The JobStore on a pool of asyncpg sessions (see connect.py)."""

    def __init__(self, pool: Any, duration_buckets: Iterable[float], prices: PriceTable | None = None,
                 answers_pool: Any = None) -> None:
        self.pool = pool
        # Claims and answers may go through sessions that commit without waiting for the disk
        # (connect.py, `relaxed`): what a database crash loses of them is a lease or an answer, and
        # the job simply comes due again and is asked again; nothing acknowledged travels there.
        self.answers = answers_pool if answers_pool is not None else pool
        self.bounds = tuple(float(b) for b in duration_buckets)
        self.prices = prices
        self._facts = facts.FactsReader(self.bounds)
        self.deadline_seconds = 3600.0  # metrics.job_deadline_seconds (pg/deadlines.py)
        self.owe_traces = False  # tracing.endpoint: a job made COMPLETED/ERROR here owes a trace (pg/traces.py)

    async def migrate(self) -> int:
        async with self.pool.acquire() as conn:
            return await migrate(conn)

    async def now(self) -> float:
        return await self.pool.fetchval(f"SELECT {NOW}")

    # -- ids -------------------------------------------------------------------------------------
    async def register(self, ids: Iterable[str], kind: str, group: str, source: str,
                       model: str = "", due_in: float = 0.0) -> tuple[list[str], int]:
        ids = list(ids)
        fresh = sorted(set(ids))  # key order: concurrent registrations lock in the same order
        rows = await self.pool.fetch(
            f"INSERT INTO jobs (id, kind, grp, source, model, first_tracked, next_due) "
            f"SELECT i, $2, $3, $4, $5, {NOW}, {NOW} + $6 FROM unnest($1::text[]) AS i "
            f"WHERE NOT EXISTS (SELECT 1 FROM retired r WHERE r.id = i) "
            f"ON CONFLICT (id) DO NOTHING RETURNING id", fresh, kind, group, source, model, due_in)
        accepted = {r["id"] for r in rows}
        await self._analyze_after(len(accepted))
        ordered = [i for i in dict.fromkeys(ids) if i in accepted]
        return ordered, len(ids) - len(ordered)

    async def _analyze_after(self, inserted: int) -> None:
        """Refresh the planner's statistics of `jobs` after a registration that grew it by a large
        share (an ids file at start). Without them the planner takes the unfinished jobs for a
        handful and plans the claim as a scan of every due job and a sort, instead of a walk of
        `jobs_due` that stops at the batch's size: at 10,000 due jobs, 30-100 ms per claim
        instead of about 1 (bench/NOTES.md, postgres). Autovacuum would get there, but only
        within a minute or more."""
        if inserted < ANALYZE_MIN_ROWS:
            return
        try:
            known = await self.pool.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass")
            if inserted > ANALYZE_SHARE * max(known or 0.0, 0.0):
                await self.pool.execute("ANALYZE jobs")
        except Exception:  # the ids are stored already; statistics only speed claims up, autovacuum refreshes them too
            pass

    async def register_many(self, rows: list[tuple[str, str, str, str, str]], due_in: float) -> int:
        """Rows (id, kind, group, source, model) of several creates in one statement and commit."""
        rows = sorted(rows)
        status = await self.pool.execute(
            f"INSERT INTO jobs (id, kind, grp, source, model, first_tracked, next_due) "
            f"SELECT i, k, g, s, m, {NOW}, {NOW} + $6 FROM unnest($1::text[], $2::text[], $3::text[], "
            f"$4::text[], $5::text[]) AS r(i, k, g, s, m) WHERE NOT EXISTS (SELECT 1 FROM retired t WHERE t.id = i) "
            f"ON CONFLICT (id) DO NOTHING", *(list(c) for c in zip(*rows)), due_in)
        return int(status.rsplit(" ", 1)[1])

    async def untrack(self, job_id: str) -> bool:
        """Stop tracking one id: an unfinished one is forgotten, a final one stays a tombstone (and
        leaves the `closed` count) so that it is never counted twice."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("DELETE FROM jobs WHERE id = $1 RETURNING kind, grp, model, status, final",
                                      job_id)
            if row is None:
                return False
            if row["final"] != OPEN:
                await conn.execute(f"INSERT INTO retired VALUES ($1, {NOW}) ON CONFLICT DO NOTHING", job_id)
                await add_counters(conn, [("closed", (row["kind"], row["grp"], row["model"], row["status"]), -1.0)])
        return True

    async def sources(self) -> dict[str, int]:
        return {r["source"]: r["n"] for r in await self.pool.fetch(
            "SELECT source, count(*) AS n FROM jobs GROUP BY source")}

    async def get(self, job_id: str) -> Job | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return _job(row) if row else None

    # -- polling ---------------------------------------------------------------------------------
    async def claim(self, limit: int, lease: float) -> list[Claim]:
        """Lease up to `limit` due jobs. Each claim's job carries what a poll reads and a non-final
        answer writes (`_CLAIMED`), not the whole row: a final answer reads the row again under its
        lock (`finish_many`), and decoding all 26 columns of every claimed row was most of the
        claim's time in the replica's event loop (py-spy, bench/NOTES.md)."""
        rows = await self.answers.fetch(CLAIM, limit, lease)
        return [Claim(Job(r[0], r[1], r[2], r[3], status=r[4], model=r[5], first_tracked=r[6], interval=r[7],
                          errors=r[8], history=r[9]), r[10], r[11]) for r in rows]

    async def apply(self, claim: Claim, result: JobResult, delay: float) -> Applied:
        if finishing.is_final(result.status):
            return await self._finish(claim.job.id, result, None)
        job = claim.job
        history = job.history
        if result.status != job.status:
            job.note_status(result.status, claim.now())
            history = job.history
        done = await self.answers.fetchval(
            f"UPDATE jobs SET status = $3, model = CASE WHEN $4 = '' THEN model ELSE $4 END, created = $5, "
            f"finished = $6, last_polled = {NOW}, polls = polls + 1, history = $7, interval = $8, errors = 0, "
            f"last_answer_code = 200, next_due = {NOW} + $8 "
            f"WHERE id = $1 AND epoch = $2 AND final = 0 RETURNING 1",
            job.id, claim.epoch, result.status, result.model, result.created, result.finished, history, delay)
        return Applied.MOVED if done else await self._why_not(job.id)

    async def apply_many(self, answers: list[tuple[Claim, JobResult, float]]) -> int:
        """Non-final answers of many claims in one statement and commit, each under its claim's
        epoch (what `apply` does for one); answer how many were applied (the others were stale or
        final meanwhile, and changed nothing)."""
        if not answers:
            return 0
        columns: list[list[Any]] = [[] for _ in range(8)]
        for claim, result, delay in sorted(answers, key=lambda a: a[0].job.id):  # one lock order
            job = claim.job
            if result.status != job.status:
                job.note_status(result.status, claim.now())
            for column, value in zip(columns, (job.id, claim.epoch, result.status, result.model, result.created,
                                               result.finished, job.history, delay)):
                column.append(value)
        status = await self.answers.execute(
            f"UPDATE jobs j SET status = v.status, model = CASE WHEN v.model = '' THEN j.model ELSE v.model END, "
            f"created = v.created, finished = v.finished, last_polled = {NOW}, polls = j.polls + 1, "
            f"history = v.history, interval = v.delay, errors = 0, last_answer_code = 200, next_due = {NOW} + v.delay "
            "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::text[], "
            "$8::float8[]) AS v(id, epoch, status, model, created, finished, history, delay) "
            "WHERE j.id = v.id AND j.epoch = v.epoch AND j.final = 0", *columns)
        return int(status.rsplit(" ", 1)[1])

    async def apply_error(self, claim: Claim, code: int | None, delay: float) -> Applied:
        """A failed poll: counted on the job, due again after `delay` (under the claim's epoch)."""
        done = await self.answers.fetchval(
            f"UPDATE jobs SET errors = errors + 1, polls = polls + 1, last_polled = {NOW}, "
            f"last_answer_code = $3, next_due = {NOW} + $4 WHERE id = $1 AND epoch = $2 AND final = 0 RETURNING 1",
            claim.job.id, claim.epoch, code, delay)
        return Applied.MOVED if done else await self._why_not(claim.job.id)

    async def apply_final(self, job_id: str, result: JobResult) -> Applied:
        return await self._finish(job_id, result, None)

    async def not_found(self, claim: Claim, grace: float, delay: float) -> Applied:
        """A 404: within `grace` of being tracked the job is asked again later, past it NOT_FOUND
        (counted once, as a final answer is)."""
        if claim.now() - claim.job.first_tracked < grace:
            return await self.apply_error(claim, 404, delay)
        return await self._finish(claim.job.id, None, claim.epoch)

    async def _finish(self, job_id: str, result: JobResult | None, epoch: int | None) -> Applied:
        return (await self.finish_many([(job_id, result, epoch)]))[0]

    async def finish_many(self, answers: list[Final]) -> list[Applied]:
        """Final answers (id, result or None for NOT_FOUND, the claim's epoch or None for a proxy's)
        made final in ONE transaction: the rows locked in id order, each checked "not final yet"
        (and its epoch, if given) under its lock, written by one statement, and the counters of
        all of them added by one `add_counters`, so each job is counted exactly once however many
        replicas or proxies see it final. Answers what each answer did, in order."""
        ids = sorted({a[0] for a in answers})  # one lock order: job rows by id, then counter rows by key
        async with self.answers.acquire() as conn, conn.transaction():
            rows = {r["id"]: r for r in await conn.fetch(
                f"SELECT {_COLUMNS}, epoch, deadline_counted, {NOW} AS at FROM jobs "
                "WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids)}
            outcomes, writes, deltas, owed, made = [], _FinalWrites(), [], [], []
            for job_id, result, epoch in answers:
                row = rows.get(job_id)
                outcome = self._decide(row, epoch)
                outcomes.append(outcome)
                if outcome is not Applied.FINAL:
                    continue
                rows[job_id] = _MADE_FINAL  # the same id twice in one batch: the second finds it final
                job, late, job_deltas = self._made_final(row, result)
                deltas.extend(job_deltas)
                writes.add(job, result is not None, late)
                made.append(job)
                if self.owe_traces and job.final == FINISHED:  # owed by the transaction that makes it final
                    owed.append((job.id,))
            if writes.ids:
                await conn.execute(_WRITE_FINALS, *writes.columns())
                await add_counters(conn, deltas)
                if self.prices is not None:  # the status page's spend today, in the same transaction
                    await status_page.add_spend(conn, made, self.prices.currency)
            if owed:
                await conn.executemany(OWE_TRACE, owed)
        return outcomes

    @staticmethod
    def _decide(row: Any, epoch: int | None) -> Applied:
        if row is None:
            return Applied.UNKNOWN
        if row is _MADE_FINAL or row["final"] != OPEN:
            return Applied.ALREADY_FINAL
        if epoch is not None and row["epoch"] != epoch:
            return Applied.STALE
        return Applied.FINAL

    def _made_final(self, row: Any, result: JobResult | None) -> tuple[Job, bool, list[finishing.Delta]]:
        """The job of a locked row made final by `result`, whether it is counted late here, its deltas."""
        job, now = _job(row), row["at"]
        status = result.status if result is not None else "NOT_FOUND"
        if status != job.status:
            job.note_status(status, now)
        deltas = finishing.finish(job, result, self.bounds, self.prices, now)
        late = deadlines.late_final(row["deadline_counted"], job.status, job.created, job.finished,
                                    self.deadline_seconds)
        if late:  # counted here, once: the row lock keeps the sweep from marking it meanwhile
            deltas.append((deadlines.FAMILY, (job.kind, job.group), 1.0))
        return job, late, deltas

    async def _why_not(self, job_id: str) -> Applied:
        final = await self.answers.fetchval("SELECT final FROM jobs WHERE id = $1", job_id)
        if final is None:
            return Applied.UNKNOWN
        return Applied.ALREADY_FINAL if final != OPEN else Applied.STALE

    async def defer(self, job_id: str, delay: float) -> None:
        """Push an unfinished job's next own poll to at least `delay` from now (the application
        fetched its answer through a proxy)."""
        await self.answers.execute(f"UPDATE jobs SET next_due = greatest(next_due, {NOW} + $2) "
                                "WHERE id = $1 AND final = 0", job_id, delay)

    # -- facts -----------------------------------------------------------------------------------
    async def facts(self, max_age: float | None = None) -> JobAggregates:
        """The job facts; with `max_age`, the gauges over unfinished jobs may come from the row the
        `gauges` leader writes (at most that old) instead of a scan (see facts.py)."""
        return await self._facts.read(self.pool, self.prices.currency if self.prices else None, max_age)

    async def refresh_gauges(self) -> None:
        await facts.refresh_gauges(self.pool)

    @staticmethod
    def is_current(job_id: str, created: float) -> bool:
        return True  # `facts` reads only the current oldest job of each (kind, group)

    # -- periodic work ---------------------------------------------------------------------------
    async def retire_ended_before(self, age: float) -> int:
        """Drop jobs final for longer than `age` seconds, keeping tombstones; counters keep totals."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"WITH gone AS (DELETE FROM jobs WHERE final <> 0 AND ended < {NOW} - $1 "
                "RETURNING id, kind, grp, model, status), "
                f"tomb AS (INSERT INTO retired SELECT id, {NOW} FROM gone ON CONFLICT DO NOTHING) "
                "SELECT kind, grp, model, status, count(*) AS n FROM gone GROUP BY 1, 2, 3, 4", age)
            await add_counters(conn, [("closed", (r["kind"], r["grp"], r["model"], r["status"]), -float(r["n"]))
                                      for r in rows])
        return sum(r["n"] for r in rows)

    async def sweep_deadlines(self) -> int:
        """Count, once, the unfinished jobs newly past `deadline_seconds` (the `deadlines` leader's
        work; pg/deadlines.py); answer how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            deltas = await deadlines.sweep(conn, self.deadline_seconds)
            await add_counters(conn, deltas)
        return int(sum(d[2] for d in deltas))

    async def heartbeat(self, name: str, ttl: float) -> int:
        """Renew this replica's row and answer how many replicas are live (seen within `ttl`)."""
        return await self.pool.fetchval(
            f"WITH beat AS (INSERT INTO replicas VALUES ($1, {NOW}) ON CONFLICT (name) "
            f"DO UPDATE SET seen = EXCLUDED.seen) "
            f"SELECT 1 + count(*) FROM replicas WHERE seen > {NOW} - $2 AND name <> $1", name, ttl)

    async def leave(self, name: str) -> None:
        await self.pool.execute("DELETE FROM replicas WHERE name = $1", name)

    async def lead(self, task: str, holder: str, term: float) -> bool:
        """Take or keep the lead of `task` for `term` seconds; False while another holder's is unexpired."""
        got = await self.pool.fetchval(
            f"INSERT INTO leaders VALUES ($1, $2, {NOW} + $3) ON CONFLICT (task) DO UPDATE "
            f"SET holder = EXCLUDED.holder, until = EXCLUDED.until "
            f"WHERE leaders.until < {NOW} OR leaders.holder = EXCLUDED.holder RETURNING holder", task, holder, term)
        return got == holder


async def add_counters(conn: Any, deltas: list[finishing.Delta]) -> None:
    """Add `deltas` to the shared counters, in key order (two transactions adding to the same rows
    lock them in the same order: no deadlock)."""
    if not deltas:
        return
    merged: dict[tuple[str, str], float] = {}
    for family, labels, value in deltas:
        key = (family, _labels_key(tuple(labels)))
        merged[key] = merged.get(key, 0.0) + value
    keys = sorted(merged)
    # `changed`: this transaction's id, by which readers find the rows written since their last read
    # (facts.py); every writer of the counters goes through here.
    await conn.execute(
        "INSERT INTO counters (family, labels, value, changed) "
        "SELECT f, l, v, pg_current_xact_id() FROM unnest($1::text[], $2::text[], $3::float8[]) AS d(f, l, v) "
        "ON CONFLICT (family, labels) DO UPDATE SET value = counters.value + EXCLUDED.value, changed = EXCLUDED.changed",
        [k[0] for k in keys], [k[1] for k in keys], [merged[k] for k in keys])


@lru_cache(maxsize=65536)
def _labels_key(labels: tuple[str, ...]) -> str:
    """`labels_key`, remembered: the same few thousand label tuples come back with every final
    answer, and encoding each as JSON again was a visible share of the poll loop."""
    return labels_key(labels)
