"""The state store as the rest of the exporter sees it: one interface, two implementations (the
SQLite file of one process, `local.py`; PostgreSQL shared by several replicas, `pg/store.py`).

The words are the same in both: an id is registered once; due jobs are claimed for a lease (a claim
not answered in time comes due again by itself); an answer to a claim is applied unless a later
claim superseded it (stale); a final answer is counted once, whoever brings it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from exporter.api.results import JobResult
from exporter.tracking.aggregates import JobAggregates
from exporter.tracking.job import Job


class Applied(enum.Enum):
    MOVED = "moved"            # a non-final answer recorded; the job is due again after its delay
    FINAL = "final"            # the job became final here, and was counted (once)
    STALE = "stale"            # the claim was superseded: nothing changed
    ALREADY_FINAL = "already"  # someone counted it before: nothing changed
    UNKNOWN = "unknown"        # no such job


@dataclass(slots=True)
class Claim:
    """A job leased to this replica until its next due time; `epoch` names the lease."""

    job: Job
    epoch: int
    at: float  # the store's clock when claimed
    _mono: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        """The store's clock now, as seen from the claim (elapsed time is measured locally)."""
        return self.at + (time.monotonic() - self._mono)


class JobStore(Protocol):
    async def register(self, ids: Iterable[str], kind: str, group: str, source: str) -> tuple[list[str], int]:
        """Track the new ids among `ids`; answer (accepted ids, duplicates)."""

    async def get(self, job_id: str) -> Job | None:
        """The job as stored, None when not tracked."""

    async def claim(self, limit: int, lease: float) -> list[Claim]:
        """Up to `limit` due jobs, each leased for about `lease` seconds (jittered)."""

    async def apply(self, claim: Claim, result: JobResult, delay: float) -> Applied:
        """Record the answer to `claim`; a non-final job is due again `delay` seconds later."""

    async def apply_final(self, job_id: str, result: JobResult) -> Applied:
        """Record a final answer seen outside a claim (the proxy): counted once."""

    async def facts(self) -> JobAggregates:
        """The job facts (gauges and counters over every job) as the collectors render them."""

    def is_current(self, job_id: str, created: float) -> bool:
        """For `facts().oldest_unfinished`: whether an entry of its heap still stands."""
