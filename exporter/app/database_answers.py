"""Requests of a replica sharing PostgreSQL that need the database (reading jobs, registering ids):
503 with one line while it has not answered yet or does not answer; nothing is acknowledged then."""

from __future__ import annotations

import logging
from typing import Awaitable, TypeVar

from aiohttp import web

from exporter.tracking.pg.book import SharedBook

log = logging.getLogger("distribute.exporter")
T = TypeVar("T")


async def from_database(work: Awaitable[T]) -> T:
    """`work`, or 503 with one line when the database cannot do it (nothing was acknowledged)."""
    try:
        return await work
    except web.HTTPException:
        raise
    except Exception as exc:
        log.warning("state database unavailable for a request (%s)", type(exc).__name__)
        raise web.HTTPServiceUnavailable(text="the state database is not available; try again\n") from None


class LateBook:
    """The registration API's jobs: 503 until the database has answered, and while it does not."""

    book: SharedBook | None = None

    def _ready(self) -> SharedBook:
        if self.book is None:
            raise web.HTTPServiceUnavailable(text="the state database has not answered yet\n")
        return self.book

    async def track(self, ids: list[str], kind: str, group: str, source: str, now: float) -> tuple[list[str], int]:
        return await from_database(self._ready().track(ids, kind, group, source, now))

    async def untrack(self, job_id: str, now: float) -> bool:
        return await from_database(self._ready().untrack(job_id, now))

    async def flush(self) -> int:
        return 0
