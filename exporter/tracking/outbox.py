"""The hand-off outbox in the state file: entries owed to other shards until they acknowledge them.

Entries are written with the batch that acknowledges them to whoever sent the id (Batch.handoffs),
so an acknowledged id is either tracked here or in this table, never neither; they leave the table
only once the owner has acknowledged them (`done`). Every method runs on the state store's thread.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from exporter.tracking.store import StateStore

SHARD_KEY = "shard_count"  # meta: the shard count the file's ids were last split by


@dataclass(frozen=True, slots=True)
class Entry:
    row: int
    job_id: str
    target: int
    payload: str
    attempts: int


@dataclass
class HandoffStats:
    """What distribute_handoff_* report: outcomes counted since start, and entries not yet acknowledged."""

    outcomes: Counter[str] = field(default_factory=Counter)
    pending: int = 0


class Outbox:
    """Reads and retires the outbox rows of one state file."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def _transaction(self, durable: bool = True) -> ContextManager[sqlite3.Connection]:
        """One transaction of the store's. Not `durable`: for changes that only cost a harmless
        re-send if a power cut undoes them."""
        return self.store.transaction(durable)

    def add(self, rows: list[tuple[str, int, str, float]]) -> None:
        """Store entries (job id, target, payload, next_try) in one transaction of their own."""
        with self._transaction() as db:
            db.executemany("INSERT INTO handoff (job_id, target, payload, next_try) VALUES (?, ?, ?, ?)", rows)

    def due(self, now: float, limit: int) -> list[Entry]:
        rows = self.store.db.execute("SELECT id, job_id, target, payload, attempts FROM handoff WHERE next_try <= ? "
                                     "ORDER BY id LIMIT ?", (now, limit))
        return [Entry(*row) for row in rows]

    def pending_by_target(self) -> dict[int, int]:
        return dict(self.store.db.execute("SELECT target, count(*) FROM handoff GROUP BY target"))

    def next_try(self) -> float | None:
        return self.store.db.execute("SELECT min(next_try) FROM handoff").fetchone()[0]

    def count(self) -> int:
        return self.store.db.execute("SELECT count(*) FROM handoff").fetchone()[0]

    def done(self, rows: list[int]) -> None:
        """Acknowledged by the owner: forget them (undone by a power cut, they are sent again:
        hand-offs are idempotent)."""
        with self._transaction(durable=False) as db:
            db.executemany("DELETE FROM handoff WHERE id = ?", ((r,) for r in rows))

    def later(self, rows: list[int], next_try: float) -> None:
        """Not delivered: count the attempt and try again at `next_try`."""
        with self._transaction(durable=False) as db:
            db.executemany("UPDATE handoff SET attempts = attempts + 1, next_try = ? WHERE id = ?",
                           ((next_try, r) for r in rows))

    def postpone(self, rows: list[int], next_try: float) -> None:
        """Not tried (their owner is in a back-off): wait until `next_try`, attempts unchanged."""
        with self._transaction(durable=False) as db:
            db.executemany("UPDATE handoff SET next_try = ? WHERE id = ?", ((next_try, r) for r in rows))

    def resume(self, target: int) -> None:
        """`target` takes entries again: what waits out a back-off for it is due at once."""
        with self._transaction(durable=False) as db:
            db.execute("UPDATE handoff SET next_try = 0 WHERE target = ? AND attempts > 0", (target,))

    def retarget(self, owner: Callable[[str], int], mine: int) -> list[Entry]:
        """After a change of shard count: point every entry at its id's owner now; take out (and
        answer) the entries this shard now owns itself, for the caller to apply here."""
        db = self.store.db
        entries = [Entry(*row) for row in db.execute("SELECT id, job_id, target, payload, attempts FROM handoff")]
        moved = [(owner(e.job_id), e.row) for e in entries if owner(e.job_id) != e.target]
        own = [e for e in entries if owner(e.job_id) == mine]
        with self._transaction() as tx:
            tx.executemany("UPDATE handoff SET target = ?, next_try = 0 WHERE id = ?", moved)
        return own

    # -- the shard count the file was split by ---------------------------------------------------
    def shard_count(self) -> int | None:
        row = self.store.db.execute("SELECT value FROM meta WHERE key = ?", (SHARD_KEY,)).fetchone()
        return int(row[0]) if row else None

    def set_shard_count(self, count: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (SHARD_KEY, str(count)))

    def all_ids(self) -> list[str]:
        """Every job id in the file (for the split after a change of shard count)."""
        return [r[0] for r in self.store.db.execute("SELECT id FROM jobs")]
