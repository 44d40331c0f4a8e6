"""GET /api/v1/jobs over the shared database: the same filters, order and cursor as with SQLite
(tracking/query.py), so any replica gives the same page."""

from __future__ import annotations

from typing import Any

from exporter.tracking.job import Job
from exporter.tracking.query import SORTS, JobQuery, Page, Position
from exporter.tracking.store import JOB_COLUMNS


def _where(q: JobQuery) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"
    if q.unfinished is True:
        clauses.append("final = 0")
    elif q.unfinished is False:
        clauses.append("final <> 0")
    for column, wanted in (("kind", q.kinds), ("grp", q.groups), ("model", q.models),
                           ("status", q.statuses), ("source", q.sources)):
        if wanted:
            clauses.append(f"{column} = ANY({arg(list(wanted))}::text[])")
    for template, value in (("created < {}", q.created_before), ("created > {}", q.created_after),
                            ("ended > {}", q.finished_after), ("duration >= {}", q.min_duration)):
        if value is not None:
            clauses.append(template.format(arg(float(value))))
    return clauses, args


async def find(pool: Any, q: JobQuery) -> Page:
    """One page of the jobs matching `q` in the order of tracking/query.py's positions."""
    column, descending = SORTS[q.sort]
    key = f"(-{column})" if descending else column
    clauses, args = _where(q)
    # A position: (1 when the sort value is missing, else 0; the value, negated when descending; id).
    position = f"(({column} IS NULL)::int, coalesce({key}, 0)::float8, id)"
    if q.after is not None:
        args += [q.after[0], float(q.after[1]), q.after[2]]
        n = len(args)
        clauses.append(f"{position} > (${n - 2}::int, ${n - 1}::float8, ${n}::text)")
    args.append(q.limit + 1)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await pool.fetch(f"SELECT {', '.join(JOB_COLUMNS)}, ({column} IS NULL)::int AS p0, "
                            f"coalesce({key}, 0)::float8 AS p1 FROM jobs {where} "
                            f"ORDER BY p0, p1, id LIMIT ${len(args)}", *args)
    jobs = [Job.from_row({c: r[c] for c in JOB_COLUMNS}) for r in rows[:q.limit]]
    nxt: Position | None = None
    if len(rows) > q.limit:
        last = rows[q.limit - 1]
        nxt = (last["p0"], last["p1"], last["id"])
    return Page(jobs, nxt)
