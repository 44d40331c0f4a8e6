"""`distribute-exporter state export`: SQLite state files (one replica's, or the shards of a hash
ring) copied into the PostgreSQL store.

Per file, in one transaction: its jobs (an id in two files keeps the final row over an unfinished
one), its tombstones, and its counters added to the shared ones; the file's fingerprint is recorded
in the same transaction, so a second run adds nothing. Hand-off entries a shard still owed are then
applied with the store's own guarded statements (a final answer is counted once), so they too
apply once however often the export runs. A source file is never written: it is read through a
temporary copy (migrated there when an older version wrote it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Any

from exporter.api.results import InvalidBody, parse_result
from exporter.tracking import finishing
from exporter.tracking.aggregates import Histogram
from exporter.tracking.pg.deadlines import FAMILY as DEADLINE_FAMILY
from exporter.tracking.pg.schema import NOW
from exporter.tracking.pg.store import PgJobStore, add_counters
from exporter.tracking.store import JOB_COLUMNS, StateError, StateStore

EXPORT_LOCK = 0x4449_5354_0000_0002  # one export at a time (two copying the same file count it once)
_COLS = ", ".join(JOB_COLUMNS)


@dataclass
class Copied:
    path: str
    jobs: int = 0
    counters: int = 0
    handoffs: int = 0
    already: bool = False

    def line(self) -> str:
        if self.already:
            return f"{self.path}: copied before; nothing changed"
        return (f"{self.path}: {self.jobs} jobs, {self.counters} counter series added, "
                f"{self.handoffs} hand-off entries applied")


@dataclass
class Snapshot:
    """What one state file holds, read once."""

    jobs: list[tuple[Any, ...]]
    retired: list[tuple[str, float]]
    counters: list[tuple[str, tuple[str, ...], Any]]
    handoffs: list[dict[str, Any]]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (sorted((r[0], r[8], r[4]) for r in self.jobs), sorted(self.retired),
                     sorted((f, list(l), v) for f, l, v in self.counters), self.handoffs):
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        return digest.hexdigest()


def read_state_file(path: str) -> Snapshot:
    """Read a state file through a temporary copy (the original is left exactly as it was)."""
    if not os.path.isfile(path):
        raise StateError(f"state file {path}: no such file")
    with tempfile.TemporaryDirectory(prefix="state-export-") as tmp:
        copy = os.path.join(tmp, "state.db")
        try:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            with sqlite3.connect(copy) as target:
                source.backup(target)
            source.close()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state file {path}: not a usable SQLite database ({exc})") from None
        store = StateStore(copy)
        try:
            store.open()  # refuses a foreign or newer file; migrates an older one (the copy)
        except StateError as exc:
            raise StateError(str(exc).replace(copy, path)) from None
        try:
            db = store.db
            jobs = [tuple(r) for r in db.execute(
                f"SELECT {', '.join('j.' + c for c in JOB_COLUMNS[:-1])}, p.entry FROM jobs j "
                "LEFT JOIN price_entries p ON p.id = j.price_entry")]
            retired = [tuple(r) for r in db.execute("SELECT id, at FROM retired")]
            counters = [(f, tuple(json.loads(l)), json.loads(v)) for f, l, v in
                        db.execute("SELECT family, labels, value FROM counters")]
            has_outbox = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'handoff'").fetchone()
            handoffs = ([json.loads(p) for (p,) in db.execute("SELECT payload FROM handoff ORDER BY id")]
                        if has_outbox else [])
        finally:
            store.close()
    return Snapshot(jobs, retired, counters, handoffs)


def additive(counters: list[tuple[str, tuple[str, ...], Any]]) -> list[finishing.Delta]:
    """The file's counters as rows to add (`closed` is recounted from the rows instead)."""
    out: list[finishing.Delta] = []
    for family, labels, value in counters:
        if family == "durations":
            bounds, counts, total, count = value
            out.extend(finishing.histogram_rows(labels, Histogram(tuple(bounds), list(counts), total, count)))
        elif (family in finishing.PLAIN_FAMILIES and family != "closed" or family == DEADLINE_FAMILY) and value:
            out.append((family, labels, float(value)))
    return out


def deadline_cutoff(counters: list[tuple[str, tuple[str, ...], Any]]) -> float:
    """The file's deadline cutoff (tracking/deadlines.py): its unfinished jobs created at or before
    it were counted there, and are marked so (pg/deadlines.py) as they are copied."""
    return next((float(v) for f, _, v in counters if f == "deadline_cutoff"), 0.0)


async def export_file(store: PgJobStore, path: str) -> Copied:
    snap = await asyncio.get_running_loop().run_in_executor(None, read_state_file, path)
    done = Copied(path)
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EXPORT_LOCK)
        fingerprint = snap.fingerprint()
        if await conn.fetchval("SELECT 1 FROM imports WHERE source = $1", fingerprint):
            done.already = True
        else:
            done.jobs = await _copy_jobs(conn, snap.jobs, deadline_cutoff(snap.counters))
            await conn.executemany("INSERT INTO retired VALUES ($1, $2) ON CONFLICT DO NOTHING", snap.retired)
            rows = additive(snap.counters)
            await add_counters(conn, rows)
            done.counters = len(rows)
            await conn.execute(f"INSERT INTO imports VALUES ($1, {NOW})", fingerprint)
    if not done.already:
        # An owed final answer goes into the duration buckets the file itself counted with.
        bounds = next((tuple(v[0]) for f, _, v in snap.counters if f == "durations"), store.bounds)
        done.handoffs = await _apply_handoffs(PgJobStore(store.pool, bounds, store.prices), snap.handoffs)
        await recount_closed(store)
    return done


async def _copy_jobs(conn: Any, rows: list[tuple[Any, ...]], counted_up_to: float = 0.0) -> int:
    await conn.execute("CREATE TEMP TABLE import_jobs (LIKE jobs INCLUDING DEFAULTS) ON COMMIT DROP")
    await conn.copy_records_to_table("import_jobs", records=rows, columns=list(JOB_COLUMNS))
    # Unfinished jobs are due at once (the copy's replicas take them); a final row wins over an
    # unfinished one of the same id (a shard that handed a job on before it finished).
    await conn.execute(f"UPDATE import_jobs SET next_due = {NOW} WHERE final = 0")
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in JOB_COLUMNS[1:])
    status = await conn.execute(
        f"INSERT INTO jobs ({_COLS}) SELECT {_COLS} FROM import_jobs i "
        "WHERE NOT EXISTS (SELECT 1 FROM retired r WHERE r.id = i.id) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}, epoch = jobs.epoch + 1 "
        "WHERE jobs.final = 0 AND EXCLUDED.final <> 0")
    await conn.execute("UPDATE jobs j SET deadline_counted = true FROM import_jobs i "
                       "WHERE j.id = i.id AND i.final = 0 AND i.created <= $1", counted_up_to)
    return int(status.rsplit(" ", 1)[1])


async def _apply_handoffs(store: PgJobStore, entries: list[dict[str, Any]]) -> int:
    """Entries a shard owed another: each applied as the owner would have (idempotent)."""
    applied = 0
    for item in entries:
        try:
            job_id, kind, group, op = item["id"], item["kind"], item["group"], item["op"]
            if op == "state":
                state = item["state"]
                await _copy_one(store, tuple(state[c] for c in JOB_COLUMNS))
            else:
                await store.register([job_id], kind, group, item.get("source") or "api")
                if op == "observed":
                    result = parse_result(base64.b64decode(item["answer"], validate=True), kind)
                    if finishing.is_final(result.status):
                        await store.apply_final(job_id, result)
            applied += 1
        except (KeyError, TypeError, ValueError, InvalidBody, binascii.Error):
            continue  # an entry the owner would have refused too
    return applied


async def _copy_one(store: PgJobStore, row: tuple[Any, ...]) -> None:
    async with store.pool.acquire() as conn, conn.transaction():
        await _copy_jobs(conn, [row])


async def recount_closed(store: PgJobStore) -> None:
    """The `closed` counts (final jobs still stored, per labels) from the rows themselves."""
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE counters IN SHARE ROW EXCLUSIVE MODE")
        await conn.execute("DELETE FROM counters WHERE family = 'closed'")
        rows = await conn.fetch("SELECT kind, grp, model, status, count(*) AS n FROM jobs WHERE final <> 0 "
                                "GROUP BY 1, 2, 3, 4")
        await add_counters(conn, [("closed", (r["kind"], r["grp"], r["model"], r["status"]), float(r["n"]))
                                  for r in rows])
