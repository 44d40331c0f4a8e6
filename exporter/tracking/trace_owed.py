"""Which finished jobs are still owed a trace, in the SQLite state file (tracing.endpoint): the
table and what the metrics show (the store writes entries; trace_queue.py reads and settles them).

A job's entry is written in the same transaction as the row that makes it final (the flush's batch,
see TrackedJobs.flush), so a crash either keeps both or neither: a restart loses no trace. An entry
is deleted only after the collector accepted its trace, so none is sent twice unless the process
dies between the two (then the same ids come again, recognisable as duplicates). Entries are kept
in the order they were owed; past `tracing.max_pending` the oldest are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

# A rowid table: its rowid is the order in which traces became owed (oldest first).
TRACES_TABLE = """
CREATE TABLE IF NOT EXISTS traces_owed (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE, owed_at REAL NOT NULL);
"""
OUTCOMES = ("exported", "failed", "dropped")


@dataclass
class TraceStats:
    """What `distribute_exporter_traces_total` and `distribute_exporter_traces_pending` show."""

    outcomes: Counter[str] = field(default_factory=Counter)
    pending: int = 0


OWE = "INSERT OR IGNORE INTO traces_owed (job_id, owed_at) VALUES (?, ?)"


class OwedTraces(Protocol):
    """The owed traces of one backend as the shipper (trace_export.py) sees them."""

    async def take(self, limit: int, lease: float) -> list[tuple[str, dict[str, Any] | None]]:
        """Up to `limit` of the oldest owed traces not taken by another replica within `lease`
        seconds: (job id, the job's row, None when the row is gone)."""

    async def settle(self, job_ids: list[str]) -> None:
        """Owed no more: the collector took them (or they cannot be built)."""

    async def trim(self, limit: int) -> tuple[int, int]:
        """Drop the oldest entries past `limit`; answer (dropped, still owed)."""
