"""The job facts (/metrics/jobs) from the shared database.

The counters are rows added to as jobs finish: read whole, they are cheap. The gauges over
unfinished jobs (how many per labels, the oldest per group) need a scan of every unfinished row,
which at a million jobs takes a few hundred milliseconds: the replica that leads the `gauges` task
computes them every GAUGES_SECONDS into one row, and the replicas' scrapes read that row. Until it
is there (or when it is older than the caller accepts) they are computed on the spot.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from exporter.tracking import finishing
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.pg.deadlines import FAMILY as DEADLINE_FAMILY
from exporter.tracking.pg.schema import NOW

GAUGES_SECONDS = 2.0

_OPEN_COUNTS = ("SELECT kind, grp, model, status, count(*) AS n FROM jobs WHERE final = 0 "
                "GROUP BY kind, grp, model, status")
_OLDEST = ("SELECT DISTINCT ON (kind, grp) kind, grp, created, id FROM jobs "
           "WHERE final = 0 AND created IS NOT NULL ORDER BY kind, grp, created")


class LabelCache:
    """Counter keys (compact JSON text) decoded once: the same few thousand come back every read."""

    def __init__(self) -> None:
        self._decoded: dict[str, tuple[str, ...]] = {}

    def __call__(self, text: str) -> tuple[str, ...]:
        found = self._decoded.get(text)
        if found is None:
            if len(self._decoded) > 200_000:
                self._decoded.clear()
            found = self._decoded[text] = tuple(json.loads(text))
        return found


async def _gauges_now(conn: Any) -> dict[str, list]:
    counts = [[r["kind"], r["grp"], r["model"], r["status"], r["n"]] for r in await conn.fetch(_OPEN_COUNTS)]
    oldest = [[r["kind"], r["grp"], r["created"], r["id"]] for r in await conn.fetch(_OLDEST)]
    return {"open": counts, "oldest": oldest}


async def refresh_gauges(pool: Any) -> None:
    """Compute the gauges over unfinished jobs into their row (the `gauges` task's leader)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        gauges = await _gauges_now(conn)
        await conn.execute(f"INSERT INTO gauges VALUES ('unfinished', $1, {NOW}) ON CONFLICT (key) "
                           "DO UPDATE SET value = EXCLUDED.value, at = EXCLUDED.at", json.dumps(gauges))


async def read_facts(pool: Any, bounds: Iterable[float], currency: str | None, labels: LabelCache,
                     max_age: float | None = None) -> JobAggregates:
    """The job facts; the gauges from their row when it is at most `max_age` seconds old (None:
    always computed now, so that a caller sees its own writes)."""
    agg = JobAggregates(bounds)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        counters = await conn.fetch("SELECT family, labels, value FROM counters")
        gauges = None
        if max_age is not None:
            text = await conn.fetchval(f"SELECT value FROM gauges WHERE key = 'unfinished' AND at >= {NOW} - $1",
                                       max_age)
            gauges = json.loads(text) if text is not None else None
        if gauges is None:
            gauges = await _gauges_now(conn)
    finishing.restore(agg, ((r["family"], labels(r["labels"]), r["value"]) for r in counters))
    for r in counters:  # kept apart from finishing's families: only pg/deadlines.py adds to it
        if r["family"] == DEADLINE_FAMILY:
            kind, grp = labels(r["labels"])
            agg.deadline_exceeded[(kind, grp)] = int(r["value"])
    agg.add_counts(list(agg.closed.items()))
    agg.add_counts(((kind, grp, model, status), n) for kind, grp, model, status, n in gauges["open"])
    for kind, grp, created, job_id in gauges["oldest"]:
        agg.note_unfinished(kind, grp, created, job_id)
    agg.currency = currency
    return agg
