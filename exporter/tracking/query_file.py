"""The finished jobs of a query from the state file, through its partial indexes (store.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from exporter.tracking.query import ANY_FILE, FILE_PREFIX, SORTS, JobQuery, Position
from exporter.tracking.price_entries import PriceEntries
from exporter.tracking.store import JOB_COLUMNS


def _where(q: JobQuery) -> tuple[list[str], list[Any]]:
    """The filters as SQL over finished rows (`final != 0` lets the partial indexes serve)."""
    clauses, args = ["final != 0"], []
    for column, wanted in (("kind", q.kinds), ("grp", q.groups), ("model", q.models),
                           ("status", q.statuses), ("source", q.sources)):
        if wanted:
            clause = f"{column} IN ({','.join('?' * len(wanted))})"
            args.extend(wanted)
            if column == "source" and ANY_FILE in wanted:
                # every "file:<path>": a range the source index serves (';' follows ':')
                clause = f"({clause} OR (source >= ? AND source < ?))"
                args.extend((FILE_PREFIX, FILE_PREFIX[:-1] + ";"))
            clauses.append(clause)
    for clause, value in (("created < ?", q.created_before), ("created > ?", q.created_after),
                          ("ended > ?", q.finished_after), ("duration >= ?", q.min_duration)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return clauses, args


def file_ids(db: sqlite3.Connection, q: JobQuery, count: int) -> list[tuple[Position, str]]:
    """Up to `count` finished jobs of the file in order past `q.after`: (position, id) pairs."""
    column, descending = SORTS[q.sort]
    clauses, args = _where(q)
    after = q.after
    found: list[tuple[Position, str]] = []
    if after is None or after[0] == 0:
        where, wargs = list(clauses), list(args)
        where.append(f"{column} IS NOT NULL")
        if after is not None:
            value = -after[1] if descending else after[1]
            op, strict = ("<=", "<") if descending else (">=", ">")
            where.append(f"{column} {op} ? AND ({column} {strict} ? OR id > ?)")
            wargs += [value, value, after[2]]
        order = f"{column} {'DESC' if descending else 'ASC'}, id ASC"
        sql = f"SELECT {column}, id FROM jobs WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?"
        for value, job_id in db.execute(sql, (*wargs, count)):
            found.append(((0, -value if descending else value, job_id), job_id))
    if len(found) < count:
        where, wargs = list(clauses), list(args)
        where.append(f"{column} IS NULL")
        if after is not None and after[0] == 1:
            where.append("id > ?")
            wargs.append(after[2])
        sql = f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        found += [((1, 0.0, job_id), job_id) for (job_id,) in db.execute(sql, (*wargs, count - len(found)))]
    return found


def file_rows(db: sqlite3.Connection, ids: list[str], prices: PriceEntries) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    sql = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs WHERE id IN ({','.join('?' * len(ids))})"
    rows = {row[0]: dict(zip(JOB_COLUMNS, row)) for row in db.execute(sql, ids)}
    for row in rows.values():  # the file keeps an id into price_entries; the record shows the entry
        row["price_entry"] = prices.text(db, row["price_entry"])
    return rows
