"""`postgres_facts`: `/metrics/jobs` of a replica on PostgreSQL over a state of a million jobs.

The state is written by the database itself (generate_series), as bench/fixtures.py writes the
SQLite one for scrape_1m: 3 kinds, 10 groups, 20 models, every status, ~10% unfinished; the
counters those jobs would have produced are summed from the rows by SQL and added through
`add_counters`, as the exporter adds them. Then, with jobs finishing in the background (the final
answers go through the store's own `apply_final`, so the counters keep changing and every
read of the facts finds something new):

- the median and p99 of `/metrics/jobs` through one replica (the route with its cache), sequential
  scrapes on one keep-alive connection asking for gzip as Prometheus does;
- the median and p99 of the uncached database read behind it, in process;
- the median of the `gauges` leader's refresh (the scan of the unfinished jobs);
- the replica's CPU share while scraped (cores busy: cache misses, renders, its leader's work);
- a check that the route's totals equal the database's rows.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import statistics
import threading
import time
from pathlib import Path

from bench.postgres import Cluster
from bench.procs import Exporter, get, metric, wait_for
from exporter import KINDS
from exporter.config import DEFAULT_DURATION_BUCKETS

OPEN_STATUSES = ("UNKNOWN", "CREATED", "QUEUED", "POSTPONED", "ASSIGNED_CONNECTIONS", "PROCESSING")
DEADLINE = 3600.0  # metrics.job_deadline_seconds' default: the fixture's marks follow it

# One row per job, from i alone plus random() (seeded): the same labels as bench/fixtures.py.
_JOBS = f"""
INSERT INTO jobs (id, kind, grp, source, status, model, created, finished, final, ended, prompt_tokens,
                  completion_tokens, results, tool_calls, choices, first_tracked, last_polled, next_due,
                  interval, errors, polls, last_answer_code, history, duration, deadline_counted)
SELECT gen_random_uuid()::text, kind, grp, 'file:bench', status, CASE WHEN status = 'UNKNOWN' THEN '' ELSE model END,
       created, CASE WHEN final > 0 THEN created + dur END, final, CASE WHEN final > 0 THEN created + dur END,
       CASE WHEN chat_ok THEN 10 + (r1 * 1990)::int ELSE 0 END, CASE WHEN chat_ok THEN 10 + (r2 * 790)::int ELSE 0 END,
       CASE WHEN final = 1 AND kind <> 'chat' AND status = 'COMPLETED' THEN 1 ELSE 0 END,
       CASE WHEN chat_ok AND r3 < 0.2 THEN 2 ELSE 0 END,
       CASE WHEN chat_ok THEN CASE WHEN r3 < 0.2 THEN '{{"tool_calls": 1}}' ELSE '{{"stop": 1}}' END END,
       $1, CASE WHEN final > 0 THEN $1 END, CASE WHEN final > 0 THEN $1 ELSE $1 + 43200 + r1 * 43200 END,
       15, 0, 1, CASE WHEN status <> 'UNKNOWN' THEN 200 END,
       CASE WHEN final > 0 THEN 'QUEUED@' || (created + 0.5) || ';' || status || '@' || (created + dur)
            ELSE status || '@' || $1 END,
       CASE WHEN final = 1 THEN dur END, final = 0 AND created <= $1 - {DEADLINE}
FROM (SELECT *, final = 1 AND kind = 'chat' AND status = 'COMPLETED' AS chat_ok
      FROM (SELECT *, CASE WHEN open THEN 0 WHEN status = 'NOT_FOUND' THEN 2 ELSE 1 END AS final
            FROM (SELECT (ARRAY['{"','".join(KINDS)}'])[i % 3 + 1] AS kind, 'group-' || (i / 3) % 10 AS grp,
                         'model-' || lpad(((i / 30) % 20)::text, 2, '0') AS model,
                         $1 - 60 - random() * (6 * 3600 - 60) AS created, open,
                         CASE WHEN open THEN (ARRAY['{"','".join(OPEN_STATUSES)}'])[i % 6 + 1]
                              WHEN i % 17 = 0 THEN 'ERROR' WHEN i % 101 = 0 THEN 'NOT_FOUND' ELSE 'COMPLETED' END AS status,
                         exp(2.5 + sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())) AS dur,
                         random() AS r1, random() AS r2, random() AS r3
                  FROM (SELECT i, random() < $3 AS open FROM generate_series(0, $2 - 1) AS i) g) s) t) u
"""

# The counters the rows above stand for, summed by the database (a bucket is bisect_left's index).
_SUMS = """
SELECT kind, grp, model, status, final, count(*) AS n, sum(duration) AS total,
       count(duration) AS timed, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion,
       sum(results) AS results, sum(tool_calls) AS tool_calls,
       count(*) FILTER (WHERE choices LIKE '%tool_calls%') AS tool_choices,
       count(*) FILTER (WHERE choices LIKE '%stop%') AS stop_choices,
       count(*) FILTER (WHERE final = 1 AND finished - created > $1) AS late
FROM jobs WHERE final <> 0 GROUP BY 1, 2, 3, 4, 5
"""
_BUCKETS = """
SELECT kind, grp, model, status, (SELECT count(*) FROM unnest($1::float8[]) AS b WHERE b < duration) AS bucket,
       count(*) AS n
FROM jobs WHERE final = 1 AND duration IS NOT NULL GROUP BY 1, 2, 3, 4, 5
"""
_LATE_OPEN = "SELECT kind, grp, count(*) AS n FROM jobs WHERE final = 0 AND deadline_counted GROUP BY 1, 2"


async def fill(url: str, password_file: str, jobs: int, unfinished_share: float = 0.1) -> dict[str, int]:
    """`jobs` jobs and their counters into the (migrated) database at `url`."""
    from exporter.tracking import finishing
    from exporter.tracking.aggregates import JobAggregates
    from exporter.tracking.pg.connect import create_pool
    from exporter.tracking.pg.deadlines import FAMILY as DEADLINE_FAMILY
    from exporter.tracking.pg.schema import NOW
    from exporter.tracking.pg.store import PgJobStore, add_counters

    bounds = tuple(float(b) for b in DEFAULT_DURATION_BUCKETS)
    store = PgJobStore(await create_pool(url, password_file, max_size=1), bounds)
    try:
        await store.migrate()
        async with store.pool.acquire() as conn:
            await conn.execute("SELECT setseed(0.25)")
            now = await conn.fetchval(f"SELECT {NOW}")
            await conn.execute(_JOBS, now, jobs, unfinished_share, timeout=3600)
            await conn.execute("VACUUM ANALYZE jobs", timeout=3600)
            agg = JobAggregates(bounds)
            extra: list[finishing.Delta] = []
            for r in await conn.fetch(_SUMS, DEADLINE, timeout=3600):
                labels = (r["kind"], r["grp"], r["model"], r["status"])
                agg.closed[labels] += r["n"]
                if r["final"] != 1:
                    continue
                agg.finished[labels] += r["n"]
                hist = agg.duration_histogram(labels)
                hist.total, hist.count = float(r["total"] or 0.0), r["timed"]
                group, model = r["grp"], r["model"]
                if r["kind"] == "chat" and r["status"] == "COMPLETED":
                    agg.tokens[(group, model, "prompt")] += r["prompt"]
                    agg.tokens[(group, model, "completion")] += r["completion"]
                    agg.choices[(group, model, "tool_calls")] += r["tool_choices"]
                    agg.choices[(group, model, "stop")] += r["stop_choices"]
                    agg.tool_calls[(group, model)] += r["tool_calls"]
                elif r["status"] == "COMPLETED":
                    agg.results[(r["kind"], group, model)] += r["results"]
                if r["late"]:
                    extra.append((DEADLINE_FAMILY, (r["kind"], group), float(r["late"])))
            for r in await conn.fetch(_BUCKETS, list(bounds), timeout=3600):
                agg.duration_histogram((r["kind"], r["grp"], r["model"], r["status"])).counts[r["bucket"]] += r["n"]
            extra += [(DEADLINE_FAMILY, (r["kind"], r["grp"]), float(r["n"])) for r in await conn.fetch(_LATE_OPEN)]
            async with conn.transaction():
                await add_counters(conn, finishing.deltas(agg) + extra)
            unfinished = await conn.fetchval("SELECT count(*) FROM jobs WHERE final = 0")
    finally:
        await store.pool.close()
    return {"jobs": jobs, "unfinished": unfinished}


class Finisher:
    """Final answers for unfinished jobs, `rate` a second, through the store's own `apply_final` (a
    thread with its own event loop), until stopped."""

    def __init__(self, url: str, password_file: str, rate: float) -> None:
        self.url, self.password_file, self.rate = url, password_file, rate
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        from exporter.api.results import JobResult
        from exporter.tracking.pg.connect import create_pool
        from exporter.tracking.pg.store import PgJobStore

        store = PgJobStore(await create_pool(self.url, self.password_file, max_size=1), DEFAULT_DURATION_BUCKETS)
        try:
            rows = await store.pool.fetch("SELECT id, model, created FROM jobs WHERE final = 0 AND status <> 'UNKNOWN' "
                                          "ORDER BY id LIMIT 100000")
            started = time.monotonic()
            for n, row in enumerate(rows):
                if self._stop.is_set():
                    break
                delay = started + n / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.time()
                await store.apply_final(row["id"], JobResult("COMPLETED", model=row["model"], created=row["created"],
                                                             finished=now, prompt_tokens=7, completion_tokens=11,
                                                             results=1, choices={"stop": 1}))
                self.done += 1
        finally:
            await store.pool.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


async def _reads(url: str, password_file: str, reads: int, pause: float) -> tuple[list[float], list[float], list[float]]:
    """(uncached reads of the job facts, whole first reads, the gauges leader's scans), in milliseconds."""
    from exporter.tracking.pg.connect import create_pool
    from exporter.tracking.pg.facts import _gauges_now as gauges_now
    from exporter.tracking.pg.store import PgJobStore

    store = PgJobStore(await create_pool(url, password_file, max_size=1), DEFAULT_DURATION_BUCKETS)
    facts, gauges, whole = [], [], []
    try:
        for _ in range(3):  # a replica's first read (and a read after a deletion): every row
            first = PgJobStore(store.pool, DEFAULT_DURATION_BUCKETS)
            t = time.perf_counter()
            await first.facts(max_age=60)
            whole.append((time.perf_counter() - t) * 1000)
        await store.facts(max_age=60)  # this reader's own first read (every row), not counted below
        for _ in range(reads):
            t = time.perf_counter()
            await store.facts(max_age=60)
            facts.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(pause)
        for _ in range(5):  # what the leader's refresh computes (its write is one row)
            async with store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                t = time.perf_counter()
                await gauges_now(conn)
                gauges.append((time.perf_counter() - t) * 1000)
    finally:
        await store.pool.close()
    return facts, whole, gauges


def _scrapes(port: int, scrapes: int, pause: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    took = []
    try:
        for _ in range(scrapes):
            begin = time.perf_counter()
            conn.request("GET", "/metrics/jobs", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            took.append((time.perf_counter() - begin) * 1000)
            assert response.status == 200, response.status
            time.sleep(pause)
    finally:
        conn.close()
    return took


def postgres_facts(workdir: Path, jobs: int, scrapes: int = 400, reads: int = 60, rate: float = 100.0,
                   pause: float = 0.05) -> dict[str, float]:
    cluster = Cluster(workdir)
    pw = str(cluster.password_file)
    try:
        url = cluster.database("facts")
        started = time.monotonic()
        asyncio.run(fill(url, pw, jobs))
        figures = {"fill_seconds": time.monotonic() - started}
        replica = Exporter(workdir / "replica", f"api: {{base_url: 'http://127.0.0.1:9'}}\n"
                                                f"state: {{url: '{url}', password_file: '{pw}'}}\n")
        try:
            replica.wait_ready(300)
            wait_for(lambda: get(replica.port, "/metrics/jobs")[0] == 200, 120, "/metrics/jobs answered")
            finisher = Finisher(url, pw, rate)
            try:
                _scrapes(replica.port, int(3 / pause), pause)  # warm-up, not counted: the pool's sessions opened
                started, cpu = time.monotonic(), replica.cpu_seconds()
                took = _scrapes(replica.port, scrapes, pause)
                figures["replica_cpu_share"] = (replica.cpu_seconds() - cpu) / (time.monotonic() - started)
                facts, whole, gauges = asyncio.run(_reads(url, pw, reads, pause))
            finally:
                finisher.stop()
            figures.update(metrics_jobs_p99_ms=_p99(took), metrics_jobs_median_ms=statistics.median(took),
                           metrics_jobs_max_ms=max(took),
                           facts_read_p99_ms=_p99(facts), facts_read_median_ms=statistics.median(facts),
                           facts_whole_read_ms=statistics.median(whole),
                           gauges_refresh_median_ms=statistics.median(gauges), finished_during=finisher.done)
            figures["truth_mismatch"] = _mismatch(replica.port, url, pw)
        finally:
            replica.stop()
    finally:
        cluster.stop()
    return figures


def _mismatch(port: int, url: str, password_file: str) -> float:
    """How far the route is from the rows once the cache has caught up: |finished total - finished
    rows| + |sum of distribute_jobs - rows| (0: every counter and gauge kept right)."""
    async def truth() -> tuple[int, int]:
        from exporter.tracking.pg.connect import create_pool

        pool = await create_pool(url, password_file, max_size=1)
        try:
            return (await pool.fetchval("SELECT count(*) FROM jobs WHERE final = 1"),
                    await pool.fetchval("SELECT count(*) FROM jobs"))
        finally:
            await pool.close()
    finished, rows = asyncio.run(truth())

    def off() -> float:
        text = gzip.decompress(get(port, "/metrics/jobs", {"Accept-Encoding": "gzip"})[1]).decode()
        return (abs(metric(text, "distribute_jobs_finished_total") - finished)
                + abs(metric(text, "distribute_jobs") - rows))
    try:
        wait_for(lambda: off() == 0, 30, "the route's totals equal to the rows")
    except TimeoutError:
        pass
    return off()
