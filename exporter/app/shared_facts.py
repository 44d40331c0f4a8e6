"""The job facts of a replica sharing PostgreSQL, as /metrics/jobs and the status page read them: from
the database at most once per FACTS_CACHE_SECONDS, read again in the background while they are asked
for (so that a scrape does not wait for the database), the last answer kept while it is away."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

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
# While the facts are asked for (a scrape, the status page) they are read again in the background
# every FACTS_CACHE_SECONDS, so that a scrape finds an answer at most FRESH_SECONDS old and does not
# wait for the database; a replica nobody asked for ACTIVE_SECONDS stops reading.
FRESH_SECONDS = 2 * FACTS_CACHE_SECONDS
ACTIVE_SECONDS = 120.0


class FactsCache:
    """The job facts read from the database at most once per FACTS_CACHE_SECONDS, kept fresh in the
    background while they are asked for; concurrent askers share one read; while the database is
    away the last answer is served."""

    def __init__(self) -> None:
        self.store: PgJobStore | None = None
        self._agg: JobAggregates | None = None
        self._at = 0.0  # when the kept answer was read (monotonic)
        self.generation = 0
        self._reading: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._asked = 0.0  # when the facts were last asked for (monotonic)
        # Set by the wiring: prepares what a new answer will need (its text, rendered ahead) before
        # it is handed out; given the answer and the generation it will have.
        self.prepare: Callable[[JobAggregates, int], Awaitable[None]] | None = None

    async def get(self, keep_warm: bool = True) -> JobAggregates | None:
        """The job facts: the kept answer when at most FRESH_SECONDS old, else a read waited for
        (at most FACTS_WAIT_SECONDS). `keep_warm`: this asker comes again (a scrape), so keep
        reading in the background meanwhile."""
        if self.store is None:
            return None
        now = time.monotonic()
        if keep_warm:
            self._asked = now
            if self._refresher is None or self._refresher.done():
                self._refresher = asyncio.ensure_future(self._keep_fresh())
        if self._agg is not None and now - self._at < FRESH_SECONDS:
            return self._agg
        try:
            # A database that does not answer (a partition, not a refusal) must not hold the scrape:
            # past FACTS_WAIT_SECONDS the last answer is served, and the read goes on for the next.
            await asyncio.wait_for(asyncio.shield(self._read()), FACTS_WAIT_SECONDS)
        except Exception as exc:
            log.debug("job facts not read from the database: %s", exc)
        return self._agg

    def _read(self) -> asyncio.Task[None]:
        """The read under way, or a new one."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_and_keep())
            self._reading.add_done_callback(_retrieved)
        return self._reading

    async def _read_and_keep(self) -> None:
        assert self.store is not None
        agg = await self.store.facts(max_age=GAUGES_MAX_AGE)
        self._at = time.monotonic()
        # The same values as the last (its version unmoved): keep that answer, and so the rendered
        # text of /metrics/jobs and its gzip, instead of walking every series again.
        if self._agg is None or agg.version != self._agg.version:
            if self.prepare is not None and self._agg is not None:  # the first answer is awaited anyway
                try:
                    await self.prepare(agg, self.generation + 1)
                except Exception as exc:  # the scrape renders it then, as without
                    log.debug("job facts not rendered ahead: %s", exc)
            self._agg = agg
            self.generation += 1

    async def _keep_fresh(self) -> None:
        while time.monotonic() - self._asked < ACTIVE_SECONDS:
            wait = self._at + FACTS_CACHE_SECONDS - time.monotonic()
            if wait > 0:  # an asker's own read may have made it fresh meanwhile: look again after
                await asyncio.sleep(wait)
                continue
            try:
                await asyncio.shield(self._read())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again a little later
                log.debug("job facts not read from the database: %s", exc)
                await asyncio.sleep(FACTS_CACHE_SECONDS)

    async def close(self) -> None:
        for task in (self._refresher, self._reading):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

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
