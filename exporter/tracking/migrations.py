"""Forward migrations of the state file: one function per schema version, applied in order.

Each runs inside the transaction that opens the file, before the current schema's CREATE ... IF NOT
EXISTS statements; a file newer than SCHEMA_VERSION is refused, never rewritten.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from exporter.tracking.trace_owed import TRACES_TABLE


def _to_2(db: sqlite3.Connection) -> None:
    # Version 1 had no `polls` column and no `retired` table (the table comes with the schema).
    add_column(db, "jobs", "polls", "INTEGER NOT NULL DEFAULT 0")


def _to_3(db: sqlite3.Connection) -> None:
    # Version 3 keys counters by compact JSON and keeps the counts of closed jobs with them: count
    # those once, here.
    db.execute("UPDATE counters SET labels = json(labels)")
    db.execute("INSERT OR REPLACE INTO counters SELECT 'closed', json_array(kind, grp, model, status), "
               "CAST(count(*) AS TEXT) FROM jobs WHERE final != 0 GROUP BY kind, grp, model, status")


def _to_5(db: sqlite3.Connection) -> None:
    # Version 5 keeps each job's status history, the HTTP code of its last answer and its duration
    # (a column, so that the jobs list can sort and filter by it through an index); the indexes
    # come with the schema.
    add_column(db, "jobs", "last_answer_code", "INTEGER")
    add_column(db, "jobs", "history", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "jobs", "duration", "REAL")
    db.execute("UPDATE jobs SET duration = finished - created WHERE final = 1 AND finished >= created")


def _to_6(db: sqlite3.Connection) -> None:
    # Cost: what a finished job was estimated to cost, and the price entry used (an id in the
    # price_entries table, which comes with the schema).
    add_column(db, "jobs", "estimated_cost", "REAL")
    add_column(db, "jobs", "price_entry", "INTEGER")
# Hand-offs to other shards not yet acknowledged, from the hash ring of earlier versions: nothing
# writes this table any more; it stays so that `state export` can apply what an old file still owes.
HANDOFF_TABLE = """
CREATE TABLE IF NOT EXISTS handoff (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, target INTEGER NOT NULL,
    payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS handoff_due ON handoff(next_try);
"""


def _to_7(db: sqlite3.Connection) -> None:
    # executescript would commit the open transaction: one statement at a time instead.
    for statement in HANDOFF_TABLE.split(";"):
        if statement.strip():
            db.execute(statement)


def _to_8(db: sqlite3.Connection) -> None:
    # Version 8 adds two families to the counters table, nothing to the tables themselves: the
    # deadline counter (`deadline_exceeded`) and the cutoff it has counted up to (`deadline_cutoff`;
    # tracking/deadlines.py). Versions before it cannot restore those families, so the new number
    # makes them refuse the file with a clear message instead of failing at start.
    pass


def _to_9(db: sqlite3.Connection) -> None:
    # Traces owed to the collector (tracking/trace_owed.py): jobs final before this version owe none.
    for statement in TRACES_TABLE.split(";"):
        if statement.strip():
            db.execute(statement)


def add_column(db: sqlite3.Connection, table: str, column: str, definition: str) -> None:
    """ALTER TABLE ... ADD COLUMN unless the column is there already (a half-migrated copy)."""
    if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _to_2, 3: _to_3, 5: _to_5, 6: _to_6, 7: _to_7,
                                                               8: _to_8, 9: _to_9}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a file at schema `version` up to SCHEMA_VERSION, in the open transaction."""
    for target in sorted(MIGRATIONS):
        if version < target:
            MIGRATIONS[target](db)
