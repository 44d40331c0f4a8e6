"""The shared store in the words the id sources and the registration API use (sources/sync.py's
JobBook, sources/registration.py's RegisteredJobs): they track and forget ids without knowing
which backend holds them."""

from __future__ import annotations

from exporter.tracking.job import Job
from exporter.tracking.pg.store import PgJobStore


class SharedBook:
    def __init__(self, store: PgJobStore) -> None:
        self.store = store

    async def track(self, ids: list[str], kind: str, group: str, source: str,
                    now: float) -> tuple[list[str], int]:
        return await self.store.register(ids, kind, group, source)

    async def untrack(self, job_id: str, now: float) -> bool:
        return await self.store.untrack(job_id)

    async def flush(self) -> int:
        return 0  # every statement commits before it returns

    async def ids_from_source(self, source: str) -> set[str]:
        return {r["id"] for r in await self.store.pool.fetch("SELECT id FROM jobs WHERE source = $1", source)}

    async def count_by_source(self) -> dict[str, int]:
        return await self.store.sources()

    async def group_of(self, job_id: str) -> tuple[str, str] | None:
        row = await self.store.pool.fetchrow("SELECT kind, grp FROM jobs WHERE id = $1", job_id)
        return (row["kind"], row["grp"]) if row else None

    async def lookup(self, job_id: str) -> Job | None:
        return await self.store.get(job_id)
