"""Jobs past their deadline with PostgreSQL: `distribute_jobs_deadline_exceeded_total{kind, group}`
counted exactly once across replicas, with the semantics of tracking/deadlines.py.

Each job row carries `deadline_counted`. Two writers may set it, each in one transaction with the
counter it adds, each deciding under the job's row lock:

- the sweep (the `deadlines` leader) marks and counts the unfinished jobs whose `created` is at or
  before the database's now minus the limit; rows another transaction holds are skipped and taken
  by a later sweep, and a row that became final or marked meanwhile no longer matches once locked;
- the transaction that makes a job COMPLETED or ERROR (store.py's `_finish`, holding the row with
  FOR UPDATE) counts it when it finished more than the limit after `created` and is not marked yet.

So a leader that overlaps another (an expired term, a paused replica) counts nothing twice, and a
restart starts from the marks: nothing is repeated or lost.
"""

from __future__ import annotations

from typing import Any

from exporter import FINAL_STATUSES
from exporter.tracking.pg.schema import NOW

FAMILY = "deadline_exceeded"
SWEEP_SECONDS = 2.0  # how often the leader sweeps: the counter lags a deadline by at most this

_SWEEP = (
    f"WITH due AS (SELECT id FROM jobs WHERE final = 0 AND NOT deadline_counted AND created <= {NOW} - $1 "
    "ORDER BY id FOR UPDATE SKIP LOCKED), "
    "hit AS (UPDATE jobs j SET deadline_counted = true FROM due WHERE j.id = due.id RETURNING j.kind, j.grp) "
    "SELECT kind, grp, count(*) AS n FROM hit GROUP BY kind, grp")


async def sweep(conn: Any, limit: float) -> list[tuple[str, tuple[str, str], float]]:
    """Mark the unfinished jobs newly past their deadline (inside the caller's transaction) and
    answer the counter deltas to add in that same transaction."""
    return [(FAMILY, (r["kind"], r["grp"]), float(r["n"])) for r in await conn.fetch(_SWEEP, limit)]


def late_final(counted: bool, status: str, created: float | None, finished: float | None, limit: float) -> bool:
    """True when a job being made final now must be counted: COMPLETED/ERROR more than `limit`
    after `created`, and not counted by a sweep while it was unfinished."""
    return (not counted and status in FINAL_STATUSES and created is not None and finished is not None
            and finished - created > limit)
