"""One tracked job: what the exporter knows of it, and its row in the state file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from exporter.tracking.aggregates import JobLabels
from exporter.tracking.store import JOB_COLUMNS

OPEN, FINISHED, GONE = 0, 1, 2  # `final` column: polled / COMPLETED or ERROR / NOT_FOUND


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
                self.estimated_cost, self.price_entry)

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
        return record
