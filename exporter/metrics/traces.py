"""Traces of finished jobs (only with tracing.endpoint set). Exposition, for example:

    distribute_exporter_traces_total{outcome="exported"} 1520.0
    distribute_exporter_traces_total{outcome="failed"} 12.0
    distribute_exporter_traces_total{outcome="dropped"} 0.0
    distribute_exporter_traces_pending 3.0
"""

from __future__ import annotations

from typing import Iterator

from exporter.metrics.families import Family, FamilyCollector
from exporter.tracking.trace_owed import OUTCOMES, TraceStats


class TracesCollector(FamilyCollector):
    def __init__(self, stats: TraceStats) -> None:
        self.stats = stats

    def families(self) -> Iterator[Family]:
        counts = {(o,): self.stats.outcomes[o] for o in OUTCOMES}
        yield Family("distribute_exporter_traces", "counter", "Job traces by outcome: exported (the collector "
                     "took it), failed (in a batch the collector did not take; sent again after a back-off), "
                     "dropped (never sent: past tracing.max_pending, oldest first, or the job's row was gone).",
                     ("outcome",), counts)
        yield Family("distribute_exporter_traces_pending", "gauge", "Finished jobs still owed a trace, kept in "
                     "the state until the collector takes them.", (), {(): max(0, self.stats.pending)})
