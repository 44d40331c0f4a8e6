"""Running totals that /metrics renders, kept up to date on every change of a job's state.

A scrape reads these dictionaries only, so its cost follows the number of series, never the number
of tracked jobs. Job-derived counters remember which of their series changed (`dirty`) so that the
state store can persist them with the jobs they came from.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client.utils import floatToGoString

from exporter.tracking.spend import SpendToday

JobLabels = tuple[str, str, str, str]  # kind, group, model, status


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs in exposition order, +Inf last."""
        running, out = 0, []
        for bound, n in zip(list(self.bounds) + [float("inf")], self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else _le(bound), running))
        return out


def _le(bound: float) -> str:
    return floatToGoString(bound)  # as prometheus_client writes `le`


class JobAggregates:
    """Totals over tracked jobs. The families changed through `_bump` (and durations) are marked
    dirty and persisted with the jobs; `jobs` is rebuilt at start from the open jobs and `closed`."""

    def __init__(self, duration_buckets: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in duration_buckets)
        self.jobs: dict[JobLabels, int] = defaultdict(int)
        self.finished: dict[JobLabels, int] = defaultdict(int)
        self.durations: dict[JobLabels, Histogram] = {}
        self.tokens: dict[tuple[str, str, str], int] = defaultdict(int)
        self.results: dict[tuple[str, str, str], int] = defaultdict(int)
        self.choices: dict[tuple[str, str, str], int] = defaultdict(int)
        self.tool_calls: dict[tuple[str, str], int] = defaultdict(int)
        # (kind, group): jobs counted once when still unfinished past their deadline (deadlines.py),
        # and the cutoff (a `created` time, under the key ()) up to which they have been counted.
        self.deadline_exceeded: dict[tuple[str, str], int] = defaultdict(int)
        self.deadline_cutoff: dict[tuple[()], float] = {(): 0.0}
        # The share of `jobs` that is final and only in the state file, persisted so that a start
        # does not have to count a million rows.
        self.closed: dict[JobLabels, int] = defaultdict(int)
        self.dirty: set[tuple[str, tuple[str, ...]]] = set()
        self.version = 0  # bumped by every change: the renderer reuses its text while it stays
        # (kind, group) -> heap of (created, job id); stale entries are dropped when read.
        self._oldest: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
        # Cost (with pricing.file only): (kind, group, model, currency) and (kind, group, model).
        self.cost: dict[tuple[str, str, str, str], float] = defaultdict(float)
        self.unpriced: dict[tuple[str, str, str], int] = defaultdict(int)
        self.currency: str | None = None  # pricing.currency while a price file is loaded, else None
        self.spend_today = SpendToday()

    def declare_group(self, kind: str, group: str) -> None:
        """Export zero series for a known (kind, group), so that rate() works from the first job."""
        self.version += 1
        for status in ("COMPLETED", "ERROR"):
            labels = (kind, group, "", status)
            self.finished[labels] += 0
            self.duration_histogram(labels)
        self.deadline_exceeded[(kind, group)] += 0

    def duration_histogram(self, labels: JobLabels) -> Histogram:
        histogram = self.durations.get(labels)
        if histogram is None:
            histogram = self.durations[labels] = Histogram(self.bounds)
        return histogram

    # -- the jobs gauge --------------------------------------------------------------------------
    def move(self, old: JobLabels | None, new: JobLabels | None) -> None:
        """A job changed labels (or appeared: old None, or went away: new None)."""
        self.version += 1
        if old == new:
            return
        if old is not None:
            self.jobs[old] -= 1
        if new is not None:
            self.jobs[new] += 1

    def add_counts(self, counts: Iterable[tuple[JobLabels, int]]) -> None:
        self.version += 1
        for labels, n in counts:
            self.jobs[labels] += n

    def close(self, labels: JobLabels, n: int = 1) -> None:
        """`n` jobs with these labels became final (or, negative, left the state while final)."""
        self._bump("closed", self.closed, labels, n)

    @property
    def closed_total(self) -> int:
        return sum(self.closed.values())

    # -- finished jobs -----------------------------------------------------------------------------
    def record_finished(self, labels: JobLabels, duration: float | None, prompt: int, completion: int,
                        results: int, choices: dict[str, int], tool_calls: int) -> None:
        """Count a job that reached COMPLETED or ERROR; called once per job."""
        self.version += 1
        kind, group, model, status = labels
        self._bump("finished", self.finished, labels, 1)
        if duration is not None and duration >= 0:
            self.duration_histogram(labels).observe(duration)
            self.dirty.add(("durations", labels))
        if kind == "chat" and (prompt or completion or status == "COMPLETED"):
            self._bump("tokens", self.tokens, (group, model, "prompt"), prompt)
            self._bump("tokens", self.tokens, (group, model, "completion"), completion)
        if kind != "chat" and (results or status == "COMPLETED"):
            self._bump("results", self.results, (kind, group, model), results)
        for reason, n in choices.items():
            self._bump("choices", self.choices, (group, model, reason), n)
        if kind == "chat" and (tool_calls or choices):
            self._bump("tool_calls", self.tool_calls, (group, model), tool_calls)

    # -- jobs past their deadline (tracking/deadlines.py) --------------------------------------------
    @property
    def deadline_cutoff_value(self) -> float:
        return self.deadline_cutoff[()]

    def count_deadline(self, kind: str, group: str) -> None:
        self.version += 1
        self._bump("deadline_exceeded", self.deadline_exceeded, (kind, group), 1)

    def move_deadline_cutoff(self, cutoff: float) -> None:
        """Persisted with the counts it covers (same batch): it never moves back."""
        if cutoff > self.deadline_cutoff[()]:
            self.deadline_cutoff[()] = cutoff
            self.dirty.add(("deadline_cutoff", ()))

    # -- cost ------------------------------------------------------------------------------------
    def pricing(self, currency: str | None, groups: Iterable[tuple[str, str]]) -> None:
        """A price file is loaded (currency) or not (None); zero series for the config's groups."""
        self.version += 1
        self.currency = currency
        if currency is not None:
            for kind, group in groups:
                self.cost[(kind, group, "", currency)] += 0
                self.unpriced[(kind, group, "")] += 0

    def record_cost(self, kind: str, group: str, model: str, currency: str, cost: float | None, ended: float,
                    now: float) -> None:
        """Count a finished job's estimated cost, or (None) that no price matched it; once per job."""
        self.version += 1
        if cost is None:
            self._bump("unpriced", self.unpriced, (kind, group, model), 1)
        else:
            self._bump("cost", self.cost, (kind, group, model, currency), cost)
        self.spend_today.add(group, currency, cost, ended, now)

    def _bump(self, family: str, table: dict, labels: tuple[str, ...], n: float) -> None:
        table[labels] += n
        self.dirty.add((family, labels))

    # -- oldest unfinished job ---------------------------------------------------------------------
    def note_unfinished(self, kind: str, group: str, created: float, job_id: str) -> None:
        self.version += 1
        heapq.heappush(self._oldest[(kind, group)], (created, job_id))

    def oldest_unfinished(self, is_current: "callable[[str, float], bool]") -> dict[tuple[str, str], float]:
        """`created` of the oldest unfinished job per (kind, group); `is_current` weeds out stale entries."""
        answer = {}
        for key, heap in self._oldest.items():
            while heap and not is_current(heap[0][1], heap[0][0]):
                heapq.heappop(heap)
            if heap:
                answer[key] = heap[0][0]
        return answer

    # -- persistence -----------------------------------------------------------------------------
    def take_dirty(self) -> list[tuple[str, tuple[str, ...], object]]:
        """The persisted series changed since the last call, with their current values."""
        rows = []
        for family, labels in self.dirty:
            value = getattr(self, family)[labels]
            rows.append((family, labels, _histogram_state(value) if family == "durations" else value))
        self.dirty.clear()
        return rows

    def restore(self, family: str, labels: tuple[str, ...], value: object) -> bool:
        """Put back one persisted series; False when a histogram's buckets no longer match."""
        self.version += 1
        if family == "durations":
            bounds, counts, total, count = value  # type: ignore[misc]
            if tuple(bounds) != self.bounds:
                return False
            self.durations[labels] = Histogram(self.bounds, list(counts), total, count)  # type: ignore[index]
        else:
            getattr(self, family)[labels] = value
        return True


def _histogram_state(h: Histogram) -> list:
    return [list(h.bounds), list(h.counts), h.total, h.count]


class ApiAggregates:
    """Totals over result requests: how many, how they ended, how long they took."""

    def __init__(self, latency_buckets: Iterable[float]) -> None:
        self.bounds = tuple(latency_buckets)
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.up = 0
        self.last_success: float | None = None
        self.version = 0

    def declare_kind(self, kind: str) -> None:
        self.version += 1
        self.latency.setdefault(kind, Histogram(self.bounds))
        for reason in ("timeout", "connect", "unauthorized", "rate_limited", "http_4xx", "http_5xx",
                       "invalid_body", "protocol"):
            self.errors[(kind, reason)] += 0

    def record(self, kind: str, code: str, seconds: float, error_reason: str | None, now: float) -> None:
        self.version += 1
        self.requests[(kind, code)] += 1
        if kind not in self.latency:
            self.declare_kind(kind)
        self.latency[kind].observe(seconds)
        if error_reason is None:
            self.up = 1
            self.last_success = now
        else:
            self.errors[(kind, error_reason)] += 1
            self.up = 0
