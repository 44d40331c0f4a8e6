"""One tracked job: what the exporter knows of it, and its row in the state file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from exporter.tracking.aggregates import JobLabels
from exporter.tracking.store import JOB_COLUMNS

OPEN, FINISHED, GONE = 0, 1, 2  # `final` column: polled / COMPLETED or ERROR / NOT_FOUND
HISTORY_MAX = 16  # status transitions kept per job: the first and the latest 15


def add_transition(history: str, status: str, at: float) -> str:
    """`history` with one more transition, as "STATUS@unix;STATUS@unix" (bounded; one column)."""
    entry = f"{status}@{at:.3f}"
    if not history:
        return entry
    entries = history.split(";")
    if len(entries) >= HISTORY_MAX:  # keep when it was first seen; drop the oldest of the rest
        entries = entries[:1] + entries[len(entries) - HISTORY_MAX + 2:]
    entries.append(entry)
    return ";".join(entries)


def transitions(history: str) -> list[dict[str, Any]]:
    """The decoded history, oldest first."""
    out = []
    for entry in history.split(";") if history else ():
        status, _, at = entry.rpartition("@")
        out.append({"status": status, "at": float(at)})
    return out


@dataclass(slots=True, eq=False)
class Job:
    id: str
    kind: str
    group: str
    source: str
    status: str = "UNKNOWN"
    model: str = ""
    created: float | None = None
    finished: float | None = None
    final: int = OPEN
    ended: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    results: int = 0
    tool_calls: int = 0
    choices: dict[str, int] | None = None
    first_tracked: float = 0.0
    last_polled: float | None = None
    next_due: float = 0.0
    interval: float = 0.0
    errors: int = 0
    polls: int = 0
    last_answer_code: int | None = None  # HTTP status of the last answer; None: none came (or none yet)
    history: str = ""  # status transitions, see add_transition
    duration: float | None = None  # finished - created, once COMPLETED or ERROR
    estimated_cost: float | None = None  # set once, when the job becomes final (tracking/cost.py)
    price_entry: str | None = None  # JSON text, stored as is: the price entry used, or that none matched

    @property
    def labels(self) -> JobLabels:
        return (self.kind, self.group, self.model, self.status)

    def row(self) -> tuple[Any, ...]:
        """The record in JOB_COLUMNS order (spelled out: this runs for every job of every batch)."""
        return (self.id, self.kind, self.group, self.source, self.status, self.model, self.created,
                self.finished, self.final, self.ended, self.prompt_tokens, self.completion_tokens,
                self.results, self.tool_calls, json.dumps(self.choices) if self.choices else None,
                self.first_tracked, self.last_polled, self.next_due, self.interval, self.errors, self.polls,
                self.last_answer_code, self.history, self.duration, self.estimated_cost, self.price_entry)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Job":
        values = dict(row)
        values["group"] = values.pop("grp")
        values["choices"] = json.loads(values["choices"]) if values.get("choices") else None
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The record as the registration API shows it."""
        record = {c: getattr(self, "group" if c == "grp" else c) for c in JOB_COLUMNS}
        record["group"] = record.pop("grp")
        record["final"] = bool(self.final)
        record["price_entry"] = json.loads(self.price_entry) if self.price_entry else None
        record["history"] = transitions(self.history)
        return record

    def note_status(self, status: str, at: float) -> None:
        """Record a change of status seen at `at` (the first answer's status too)."""
        self.history = add_transition(self.history, status, at)
