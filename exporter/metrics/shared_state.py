"""A replica's own view of the shared PostgreSQL state (process facts, on its /metrics). Exposition:

    distribute_exporter_state_database_up 1.0
    distribute_exporter_state_database_errors_total 0.0
    distribute_exporter_leases_held 12.0
    distribute_exporter_stale_answers_total 0.0
    distribute_exporter_live_replicas 3.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from exporter.metrics.collectors import JobsCollector
from exporter.metrics.families import Family, FamilyCollector
from exporter.tracking.aggregates import JobAggregates


@dataclass
class SharedStateView:
    up: Callable[[], bool]
    errors: Callable[[], int]
    leases: Callable[[], int]
    stale: Callable[[], int]
    replicas: Callable[[], int]


class SharedStateCollector(FamilyCollector):
    def __init__(self, view: SharedStateView) -> None:
        self.view = view

    def families(self) -> Iterator[Family]:
        v = self.view
        yield Family("distribute_exporter_state_database_up", "gauge", "1 while the shared PostgreSQL state "
                     "answered this replica's last statement, else 0 (polling pauses).", (), {(): 1 if v.up() else 0})
        yield Family("distribute_exporter_state_database_errors", "counter", "Statements to the shared "
                     "PostgreSQL state that failed (unreachable, timed out, refused).", (), {(): v.errors()})
        yield Family("distribute_exporter_leases_held", "gauge", "Jobs this replica has claimed and not yet "
                     "answered (each comes due again by itself when its lease runs out).", (), {(): v.leases()})
        yield Family("distribute_exporter_stale_answers", "counter", "Answers that changed nothing: another "
                     "replica had claimed the job again after this one's lease ran out, or it was final meanwhile.", (), {(): v.stale()})
        yield Family("distribute_exporter_live_replicas", "gauge", "Replicas with a fresh heartbeat row, this "
                     "one included: api.max_requests_per_second is shared by this many.", (), {(): v.replicas()})


class SharedJobsCollector(FamilyCollector):
    """The job facts as last read from the shared database (`current()`; None: not read yet).
    `generation()` changes with every read that changed a value, so the renderer's cache never
    serves an older one. Rendered in chunks (exposition.TextRenderer.chunks): with jobs finishing,
    each read changes a few hundred of tens of thousands of lines, and only their chunks are
    rendered and compressed again."""

    chunked = True

    def __init__(self, current: Callable[[], JobAggregates | None], generation: Callable[[], int]) -> None:
        self.current = current
        self.generation = generation

    def version(self) -> int:
        return self.generation()

    def families(self) -> Iterator[Family]:
        agg = self.current()
        if agg is not None:
            yield from self.families_of(agg)

    @staticmethod
    def families_of(agg: JobAggregates) -> Iterator[Family]:
        """The families of a given read (exposition.render_ahead renders the next one with them)."""
        # The database answered with the current oldest job of each group already.
        return JobsCollector(agg, lambda job_id, created: True).families()
