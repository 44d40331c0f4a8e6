"""The job facts (/metrics/jobs) from the shared database.

The counters are rows added to as jobs finish (~18,000 at a million jobs): each replica reads them
whole once and then only those written since its last read (FactsReader). The gauges over
unfinished jobs (how many per labels, the oldest per group) need a pass over every unfinished row
(through the `jobs_open` index): the replica that leads the `gauges` task computes them every
GAUGES_SECONDS into one row, and the replicas' scrapes read that row. Until it is there (or when
it is older than the caller accepts) they are computed on the spot.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Iterable

from exporter.tracking import finishing
from exporter.tracking.aggregates import Histogram, JobAggregates
from exporter.tracking.pg.deadlines import FAMILY as DEADLINE_FAMILY
from exporter.tracking.pg.schema import NOW

GAUGES_SECONDS = 2.0

# Both over the unfinished jobs only, through their index (schema.py, v4: `jobs_open`): the counts
# from the index alone where the table's pages are all-visible; the oldest of each (kind, group)
# one index probe each, for the pairs the counts found. Sorted, so that the gauge's series keep
# their order from one refresh to the next (the renderer reuses unchanged parts).
_OPEN_COUNTS = ("SELECT kind, grp, model, status, count(*) AS n FROM jobs WHERE final = 0 "
                "GROUP BY kind, grp, model, status ORDER BY kind, grp, model, status")
_OLDEST = ("SELECT p.kind, p.grp, o.created, o.id FROM unnest($1::text[], $2::text[]) AS p(kind, grp), "
           "LATERAL (SELECT created, id FROM jobs WHERE final = 0 AND kind = p.kind AND grp = p.grp "
           "AND created IS NOT NULL ORDER BY created LIMIT 1) AS o ORDER BY p.kind, p.grp")


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
    pairs = list(dict.fromkeys((kind, grp) for kind, grp, *_ in counts))
    oldest = [[r["kind"], r["grp"], r["created"], r["id"]]
              for r in await conn.fetch(_OLDEST, [k for k, _ in pairs], [g for _, g in pairs])]
    return {"open": counts, "oldest": oldest}


async def refresh_gauges(pool: Any) -> None:
    """Compute the gauges over unfinished jobs into their row (the `gauges` task's leader)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        gauges = await _gauges_now(conn)
        await conn.execute(f"INSERT INTO gauges VALUES ('unfinished', $1, {NOW}) ON CONFLICT (key) "
                           "DO UPDATE SET value = EXCLUDED.value, at = EXCLUDED.at", json.dumps(gauges))


FULL_READ_SECONDS = 300.0  # a whole read now and then as well, whatever the marks say

# The first statement of a read: its snapshot's xmin (every transaction not visible to this
# snapshot has an id at or above it), the server's start (another server behind the same address,
# a restore, a promoted standby: read everything again) and the count of deletions (schema.py, v4).
_MARK = ("SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin, pg_postmaster_start_time() AS started, "
         "(SELECT value FROM meta WHERE key = 'counters_resets') AS resets")
# The mark (part 0), the gauges row when fresh enough (part 1) and the counter rows changed since
# `$1` (part 2), under the one snapshot of one statement.
_ONE_STATEMENT = (
    "SELECT 0 AS part, pg_snapshot_xmin(pg_current_snapshot())::text AS family, "
    "(SELECT value FROM meta WHERE key = 'counters_resets') AS labels, NULL::float8 AS value, "
    "pg_postmaster_start_time() AS started "
    f"UNION ALL SELECT 1, NULL, value, NULL, NULL FROM gauges WHERE key = 'unfinished' AND at >= {NOW} - $2 "
    "UNION ALL SELECT 2, family, labels, value, NULL FROM counters WHERE changed >= $1::text::xid8")
_ALL = "SELECT family, labels, value FROM counters"
_CHANGED = "SELECT family, labels, value FROM counters WHERE changed >= $1::text::xid8"


class FactsReader:
    """The job facts of one replica, read whole once and then by the counter rows changed since its
    last read (schema.py, version 4): a read costs what changed, not the ~20,000 rows of a million
    jobs' counters. The decoded counters are kept here; each read answers a JobAggregates of its
    own whose `version` moves only when a value did."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._les = {le: i for i, (le, _) in enumerate(Histogram(self.bounds).cumulative())}
        self._labels = LabelCache()
        self._lock = asyncio.Lock()  # one read at a time: an older read must not land on a newer one
        self._counters = JobAggregates(self.bounds)
        self._since: str | None = None  # xmin of the last read's snapshot; None: read everything
        self._mark: tuple[Any, Any] = (None, None)
        self._full_at = 0.0
        self._gauges_text: str | None = None
        self._gauges: dict[str, list] | None = None
        self._open: list[tuple[tuple[str, str, str, str], int]] = []
        self._currency: str | None = None
        self.version = 0
        self.full_reads = 0

    async def read(self, pool: Any, currency: str | None, max_age: float | None = None) -> JobAggregates:
        """The job facts; the gauges from their row when it is at most `max_age` seconds old (None:
        always computed now, so that a caller sees its own writes)."""
        async with self._lock:
            if max_age is not None and self._since is not None and time.monotonic() - self._full_at < FULL_READ_SECONDS:
                # The usual read: one statement (one snapshot), so one round trip. On a loaded
                # machine each round trip waits for two processes to be scheduled.
                found = await self._read_changed(pool, max_age)
                if found is not None:
                    mark, rows, text = found
                    return self._take(mark, rows, False, text, None, currency)
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                mark = await conn.fetchrow(_MARK)
                full = (self._since is None or (mark["started"], mark["resets"]) != self._mark
                        or time.monotonic() - self._full_at >= FULL_READ_SECONDS)
                rows = await (conn.fetch(_ALL) if full else conn.fetch(_CHANGED, self._since))
                text = None
                if max_age is not None:
                    text = await conn.fetchval(f"SELECT value FROM gauges WHERE key = 'unfinished' AND at >= {NOW} - $1",
                                               max_age)
                gauges = None if text is not None else await _gauges_now(conn)
            return self._take(mark, rows, full, text, gauges, currency)

    async def _read_changed(self, pool: Any, max_age: float) -> tuple[Any, list[Any], str] | None:
        """The mark, the rows changed since the last read and the gauges row, in one statement;
        None when that is not enough (the marks moved: read everything; the row is too old)."""
        mark, rows, text = None, [], None
        for row in await pool.fetch(_ONE_STATEMENT, self._since, max_age):
            if row["part"] == 2:
                rows.append((row["family"], row["labels"], row["value"]))
            elif row["part"] == 0:
                mark = {"xmin": row["family"], "resets": row["labels"], "started": row["started"]}
            else:
                text = row["labels"]
        if mark is None or (mark["started"], mark["resets"]) != self._mark or text is None:
            return None
        return mark, rows, text

    def _take(self, mark: Any, rows: list[Any], full: bool, text: str | None, gauges: dict[str, list] | None,
              currency: str | None) -> JobAggregates:
        """Keep what a read found and answer. Nothing here awaits: the kept counters change all at
        once, after the read succeeded."""
        changed = self._apply(rows, full)
        changed |= self._take_gauges(text, gauges) | (currency != self._currency)
        self._currency = currency
        self._since, self._mark = mark["xmin"], (mark["started"], mark["resets"])
        if full:
            self._full_at = time.monotonic()
            self.full_reads += 1
        if changed:
            self.version += 1
        return self._answer()

    def _apply(self, rows: list[Any], full: bool) -> bool:
        """Put the rows' values (whole values, not deltas: a row read twice is harmless) into the
        kept counters; answer whether any value changed. Histograms are replaced, never changed in
        place, so that an answer handed out earlier keeps its own."""
        kept = self._counters
        if full:
            self._counters = JobAggregates(self.bounds)
        counters, labels = self._counters, self._labels
        replaced: dict[tuple[str, ...], Histogram | None] = {}
        changed = False
        for family, text, value in rows:
            key = labels(text)
            if family in finishing.PLAIN_FAMILIES or family == DEADLINE_FAMILY:
                table = counters.deadline_exceeded if family == DEADLINE_FAMILY else getattr(counters, family)
                number = value if family == "cost" else int(value)
                if key not in table or table[key] != number:
                    table[key] = number
                    changed = True
                continue
            if family == "duration_bucket":
                index = self._les.get(key[-1])
                if index is None:
                    continue  # a bucket no longer configured (as finishing.restore)
                key = key[:-1]
            elif family not in ("duration_sum", "duration_count"):
                continue
            if key not in replaced:
                old = replaced[key] = counters.durations.get(key)
                counters.durations[key] = (Histogram(self.bounds, list(old.counts), old.total, old.count)
                                           if old is not None else Histogram(self.bounds))
            hist = counters.durations[key]
            if family == "duration_bucket":
                hist.counts[index] = int(value)
            elif family == "duration_sum":
                hist.total = value
            else:
                hist.count = int(value)
        for key, old in replaced.items():
            if old is not None and counters.durations[key] == old:
                counters.durations[key] = old  # the same values after all
            else:
                changed = True
        return not _same_counters(kept, counters) if full else changed

    def _take_gauges(self, text: str | None, computed: dict[str, list] | None) -> bool:
        if text is not None and text == self._gauges_text:
            return False
        gauges = computed if computed is not None else json.loads(text)  # type: ignore[arg-type]
        self._gauges_text = text
        if gauges == self._gauges:
            return False
        self._gauges = gauges
        self._open = [((kind, grp, model, status), n) for kind, grp, model, status, n in gauges["open"]]
        return True

    def _answer(self) -> JobAggregates:
        """A JobAggregates of this read's own: the kept tables copied (histograms shared: replaced,
        never changed, see _apply), the jobs gauge from `closed` and the unfinished counts."""
        kept, agg = self._counters, JobAggregates(self.bounds)
        for family in finishing.PLAIN_FAMILIES:
            setattr(agg, family, getattr(kept, family).copy())
        agg.deadline_exceeded = kept.deadline_exceeded.copy()
        agg.durations = dict(kept.durations)
        jobs = agg.jobs = kept.closed.copy()  # the final jobs still stored, and the unfinished ones
        for labels, n in self._open:
            jobs[labels] += n
        for kind, grp, created, job_id in self._gauges["oldest"] if self._gauges else ():
            agg.note_unfinished(kind, grp, created, job_id)
        agg.currency = self._currency
        agg.version = self.version
        return agg


def _same_counters(a: JobAggregates, b: JobAggregates) -> bool:
    return (all(getattr(a, f) == getattr(b, f) for f in finishing.PLAIN_FAMILIES)
            and a.deadline_exceeded == b.deadline_exceeded and a.durations == b.durations)
