"""The job facts of a replica sharing PostgreSQL, as /metrics/jobs and the status page read them: from
the database at most once per FACTS_CACHE_SECONDS, the last answer kept while it is away."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.pg.facts import GAUGES_SECONDS
from exporter.tracking.pg.store import PgJobStore

log = logging.getLogger("distribute.exporter")

FACTS_CACHE_SECONDS = 1.0  # /metrics/jobs: one read of the database per second at most, per replica
# The gauges over unfinished jobs are read from the row the `gauges` leader refreshes every
# GAUGES_SECONDS; an older row (its leader gone, a new one not yet in) is replaced by a scan.
GAUGES_MAX_AGE = 3 * GAUGES_SECONDS
FACTS_WAIT_SECONDS = 5.0


class FactsCache:
    """The job facts read from the database at most once per FACTS_CACHE_SECONDS; concurrent
    scrapes share one read; while the database is away the last answer is served."""

    def __init__(self) -> None:
        self.store: PgJobStore | None = None
        self._agg: JobAggregates | None = None
        self._at = 0.0
        self.generation = 0
        self._reading: asyncio.Task[JobAggregates] | None = None

    async def get(self) -> JobAggregates | None:
        if self.store is None:
            return None
        if self._agg is not None and time.monotonic() - self._at < FACTS_CACHE_SECONDS:
            return self._agg
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self.store.facts(max_age=GAUGES_MAX_AGE))
            self._reading.add_done_callback(_retrieved)
        try:
            # A database that does not answer (a partition, not a refusal) must not hold the scrape:
            # past FACTS_WAIT_SECONDS the last answer is served, and the read goes on for the next.
            agg = await asyncio.wait_for(asyncio.shield(self._reading), FACTS_WAIT_SECONDS)
            if agg is not self._agg:  # a new read
                self._at = time.monotonic()
                # The same values as the last (its version unmoved): keep that answer, and so the
                # rendered text of /metrics/jobs and its gzip, instead of walking every series again.
                if self._agg is None or agg.version != self._agg.version:
                    self._agg = agg
                    self.generation += 1
        except Exception as exc:
            log.debug("job facts not read from the database: %s", exc)
        return self._agg

    @property
    def last(self) -> JobAggregates | None:
        return self._agg

    async def refresh(self) -> None:
        """Before /metrics/jobs renders: 503 until the database has answered once."""
        if await self.get() is None:
            raise web.HTTPServiceUnavailable(text="the state database has not answered yet\n")


def _retrieved(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a failed read is logged by its awaiter, or by nobody: no warning at exit
