"""What the status page shows over time when replicas share PostgreSQL, kept in the database so
that every replica draws the same page.

- The last hour's samples: the replica leading the `timeline` task writes one row every
  SAMPLE_SECONDS (the job facts it reads anyway, plus the API request totals of all replicas); every
  replica reads the same rows. At most an hour and a bit of rows stay, whatever the number of jobs.
- The API request totals: each replica adds what its own requests grew by (an additive row), so the
  API chart counts the requests of every replica, not only the leader's.
- Spend today: a row per (UTC day of the job's end, group, currency), added to in the transaction
  that makes a job final (store.py's `_finish`), so each priced or unpriced job is in it once. The
  page reads today's rows by key: no scan of the jobs, however many finished today.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.job import FINISHED, Job
from exporter.tracking.pg.schema import NOW
from exporter.tracking.spend import DAY
from exporter.tracking.timeline import Sample, sample_of

KEEP_SECONDS = 3600.0 + 120.0  # the charts' hour and a margin: older samples are deleted


def _dump(sample: Sample) -> str:
    return json.dumps({k: v for k, v in dataclasses.asdict(sample).items() if k != "at"}, separators=(",", ":"))


def _load(at: float, text: str) -> Sample:
    d = json.loads(text)
    return Sample(at, d["unfinished"], d["finished"], {k: tuple(v) for k, v in d["durations"].items()},
                  d["requests"], d["errors"])


async def add_api(pool: Any, requests: int, errors: int) -> None:
    """Add what this replica's result requests (and the failed ones) grew by to the shared totals."""
    await pool.execute("INSERT INTO api_totals VALUES ('all', $1, $2) ON CONFLICT (key) DO UPDATE "
                       "SET requests = api_totals.requests + $1, errors = api_totals.errors + $2", requests, errors)


async def take_sample(pool: Any, jobs: JobAggregates) -> None:
    """Write a sample of `jobs` and the shared API totals at the database's time; drop old ones
    (the `timeline` task's leader)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"SELECT {NOW} AS at, (SELECT requests FROM api_totals WHERE key = 'all') AS r, "
                                  "(SELECT errors FROM api_totals WHERE key = 'all') AS e")
        sample = sample_of(jobs, row["at"], row["r"] or 0, row["e"] or 0)
        await conn.execute("INSERT INTO timeline VALUES ($1, $2) ON CONFLICT (at) DO NOTHING", sample.at, _dump(sample))
        await conn.execute("DELETE FROM timeline WHERE at < $1", sample.at - KEEP_SECONDS)


async def samples(pool: Any) -> list[Sample]:
    """The last hour's samples, oldest first (the same list on every replica)."""
    rows = await pool.fetch("SELECT at, sample FROM timeline WHERE at >= (SELECT max(at) FROM timeline) - $1 "
                            "ORDER BY at", KEEP_SECONDS - 60.0)
    return [_load(r["at"], r["sample"]) for r in rows]


async def add_spend(conn: Any, jobs: list[Job], currency: str) -> None:
    """Count jobs just made final (COMPLETED or ERROR, priced or not) in their day's spend; called in
    the transaction that makes them final, so once. A batch's jobs are summed per row and the rows
    written in key order, as the counters are, so two replicas' batches cannot deadlock."""
    rows: dict[tuple[float, str], list[float]] = {}
    for job in jobs:
        if job.final != FINISHED or job.ended is None:
            continue
        row = rows.setdefault((job.ended // DAY * DAY, job.group), [0.0, 0, 0])
        row[0] += job.estimated_cost or 0.0
        row[1 if job.estimated_cost is not None else 2] += 1
    if not rows:
        return
    keys = sorted(rows)
    await conn.execute("INSERT INTO spend_days SELECT d, g, $3, c, p, u FROM unnest($1::float8[], $2::text[], "
                       "$4::float8[], $5::int8[], $6::int8[]) AS t(d, g, c, p, u) ON CONFLICT (day, grp, currency) "
                       "DO UPDATE SET cost = spend_days.cost + EXCLUDED.cost, priced = spend_days.priced + "
                       "EXCLUDED.priced, unpriced = spend_days.unpriced + EXCLUDED.unpriced",
                       [k[0] for k in keys], [k[1] for k in keys], currency,
                       [rows[k][0] for k in keys], [rows[k][1] for k in keys], [rows[k][2] for k in keys])


async def spend_today(pool: Any) -> list[dict[str, object]]:
    """Today's (UTC, by the database's clock) spend per group and currency, most spent first: the
    rows of tracking/spend.py's `SpendToday.snapshot`."""
    rows = await pool.fetch(f"SELECT grp, currency, cost, priced, unpriced FROM spend_days "
                            f"WHERE day = floor({NOW} / {DAY}) * {DAY}")
    out = [{"group": r["grp"], "currency": r["currency"], "cost": r["cost"], "priced": r["priced"],
            "unpriced": r["unpriced"]} for r in rows]
    return sorted(out, key=lambda r: (-r["cost"], r["group"]))  # type: ignore[operator]
