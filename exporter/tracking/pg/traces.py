"""The owed traces in PostgreSQL (trace_owed.py says why they are kept): an entry is written by the
transaction that makes its job final (PgJobStore._finish), so whichever replica or proxy brings
the final answer, the trace is owed exactly once. Replicas share the sending: a batch is leased to
one replica (`FOR UPDATE SKIP LOCKED`, then `holder` and `until`); a replica that dies leaves its
batch to the others when the lease runs out.
"""

from __future__ import annotations

from typing import Any

from exporter.tracking.pg.schema import NOW
from exporter.tracking.store import JOB_COLUMNS

# The table is schema 2 (pg/schema.py); `seq` orders entries oldest first.
OWE = f"INSERT INTO traces_owed (job_id, owed_at) VALUES ($1, {NOW}) ON CONFLICT (job_id) DO NOTHING"
_COLUMNS = ", ".join("j." + c for c in JOB_COLUMNS)


class PgOwedTraces:
    """OwedTraces (trace_owed.py) on a pool of asyncpg sessions; `holder` names this replica."""

    def __init__(self, pool: Any, holder: str) -> None:
        self.pool = pool
        self.holder = holder

    async def take(self, limit: int, lease: float) -> list[tuple[str, dict[str, Any] | None]]:
        rows = await self.pool.fetch(
            f"WITH mine AS (SELECT seq FROM traces_owed WHERE until < {NOW} OR holder = $3 "
            f"ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED), "
            f"leased AS (UPDATE traces_owed o SET holder = $3, until = {NOW} + $2 FROM mine "
            f"WHERE o.seq = mine.seq RETURNING o.seq, o.job_id) "
            f"SELECT l.job_id AS owed_id, j.id IS NOT NULL AS present, c.request_model, c.traceparent, {_COLUMNS} "
            f"FROM leased l LEFT JOIN jobs j ON j.id = l.job_id LEFT JOIN trace_creates c ON c.job_id = l.job_id "
            f"ORDER BY l.seq", limit, lease, self.holder)
        out: list[tuple[str, dict[str, Any] | None]] = []
        for row in rows:
            job = {c: row[c] for c in (*JOB_COLUMNS, "request_model", "traceparent")} if row["present"] else None
            out.append((row["owed_id"], job))
        return out

    async def note_creates(self, notes: list[tuple[str, str | None, str | None]]) -> None:
        await self.pool.execute(
            "INSERT INTO trace_creates SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
            "ON CONFLICT (job_id) DO NOTHING", [n[0] for n in notes], [n[1] for n in notes], [n[2] for n in notes])

    async def settle(self, job_ids: list[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM traces_owed WHERE job_id = ANY($1::text[])", job_ids)
            await conn.execute("DELETE FROM trace_creates WHERE job_id = ANY($1::text[])", job_ids)

    async def trim(self, limit: int) -> tuple[int, int]:
        async with self.pool.acquire() as conn, conn.transaction():
            owed = await conn.fetchval("SELECT count(*) FROM traces_owed")
            if owed <= limit:
                return 0, owed
            dropped = await conn.fetchval(
                "WITH gone AS (DELETE FROM traces_owed WHERE seq IN (SELECT seq FROM traces_owed ORDER BY seq "
                "LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING 1) SELECT count(*) FROM gone", owed - limit)
            return dropped, owed - dropped
