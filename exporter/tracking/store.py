"""The state file: every tracked job and the job-derived counters, in SQLite.

One connection, used from one dedicated thread, so that the event loop never waits on the disk and
SQLite never sees two threads. WAL mode with `synchronous=FULL`: a committed batch survives a
`kill -9` or a power cut; a crash loses at most the batch not yet written.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

from exporter.tracking import price_entries
from exporter.tracking.migrations import HANDOFF_TABLE, SCHEMA_VERSION, migrate
from exporter.tracking.trace_owed import OWE as OWE_TRACES, TRACES_TABLE

APPLICATION_ID = 0x44495354  # "DIST": marks a file as ours, so a foreign database is refused

JOB_COLUMNS = ("id", "kind", "grp", "source", "status", "model", "created", "finished", "final",
               "ended", "prompt_tokens", "completion_tokens", "results", "tool_calls", "choices",
               "first_tracked", "last_polled", "next_due", "interval", "errors", "polls",
               "last_answer_code", "history", "duration", "estimated_cost", "price_entry")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL, source TEXT NOT NULL,
    status TEXT NOT NULL, model TEXT NOT NULL, created REAL, finished REAL,
    final INTEGER NOT NULL DEFAULT 0,     -- 0 polled, 1 COMPLETED/ERROR, 2 NOT_FOUND
    ended REAL,                           -- when it became final (API's finished, else seen)
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    results INTEGER NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0, choices TEXT,
    first_tracked REAL NOT NULL, last_polled REAL, next_due REAL NOT NULL,
    interval REAL NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, polls INTEGER NOT NULL DEFAULT 0,
    last_answer_code INTEGER, history TEXT NOT NULL DEFAULT '', duration REAL,
    estimated_cost REAL,                  -- NULL unless priced (schema 6)
    price_entry INTEGER                   -- id in price_entries: the entry used, or that none matched
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(final) WHERE final = 0;
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(ended) WHERE final != 0;
CREATE INDEX IF NOT EXISTS jobs_source ON jobs(source);
-- GET /api/v1/jobs over finished jobs (tracking/queries.py): one index per sort key, one for a group
-- and status (finished_after uses jobs_ended); partial, so unfinished rows (rewritten at every poll)
-- pay nothing for them.
CREATE INDEX IF NOT EXISTS jobs_fin_created ON jobs(created) WHERE final != 0;
CREATE INDEX IF NOT EXISTS jobs_fin_duration ON jobs(duration) WHERE final != 0;
CREATE INDEX IF NOT EXISTS jobs_fin_group ON jobs(grp, status, created) WHERE final != 0;
CREATE TABLE IF NOT EXISTS counters (
    family TEXT NOT NULL, labels TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (family, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retired (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
""" + price_entries.SCHEMA + HANDOFF_TABLE + TRACES_TABLE

T = TypeVar("T")

_INSERT = f"INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({','.join('?' * len(JOB_COLUMNS))})"  # whole rows


def labels_key(labels: Iterable[str]) -> str:
    """The counters table's key for a label tuple: compact JSON, as SQLite's json_array writes it."""
    return json.dumps(list(labels), separators=(",", ":"))


class StateError(Exception):
    """A state file that cannot be used; never replaced silently."""


@dataclass(slots=True)
class Batch:
    """One transaction's worth of changes."""

    upserts: list[tuple[Any, ...]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    retire: list[tuple[str, float]] = field(default_factory=list)
    counters: list[tuple[str, tuple[str, ...], object]] = field(default_factory=list)
    # Rows (JOB_COLUMNS order) of jobs still polled whose row in the file is theirs and still polled:
    # written by an UPDATE of the columns that can change while polled (see `write`).
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    traces: list[tuple[str, float]] = field(default_factory=list)  # (job id, when): owed a trace (trace_owed.py)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.retire or self.counters or self.updates or self.traces)


# What a row of a job still polled can not change: its identity, where it came from, and the indexed
# `final`/`ended` (so that an UPDATE of the others leaves every index alone; a third less CPU per
# row than INSERT OR REPLACE, which deletes and re-inserts the row and its index entries). Columns
# added to JOB_COLUMNS later are updated unless named here.
_FIXED_WHILE_POLLED = frozenset(("id", "kind", "grp", "source", "first_tracked", "final", "ended"))
_UPDATED = tuple(i for i, c in enumerate(JOB_COLUMNS) if c not in _FIXED_WHILE_POLLED) + (0,)
_UPDATE_SQL = (f"UPDATE jobs SET {', '.join(JOB_COLUMNS[i] + ' = ?' for i in _UPDATED[:-1])} WHERE id = ?")


class StateStore:
    """The SQLite file behind the tracked-job state. Use `call` to run a method on its thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._db: sqlite3.Connection | None = None
        # WAL checkpoints on a second connection and thread (see separate_checkpoints).
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_db: sqlite3.Connection | None = None
        self.prices = price_entries.PriceEntries(JOB_COLUMNS.index("price_entry"))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    # -- opening -------------------------------------------------------------------------------
    def open(self) -> None:
        """Open or create the file; refuse (StateError) a foreign, corrupt or newer one."""
        existed = self.path != ":memory:" and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"state file {self.path}: cannot open: {exc}") from None
        try:
            self._db = db
            if existed:
                self._check_existing(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            with db:
                version = self._meta("schema_version")
                if version is not None and int(version) < SCHEMA_VERSION:
                    migrate(db, int(version))
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._set_meta("schema_version", str(SCHEMA_VERSION))
        except sqlite3.DatabaseError as exc:
            db.close()
            self._db = None
            raise StateError(f"state file {self.path}: not a usable SQLite database ({exc}); "
                             "move it away or point state.path elsewhere") from None

    def _check_existing(self, db: sqlite3.Connection) -> None:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise StateError(f"state file {self.path}: not a distribute-exporter state file "
                             f"(application_id {app_id}); refusing to touch it")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StateError(f"state file {self.path}: damaged ({check}); restore a backup or move it away")
        version = int(self._meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise StateError(f"state file {self.path}: written by a newer version (schema {version}, "
                             f"this one reads up to {SCHEMA_VERSION})")

    def _meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "state store not open"
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def shutdown(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.submit(self._close_checkpoint_db).result()
            self._checkpointer.shutdown(wait=True)
        self._thread.submit(self.close).result()
        self._thread.shutdown(wait=True)

    # -- checkpoints -----------------------------------------------------------------------------
    def separate_checkpoints(self) -> None:
        """Stop commits from copying the WAL into the database file themselves (SQLite's automatic
        checkpoint runs inside the commit that crosses 1,000 pages, with two fsyncs: 10-80 ms here,
        which a proxied create waiting on its commit would feel); `checkpoint` does it instead, on
        a connection and thread of its own, beside the writer (a PASSIVE checkpoint takes no write
        lock). Durability is unchanged: a commit is durable or not before any checkpoint. On the
        state thread; not for ":memory:"."""
        if self.path == ":memory:" or self._checkpointer is not None:
            return
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-checkpoint")

    async def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file (after each flush), off the writer's thread."""
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(self._checkpointer, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._checkpoint_db is None:
            self._checkpoint_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _close_checkpoint_db(self) -> None:
        if self._checkpoint_db is not None:
            self._checkpoint_db.close()
            self._checkpoint_db = None

    # -- reading ---------------------------------------------------------------------------------
    def load_open_jobs(self) -> list[dict[str, Any]]:
        return [dict(zip(JOB_COLUMNS, row))
                for row in self.db.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE final = 0")]

    def closed_counts(self) -> list[tuple[tuple[str, str, str, str], int]]:
        """Jobs no longer polled, per (kind, group, model, status), counted the slow way (a scan):
        for checks of the `closed` counters, which start-up reads instead."""
        rows = self.db.execute("SELECT kind, grp, model, status, count(*) FROM jobs WHERE final != 0 "
                               "GROUP BY kind, grp, model, status")
        return [((k, g, m, s), n) for k, g, m, s, n in rows]

    def load_counters(self) -> list[tuple[str, tuple[str, ...], object]]:
        rows = self.db.execute("SELECT family, labels, value FROM counters")
        return [(family, tuple(json.loads(labels)), json.loads(value)) for family, labels, value in rows]

    def has_closed(self) -> bool:
        """True when the file holds any job that is not polled any more, or any tombstone."""
        return bool(self.db.execute("SELECT EXISTS(SELECT 1 FROM jobs WHERE final != 0) "
                                    "OR EXISTS(SELECT 1 FROM retired)").fetchone()[0])

    def known(self, ids: list[str]) -> set[str]:
        """Which of `ids` are tracked or retired."""
        found: set[str] = set()
        ids = sorted(ids)  # look up in key order: neighbouring ids share B-tree pages
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for table in ("jobs", "retired"):
                found.update(r[0] for r in self.db.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", chunk))
        return found

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        found = dict(zip(JOB_COLUMNS, row))
        found["price_entry"] = self.prices.text(self.db, found["price_entry"])
        return found

    def ids_from_source(self, source: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM jobs WHERE source = ?", (source,))}

    def sources(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT source, count(*) FROM jobs GROUP BY source"))

    # -- writing ---------------------------------------------------------------------------------
    async def write_durably(self, batch: Batch) -> None:
        """Apply one batch in one transaction, and return once it is on the disk. With checkpoints
        apart, the commit skips its fsync and the WAL file is fsynced on the checkpoint thread, so
        the writer's thread is free during the disk's flush: a proxied create's commit does not
        queue behind it. Either way the batch is durable when this returns."""
        if self._checkpointer is None:
            await self.call(self.write, batch)
            return
        await self.call(self.write, batch, False)
        await asyncio.get_running_loop().run_in_executor(self._checkpointer, self._sync_wal)

    def _sync_wal(self) -> None:
        # The commit's frames are in the WAL or, if a checkpoint completed since and the WAL was
        # started over, in the database file, which that checkpoint fsynced.
        fd = os.open(self.path + "-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def relaxed(self, fsync: bool) -> Iterator[None]:
        """Without `fsync`, commits made inside skip their fsync (a later one covers them)."""
        if fsync:
            yield
            return
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def transaction(self, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (the connection autocommits each statement otherwise); without
        `fsync` its commit is not forced to the disk (the next forced one covers it; a kill -9 keeps
        it either way). If it rolls back, price-entry ids it handed out are forgotten: they may not
        exist."""
        try:
            with self.relaxed(fsync), self.db:
                self.db.execute("BEGIN IMMEDIATE")
                yield self.db
        except BaseException:
            self.prices.forget()
            raise

    def write(self, batch: Batch, fsync: bool = True) -> None:
        """Apply one batch in one transaction (without `fsync`: the caller syncs the WAL)."""
        with self.transaction(fsync) as db:
            if batch.upserts:
                db.executemany(f"INSERT OR REPLACE {_INSERT}", self.prices.interned(db, batch.upserts))
            if batch.updates:
                updates = list(self.prices.interned(db, batch.updates))
                changed = db.executemany(_UPDATE_SQL, ([row[i] for i in _UPDATED] for row in updates)).rowcount
                if changed < len(updates):  # a row not there after all: write it whole
                    db.executemany(f"INSERT OR IGNORE {_INSERT}", updates)
            if batch.deletes:
                db.executemany("DELETE FROM jobs WHERE id = ?", ((i,) for i in batch.deletes))
            if batch.retire:
                db.executemany("INSERT OR IGNORE INTO retired VALUES (?, ?)", batch.retire)
                db.executemany("DELETE FROM jobs WHERE id = ?", ((i,) for i, _ in batch.retire))
            if batch.counters:
                db.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?)",
                               ((f, labels_key(l), json.dumps(v)) for f, l, v in batch.counters))
            if batch.traces:  # with the final rows above: owed exactly when final (trace_owed.py)
                db.executemany(OWE_TRACES, batch.traces)

    def insert_new(self, rows: list[tuple[Any, ...]], fsync: bool = True) -> None:
        """Write rows of jobs the file does not hold yet, in one transaction; a row already there
        (written meanwhile by a batch, maybe newer) is kept as it is.

        Without `fsync` the commit is in the WAL file (the OS has it: safe against a crash of this
        process) but not forced to the disk; the next commit with fsync (the next batch) covers it.
        """
        with self.transaction(fsync) as db:
            db.executemany(f"INSERT OR IGNORE {_INSERT}", list(self.prices.interned(db, rows)))

    def retire_ended_before(self, cutoff: float, now: float) -> list[tuple[tuple[str, str, str, str], int]]:
        """Drop jobs final since before `cutoff`, keeping their ids as tombstones; counts dropped."""
        with self.transaction() as db:
            counts = [((k, g, m, s), n) for k, g, m, s, n in db.execute(
                "SELECT kind, grp, model, status, count(*) FROM jobs WHERE final != 0 AND ended < ? "
                "GROUP BY kind, grp, model, status", (cutoff,))]
            db.executemany("UPDATE counters SET value = CAST(value AS INTEGER) - ? WHERE family = 'closed' "
                           "AND labels = ?", ((n, labels_key(labels)) for labels, n in counts))
            if counts:
                db.execute("INSERT OR IGNORE INTO retired SELECT id, ? FROM jobs WHERE final != 0 AND ended < ?",
                           (now, cutoff))
                db.execute("DELETE FROM jobs WHERE final != 0 AND ended < ?", (cutoff,))
        return counts

    def spend_since(self, cutoff: float) -> list[tuple[str, str, float, int, int]]:
        """(group, currency, estimated cost, priced jobs, unpriced jobs) of jobs final since `cutoff`
        (an indexed range): what the status page's "spend today" starts from."""
        return list(self.db.execute(
            "SELECT grp, json_extract(p.entry, '$.currency'), total(estimated_cost), count(estimated_cost), "
            "count(*) - count(estimated_cost) FROM jobs JOIN price_entries p ON p.id = jobs.price_entry "
            "WHERE final != 0 AND ended >= ? GROUP BY 1, 2", (cutoff,)))

    def bulk_insert(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Write many job rows in one transaction (benchmarks and imports). Rows may stop before the
        last of JOB_COLUMNS (all as long as the first): the columns left out get their defaults, so
        fixtures written for an older schema keep working."""
        rows = iter(rows)
        first = next(rows, None)
        if first is None:
            return
        columns = JOB_COLUMNS[:len(first)]
        marks = ",".join("?" * len(columns))
        with self.transaction() as db:
            db.executemany(f"INSERT OR REPLACE INTO jobs ({', '.join(columns)}) VALUES ({marks})",
                           self.prices.interned(db, itertools.chain([first], rows)))
