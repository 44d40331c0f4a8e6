"""Which finished jobs are still owed a trace, in the SQLite state file (tracing.endpoint): the
table and what the metrics show (the store writes entries; trace_queue.py reads and settles them).

A job's entry is written in the same transaction as the row that makes it final (the flush's batch,
see TrackedJobs.flush), so a crash either keeps both or neither: a restart loses no trace. An entry
is deleted only after the collector accepted its trace, so none is sent twice unless the process
dies between the two (then the same ids come again, recognisable as duplicates). Entries are kept
in the order they were owed; past `tracing.max_pending` the oldest are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

# traces_owed: a rowid table, its rowid the order in which traces became owed (oldest first).
# trace_creates: what the proxy saw of a job's create (the requested model, the application's W3C
# traceparent), until its trace goes out.
TRACES_TABLE = """
CREATE TABLE IF NOT EXISTS traces_owed (seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL UNIQUE, owed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trace_creates (job_id TEXT PRIMARY KEY, request_model TEXT, traceparent TEXT) WITHOUT ROWID;
"""
# W3C Trace Context, version 00: anything else is not kept (the trace and span ids may not be zero).
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
NOTES_MAX = 100_000  # creates' notes waiting to be written (a second's worth, normally)
OUTCOMES = ("exported", "failed", "dropped")
# The columns of a job's row its trace is made of (trace_spans.py): what the shipper reads.
TRACE_COLUMNS = ("id", "kind", "grp", "source", "status", "model", "created", "finished", "ended", "prompt_tokens",
                 "completion_tokens", "results", "choices", "first_tracked", "polls", "history", "estimated_cost")


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

    async def note_creates(self, notes: list[tuple[str, str | None, str | None]]) -> None:
        """Keep (job id, requested model, traceparent) of creates the proxy saw, for their traces."""


class CreateNotes:
    """What the proxy saw of creates, held until the shipper writes it (within a second): off the
    proxy's path, and bounded (past NOTES_MAX a note is not kept; the trace goes out without it)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str | None, str | None]] = []

    def add(self, job_id: str, model: str | None, traceparent: str | None) -> None:
        if traceparent is not None:
            traceparent = traceparent.strip().lower()
            if not TRACEPARENT.fullmatch(traceparent):
                traceparent = None
        if (model or traceparent) and len(self.items) < NOTES_MAX:
            self.items.append((job_id, model, traceparent))

    def take(self) -> list[tuple[str, str | None, str | None]]:
        items, self.items = self.items, []
        return items
