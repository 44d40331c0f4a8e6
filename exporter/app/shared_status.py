"""The status page's figures over time for a replica sharing PostgreSQL: the last hour's samples
and spend today, read from the database (tracking/pg/status_page.py) so that every replica draws the
same page, at most once per READ_SECONDS per replica; and this replica's share of the API request
totals, added to the shared row."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from exporter.tracking.aggregates import ApiAggregates
from exporter.tracking.pg import status_page
from exporter.tracking.timeline import Sample

log = logging.getLogger("distribute.exporter")

READ_SECONDS = 2.0  # the page reloads every 10 s and a sample comes every 10 s: a short cache is enough
WAIT_SECONDS = 5.0  # a database that does not answer does not hold the page: the last answer is drawn


class SharedStatus:
    def __init__(self, api: ApiAggregates, priced: Callable[[], bool]) -> None:
        self.api = api
        self.priced = priced  # a price file is loaded (the config as reloaded)
        self.pool: Any = None  # once the database answered
        self._sent = (0, 0)  # the API totals already added to the shared row
        self._read: tuple[list[Sample], list[dict[str, object]] | None] = ([], None)
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    def _api_totals(self) -> tuple[int, int]:
        return sum(self.api.requests.values()), sum(self.api.errors.values())

    async def push_api(self) -> None:
        """Add what this replica's requests grew by since the last push (heartbeat loop)."""
        now = self._api_totals()
        grown = (now[0] - self._sent[0], now[1] - self._sent[1])
        if self.pool is not None and any(grown):
            await status_page.add_api(self.pool, *grown)
            self._sent = now

    async def sample(self, jobs: Any) -> None:
        """The `timeline` leader's work: one shared sample of `jobs` (the job facts)."""
        if jobs is not None:
            await status_page.take_sample(self.pool, jobs)

    async def read(self) -> tuple[list[Sample], list[dict[str, object]] | None]:
        """(the last hour's samples, spend today or None without a price file); while the database
        is away, the last answer."""
        async with self._lock:  # concurrent pages share one read
            if self.pool is not None and time.monotonic() - self._at >= READ_SECONDS:
                try:
                    samples = await asyncio.wait_for(status_page.samples(self.pool), WAIT_SECONDS)
                    spend = (await asyncio.wait_for(status_page.spend_today(self.pool), WAIT_SECONDS)
                             if self.priced() else None)
                    self._read, self._at = (samples, spend), time.monotonic()
                except Exception as exc:
                    log.debug("status page figures not read from the database: %s", exc)
            return self._read
