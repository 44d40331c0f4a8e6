"""The owed traces of the SQLite file (trace_owed.py) as the shipper reads, settles and bounds
them, on the state thread. One process reads them: `take` needs no lease."""

from __future__ import annotations

import time
from typing import Any

from exporter.tracking.store import StateStore
from exporter.tracking.trace_owed import TRACE_COLUMNS


def owed_batch(store: StateStore, limit: int) -> list[tuple[str, dict[str, Any] | None]]:
    """The `limit` oldest owed traces: (job id, the job's row, None when the row is gone)."""
    cols = ", ".join("j." + c for c in TRACE_COLUMNS)
    rows = store.db.execute(f"SELECT o.job_id, j.id IS NOT NULL, c.request_model, c.traceparent, {cols} "
                            "FROM traces_owed o LEFT JOIN jobs j ON j.id = o.job_id "
                            "LEFT JOIN trace_creates c ON c.job_id = o.job_id ORDER BY o.seq LIMIT ?",
                            (limit,)).fetchall()
    out: list[tuple[str, dict[str, Any] | None]] = []
    for row in rows:
        job = dict(zip(TRACE_COLUMNS, row[4:])) if row[1] else None
        if job is not None:
            job["request_model"], job["traceparent"] = row[2], row[3]
        out.append((row[0], job))
    return out


def settle(store: StateStore, job_ids: list[str]) -> None:
    """The collector has these traces (or they cannot be built): owed no more."""
    with store.transaction(fsync=False) as db:
        db.executemany("DELETE FROM traces_owed WHERE job_id = ?", ((i,) for i in job_ids))
        db.executemany("DELETE FROM trace_creates WHERE job_id = ?", ((i,) for i in job_ids))


def trim(store: StateStore, limit: int) -> tuple[int, int]:
    """Drop the oldest entries past `limit`; answer (dropped, still owed)."""
    with store.transaction(fsync=False) as db:
        owed = db.execute("SELECT count(*) FROM traces_owed").fetchone()[0]
        if owed <= limit:
            return 0, owed
        db.execute("DELETE FROM traces_owed WHERE seq IN (SELECT seq FROM traces_owed ORDER BY seq LIMIT ?)",
                   (owed - limit,))
        return owed - limit, limit


class SqliteOwedTraces:
    """OwedTraces (trace_owed.py) of the SQLite file."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._swept = time.monotonic()

    async def take(self, limit: int, lease: float) -> list[tuple[str, dict[str, Any] | None]]:
        return await self.store.call(owed_batch, self.store, limit)

    async def settle(self, job_ids: list[str]) -> None:
        await self.store.call(settle, self.store, job_ids)

    async def trim(self, limit: int) -> tuple[int, int]:
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            self._swept = time.monotonic()
            await self.store.call(sweep_notes, self.store)
        return await self.store.call(trim, self.store, limit)

    async def note_creates(self, notes: list[tuple[str, str | None, str | None]]) -> None:
        await self.store.call(write_notes, self.store, notes)


SWEEP_SECONDS = 300.0  # how often notes of jobs no longer tracked (retired, untracked) are dropped


def write_notes(store: StateStore, notes: list[tuple[str, str | None, str | None]]) -> None:
    with store.transaction(fsync=False) as db:
        db.executemany("INSERT OR IGNORE INTO trace_creates VALUES (?, ?, ?)", notes)


def sweep_notes(store: StateStore) -> None:
    with store.transaction(fsync=False) as db:
        db.execute("DELETE FROM trace_creates WHERE job_id NOT IN (SELECT id FROM jobs)")
