"""The price entries that priced jobs, each stored once in the state file.

A job's record shows the whole entry used (prices included, so it still says what was charged after
the price file changes), but a million jobs priced by a few entries should not repeat it a million
times: job rows keep the id of a row of `price_entries` instead of the entry's JSON text.
Used by the StateStore on its own thread, inside its transactions.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Iterator

SCHEMA = "CREATE TABLE IF NOT EXISTS price_entries (id INTEGER PRIMARY KEY, entry TEXT NOT NULL UNIQUE);"


class PriceEntries:
    """Entry JSON text <-> id, cached; `forget` after a transaction that rolled back."""

    def __init__(self, column: int) -> None:
        self.column = column  # where a job row holds the entry
        self._ids: dict[str, int] = {}
        self._texts: dict[int, str] = {}

    def interned(self, db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """The rows with each entry's JSON text replaced by its id (stored first if new)."""
        at = self.column
        for row in rows:
            text = row[at] if len(row) > at else None
            if isinstance(text, str):
                row = (*row[:at], self._id(db, text), *row[at + 1:])
            yield row

    def _id(self, db: sqlite3.Connection, text: str) -> int:
        found = self._ids.get(text)
        if found is None:
            db.execute("INSERT OR IGNORE INTO price_entries (entry) VALUES (?)", (text,))
            found = db.execute("SELECT id FROM price_entries WHERE entry = ?", (text,)).fetchone()[0]
            self._ids[text], self._texts[found] = found, text
        return found

    def text(self, db: sqlite3.Connection, entry_id: int | None) -> str | None:
        if entry_id is None:
            return None
        found = self._texts.get(entry_id)
        if found is None:
            row = db.execute("SELECT entry FROM price_entries WHERE id = ?", (entry_id,)).fetchone()
            found = row[0] if row else None
            if found is not None:
                self._ids[found], self._texts[entry_id] = entry_id, found
        return found

    def forget(self) -> None:
        """A transaction rolled back: ids it handed out may not exist."""
        self._ids.clear()
        self._texts.clear()
